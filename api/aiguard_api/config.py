"""The compiled sidecar config: what the operator writes into the policy's ConfigMap and the
sidecar reads from ``/etc/aiguard/policy/config.json``.

Format ``aiguard.dev/sidecar-config/v1`` (JSON object)::

    {
      "apiVersion": "aiguard.dev/sidecar-config/v1",
      "policy":     {"name": ..., "namespace": ..., "uid": ..., "generation": N},
      "secretsDir": "/var/run/aiguard/secrets",   # Secret KEY of NAME is at secretsDir/NAME/KEY
      "spec":       { ... the AIPolicy spec, validated, every default filled in ... },
      "hash":       "sha256:..."                    # over everything above, canonical JSON
    }

Compiling fills every default, so a sidecar never depends on defaults of a version other than
the operator's, and the hash changes exactly when the behaviour would.
A newer sidecar must read every older ``v1`` config; fields are only ever added, with defaults.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, Field, ValidationError

from aiguard_api import constants, view
from aiguard_api.errors import ConfigError as ConfigError
from aiguard_api.policy import AIPolicy, AIPolicySpec, Model

CONFIG_API_VERSION: Final = "aiguard.dev/sidecar-config/v1"


class PolicyRef(Model):
    name: str
    namespace: str
    uid: str | None = None
    generation: int | None = None


class SidecarConfig(Model):
    api_version: Literal["aiguard.dev/sidecar-config/v1"] = CONFIG_API_VERSION
    policy: PolicyRef
    secrets_dir: str = constants.SIDECAR_SECRETS_DIR
    spec: AIPolicySpec
    hash: str = Field(default="", description="sha256 over the canonical JSON of the rest.")

    def secret_path(self, name: str, key: str) -> Path:
        return Path(constants.secret_file_path(name, key, root=self.secrets_dir))

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): the bytes in the ConfigMap."""
        return canonical_json(self.model_dump(mode="json", by_alias=True))


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(cfg: SidecarConfig) -> str:
    body = cfg.model_dump(mode="json", by_alias=True, exclude={"hash"})
    return "sha256:" + hashlib.sha256(canonical_json(body).encode()).hexdigest()


def compile_policy(
    policy: AIPolicy, *, secrets_dir: str = constants.SIDECAR_SECRETS_DIR
) -> SidecarConfig:
    """AIPolicy → the sidecar's config, defaults filled in, hashed."""
    cfg = SidecarConfig(
        policy=PolicyRef(
            name=policy.metadata.name,
            namespace=policy.metadata.namespace,
            uid=policy.metadata.uid,
            generation=policy.metadata.generation,
        ),
        secrets_dir=secrets_dir,
        # round-trip so every default is materialised explicitly
        spec=AIPolicySpec.model_validate(policy.spec.model_dump(mode="json", by_alias=True)),
    )
    cfg.hash = content_hash(cfg)
    return cfg


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, with the field path in the manifest's own (camelCase) names."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def _load_document(text: str, source: str) -> Any:
    """JSON (what the operator writes) without loading the YAML parser: the sidecar then never
    imports it (~1 MB of its idle RSS). Anything else, YAML: JSON is YAML, so a document JSON
    rejects gets the YAML parser's verdict and message."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    import yaml  # only for YAML manifests (local use): see above

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML/JSON: {e}") from e


def parse_config(
    text: str, *, source: str = "<policy>", secrets_dir: str | None = None
) -> SidecarConfig:
    """Read a compiled config (JSON) or, for local use, an AIPolicy manifest (YAML or JSON)."""
    doc = _load_document(text, source)
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected an object, got {type(doc).__name__}")
    try:
        if doc.get("apiVersion") == CONFIG_API_VERSION:
            cfg = SidecarConfig.model_validate(doc)
            expected = content_hash(cfg)
            if cfg.hash and cfg.hash != expected:
                raise ConfigError(
                    f"{source}: content hash mismatch (file says {cfg.hash}, content is "
                    f"{expected}); the file was edited or truncated"
                )
            if secrets_dir is not None:
                cfg.secrets_dir = secrets_dir
                cfg.hash = content_hash(cfg)
            return cfg
        if doc.get("kind") == constants.KIND_POLICY:
            policy = AIPolicy.model_validate(doc)
            return compile_policy(policy, secrets_dir=secrets_dir or constants.SIDECAR_SECRETS_DIR)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e)}") from e
    raise ConfigError(
        f"{source}: neither a compiled sidecar config (apiVersion {CONFIG_API_VERSION}) "
        f"nor an AIPolicy (kind {constants.KIND_POLICY})"
    )


def load_config(path: str | Path, *, secrets_dir: str | None = None) -> SidecarConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8: {e}") from e
    return parse_config(text, source=str(p), secrets_dir=secrets_dir)


def to_view(cfg: SidecarConfig) -> view.SidecarConfig:
    """The config as plain, immutable data (:mod:`aiguard_api.view`): what the sidecar reads."""
    out = view_of(cfg)
    assert isinstance(out, view.SidecarConfig)
    return out


def view_of(value: Any) -> Any:
    """Any validated model (or list, dict of them) as its :mod:`aiguard_api.view` form."""
    if isinstance(value, BaseModel):
        cls = getattr(view, type(value).__name__)
        fields = type(value).model_fields
        return cls(**{name: view_of(getattr(value, name)) for name in fields})
    if isinstance(value, list):
        return [view_of(v) for v in value]
    if isinstance(value, dict):
        return {k: view_of(v) for k, v in value.items()}
    return value
