"""handlers.py pieces that need no cluster: kopf's managed webhooks skip system namespaces."""

from __future__ import annotations

from typing import Any

import pytest
from kopf._core.engines import admission

from aiguard_operator import handlers


def test_namespace_selector_excludes_the_given_namespaces() -> None:
    assert handlers.webhook_namespace_selector(["kube-system", "aiguard", "kube-system"]) == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["aiguard", "kube-system"],
            }
        ]
    }


def test_kopf_managed_webhooks_get_the_namespace_selector(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_build(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return [{"name": "validate-policy.aiguard.dev"}, {"name": "mutate.aiguard.dev"}]

    monkeypatch.setattr(admission, "build_webhooks", fake_build)

    handlers._exclude_namespaces(["kube-system"])
    handlers._exclude_namespaces(["kube-system", "kube-public"])  # re-wraps the original only
    hooks = admission.build_webhooks([], resources=[], name_suffix="x", client_config={})

    expected = handlers.webhook_namespace_selector(["kube-system", "kube-public"])
    assert [h["namespaceSelector"] for h in hooks] == [expected, expected]
    assert admission.build_webhooks.__wrapped__ is fake_build  # type: ignore[attr-defined]


def test_without_kopfs_builder_the_operator_refuses_to_manage_webhooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(admission, "build_webhooks")

    with pytest.raises(RuntimeError, match="cannot exclude kube-system"):
        handlers._exclude_namespaces(["kube-system"])


def test_real_kopf_builder_output_passes_through_the_wrapper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "build_webhooks", admission.build_webhooks)
    handlers._exclude_namespaces(["kube-system"])

    hooks = admission.build_webhooks(
        [], resources=[], name_suffix="aiguard.dev", client_config={"url": "https://x"}
    )

    assert hooks == []  # no handlers given: nothing to register, and no crash
