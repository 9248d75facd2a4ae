"""settings.py: every setting from the environment, in one place; errors name the variable."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from aiguard_operator import injection
from aiguard_operator.settings import SettingsError, from_env


def test_defaults_watch_everything_with_peering_and_a_local_webhook() -> None:
    cfg = from_env({})

    assert cfg.clusterwide
    assert cfg.namespaces == ()
    assert cfg.peering == "aiguard"
    assert cfg.kubeconfig is None  # in-cluster
    assert cfg.post_events
    assert cfg.log_level == logging.INFO
    assert cfg.log_format == "plain"
    wh = cfg.webhook
    assert wh.enabled
    assert wh.generate_certs
    assert (wh.addr, wh.port, wh.url_host) == ("127.0.0.1", 9443, "127.0.0.1")
    assert wh.managed == "aiguard.dev"
    assert wh.cert_dir == Path("/var/run/aiguard/webhook-certs")


def test_system_namespaces_are_always_excluded_the_same_as_injection_skips_them() -> None:
    cfg = from_env({"AIGUARD_WEBHOOK_EXCLUDE_NAMESPACES": "legacy, ,kube-system"})

    assert set(cfg.webhook.exclude_namespaces) == {*injection.SYSTEM_NAMESPACES, "legacy"}
    assert len(cfg.webhook.exclude_namespaces) == len(set(cfg.webhook.exclude_namespaces))


def test_the_operator_namespace_is_excluded_too() -> None:
    cfg = from_env({"AIGUARD_OPERATOR_NAMESPACE": "aiguard-system"})

    assert cfg.operator_namespace == "aiguard-system"
    assert "aiguard-system" in cfg.webhook.exclude_namespaces


def test_a_list_of_namespaces_makes_the_operator_namespaced() -> None:
    cfg = from_env({"AIGUARD_NAMESPACES": "team-a, team-b,"})

    assert cfg.namespaces == ("team-a", "team-b")
    assert not cfg.clusterwide


@pytest.mark.parametrize("value", ["standalone", ""])
def test_peering_can_be_switched_off(value: str) -> None:
    assert from_env({"AIGUARD_PEERING": value}).peering is None


def test_in_cluster_chart_settings() -> None:
    cfg = from_env(
        {
            "AIGUARD_WEBHOOK_ADDR": "0.0.0.0",
            "AIGUARD_WEBHOOK_HOST": "aiguard-webhook.aiguard-system.svc",
            "AIGUARD_WEBHOOK_CERT_HOSTS": "aiguard-webhook.aiguard-system.svc.cluster.local",
            "AIGUARD_WEBHOOK_GENERATE_CERTS": "false",
            "AIGUARD_WEBHOOK_MANAGED": "",
            "AIGUARD_LOG_FORMAT": "json",
            "AIGUARD_LOG_LEVEL": "debug",
        }
    )

    wh = cfg.webhook
    assert wh.managed is None
    assert not wh.generate_certs
    assert wh.cert_hosts == [
        "aiguard-webhook.aiguard-system.svc",
        "aiguard-webhook.aiguard-system.svc.cluster.local",
    ]
    assert cfg.log_format == "json"
    assert cfg.log_level == logging.DEBUG


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"AIGUARD_WEBHOOK_PORT": "http"}, "AIGUARD_WEBHOOK_PORT='http': expected a number"),
        ({"AIGUARD_WEBHOOK_PORT": "70000"}, "expected a value from 1 to 65535"),
        ({"AIGUARD_POST_EVENTS": "maybe"}, "AIGUARD_POST_EVENTS='maybe': expected true or false"),
        ({"AIGUARD_LOG_FORMAT": "xml"}, "AIGUARD_LOG_FORMAT='xml'"),
        ({"AIGUARD_LOG_LEVEL": "loud"}, "AIGUARD_LOG_LEVEL='loud'"),
        ({"AIGUARD_WEBHOOK_ADDR": " "}, "AIGUARD_WEBHOOK_ADDR is empty"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words.replace("(", r"\(").replace(")", r"\)")):
        from_env(env)
