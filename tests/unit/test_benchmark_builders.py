"""The in-process benchmarks build their guardrails the way the sidecar does (``make bench`` runs
them; nothing else would notice when one stops working): each builder here runs once on a small
input. When the sidecar switched to config views, three of them broke silently. (Nothing here
reads ``../shared/eval``: a clean clone in CI may not have it.)"""

from __future__ import annotations

from benchmarks import guardrails_chain, guardrails_pii, stream_guard


def test_the_stream_guard_benchmark_drives_the_default_output_guardrails() -> None:
    engine = stream_guard._engine()
    assert {"pii", "secrets"} <= set(engine.names)
    blocks = stream_guard._blocks(stream_guard.PLAIN, 20, tool=False)
    assert stream_guard._stream(engine, blocks, None) > 0


def test_the_chain_benchmark_builds_the_default_input_chain() -> None:
    impl = guardrails_chain.Impl("aiguard", "aiguard_sidecar.guardrails")
    assert {"prompt_injection", "secrets", "pii"} <= set(impl.engine.names)


def test_the_pii_benchmark_finds_an_email_with_the_policy_defaults() -> None:
    predict, _guard = guardrails_pii.aiguard_predictor(ner=False)
    found = predict("write to jane.doe@example.com today")
    assert [(e, s, t) for e, s, t, _ in found] == [("EMAIL_ADDRESS", 9, 29)]
