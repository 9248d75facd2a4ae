"""settings.py: every setting from the environment, in one place; errors name the variable."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from aiguard_api import __version__
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


def test_injection_defaults_fail_closed_with_the_versioned_sidecar_image() -> None:
    cfg = from_env({})

    assert cfg.injection.failure_policy == "Fail"
    assert cfg.injection.timeout_seconds == 10
    assert cfg.sidecar.image == f"ghcr.io/aiguard/aiguard-sidecar:{__version__}"
    assert cfg.sidecar.version == __version__
    assert cfg.sidecar.resources == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    assert (cfg.metrics.addr, cfg.metrics.port) == ("127.0.0.1", 15091)
    assert cfg.coverage_interval == 60


def test_sidecar_and_injection_settings_from_the_environment() -> None:
    cfg = from_env(
        {
            "AIGUARD_INJECTION_FAILURE_POLICY": "ignore",
            "AIGUARD_INJECTION_TIMEOUT_SECONDS": "5",
            "AIGUARD_SIDECAR_IMAGE": "registry.example:5000/aiguard/sidecar:1.2.3",
            "AIGUARD_SIDECAR_PULL_POLICY": "always",
            "AIGUARD_SIDECAR_CPU_LIMIT": "1",
            "AIGUARD_SIDECAR_MEMORY_LIMIT": "1Gi",
            "AIGUARD_SIDECAR_SPOOL_SIZE": "2Gi",
            "AIGUARD_SIDECAR_LOG_LEVEL": "debug",
            "AIGUARD_METRICS": "0.0.0.0:9100",
            "AIGUARD_COVERAGE_INTERVAL_SECONDS": "15",
        }
    )

    assert cfg.injection.failure_policy == "Ignore"
    assert cfg.injection.timeout_seconds == 5
    assert cfg.sidecar.image == "registry.example:5000/aiguard/sidecar:1.2.3"
    assert cfg.sidecar.version == "1.2.3"  # the tag, not the registry port
    assert cfg.sidecar.image_pull_policy == "Always"
    assert cfg.sidecar.resources["limits"] == {"memory": "1Gi", "cpu": "1"}
    assert (cfg.sidecar.spool_size, cfg.sidecar.log_level) == ("2Gi", "debug")
    assert (cfg.metrics.addr, cfg.metrics.port) == ("0.0.0.0", 9100)
    assert cfg.coverage_interval == 15


@pytest.mark.parametrize(
    ("image", "version", "expected"),
    [
        ("ghcr.io/aiguard/aiguard-sidecar@sha256:" + "a" * 64, "", __version__),
        ("ghcr.io/aiguard/aiguard-sidecar@sha256:" + "a" * 64, "0.9.0", "0.9.0"),
        ("", "0.9.0", "0.9.0"),
        ("localhost:5000/sidecar", "", __version__),
    ],
)
def test_the_recorded_sidecar_version(image: str, version: str, expected: str) -> None:
    cfg = from_env({"AIGUARD_SIDECAR_IMAGE": image, "AIGUARD_SIDECAR_VERSION": version})

    assert cfg.sidecar.version == expected
    if not image:
        assert cfg.sidecar.image.endswith(f":{expected}")


def test_metrics_can_be_switched_off() -> None:
    assert from_env({"AIGUARD_METRICS": ""}).metrics.addr is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"AIGUARD_INJECTION_FAILURE_POLICY": "Maybe"}, "expected one of Fail, Ignore"),
        ({"AIGUARD_INJECTION_TIMEOUT_SECONDS": "31"}, "expected a value from 1 to 30"),
        ({"AIGUARD_SIDECAR_PULL_POLICY": "Sometimes"}, "AIGUARD_SIDECAR_PULL_POLICY"),
        ({"AIGUARD_METRICS": "15091"}, "expected HOST:PORT"),
        ({"AIGUARD_METRICS": "localhost:http"}, "expected HOST:PORT"),
    ],
)
def test_bad_injection_values_name_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        from_env(env)


def test_sidecars_are_pointed_at_the_collector_with_its_ca() -> None:
    url = "https://aiguard-collector.aiguard-system.svc:15093"
    settings = from_env(
        {
            "AIGUARD_SIDECAR_COLLECTOR_URL": url,
            "AIGUARD_SIDECAR_COLLECTOR_CA_FILE": "/var/run/aiguard/webhook-certs/ca.crt",
        }
    )
    assert settings.sidecar.collector_url == url
    assert settings.sidecar.collector_ca is True
    assert settings.collector_ca_file == Path("/var/run/aiguard/webhook-certs/ca.crt")
    default = from_env({})
    assert default.sidecar.collector_url is None
    assert default.collector_ca_file is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"AIGUARD_SIDECAR_COLLECTOR_CA_FILE": "/ca.crt"}, "without AIGUARD_SIDECAR_COLLECTOR_URL"),
        ({"AIGUARD_SIDECAR_COLLECTOR_URL": "ftp://collector"}, "not http(s)://"),
    ],
)
def test_bad_collector_settings_are_refused(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(words)):
        from_env(env)


def test_replicas_share_generated_certificates_through_a_secret_in_their_namespace() -> None:
    env = {"AIGUARD_WEBHOOK_CERT_SECRET": "aiguard-webhook-certs"}
    with pytest.raises(SettingsError, match="AIGUARD_OPERATOR_NAMESPACE"):
        from_env(env)
    with pytest.raises(SettingsError, match="AIGUARD_WEBHOOK_GENERATE_CERTS is false"):
        from_env(
            {
                **env,
                "AIGUARD_OPERATOR_NAMESPACE": "aiguard-system",
                "AIGUARD_WEBHOOK_GENERATE_CERTS": "false",
            }
        )
    settings = from_env({**env, "AIGUARD_OPERATOR_NAMESPACE": "aiguard-system"})
    assert settings.webhook.cert_secret == "aiguard-webhook-certs"
    assert from_env({}).webhook.cert_secret is None


def test_ha_replicas_can_draw_distinct_peering_priorities() -> None:
    drawn = {from_env({"AIGUARD_PEERING_PRIORITY": "random"}).peering_priority for _ in range(20)}
    assert len(drawn) > 1
    assert all(1 <= p < 2**31 - 1 for p in drawn)
    assert from_env({"AIGUARD_PEERING_PRIORITY": "7"}).peering_priority == 7
