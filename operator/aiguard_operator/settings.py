"""Every setting of ``aiguard-operator``, read from the environment in one place.

Nested dataclasses in the style of kopf's ``OperatorSettings``: each field documents its unit
and default. :func:`from_env` is the only code that reads ``os.environ``; a bad value is a
:class:`SettingsError` naming the variable, raised before anything starts.

=================================  =====================================================
variable                           meaning (default)
=================================  =====================================================
KUBECONFIG                         kubeconfig file(s); unset: in-cluster ServiceAccount
AIGUARD_NAMESPACES                 comma-separated namespaces (or kopf globs) to watch;
                                   empty: all namespaces (default)
AIGUARD_OPERATOR_NAMESPACE         the operator's own namespace (the chart sets it from
                                   the downward API; default: the ServiceAccount's)
AIGUARD_PEERING                    kopf peering object name (``aiguard``); ``standalone``
                                   or empty: no peering (one replica, or dev)
AIGUARD_PEERING_PRIORITY           this replica's peering priority (0)
AIGUARD_POST_EVENTS                post Kubernetes Events (true)
AIGUARD_LOG_FORMAT                 plain | full | json (plain)
AIGUARD_LOG_LEVEL                  debug | info | warning | error (info)
AIGUARD_LIVENESS                   kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz
                                   (unset: none)
AIGUARD_SECRET_RETRY_SECONDS       re-check a policy whose Secret is missing (30)
AIGUARD_WEBHOOK                    serve the admission webhook (true)
AIGUARD_WEBHOOK_ADDR               listen address (127.0.0.1; the chart sets 0.0.0.0)
AIGUARD_WEBHOOK_PORT               listen port (9443)
AIGUARD_WEBHOOK_HOST               host in the registered URL (= ADDR)
AIGUARD_WEBHOOK_CERT_DIR           certificates (/var/run/aiguard/webhook-certs)
AIGUARD_WEBHOOK_GENERATE_CERTS     create/rotate the certificates (true); false: use
                                   tls.crt, tls.key, ca.crt mounted by cert-manager/Helm
AIGUARD_WEBHOOK_CERT_HOSTS         extra SANs, comma-separated (the chart: service DNS)
AIGUARD_WEBHOOK_MANAGED            name of the webhook configurations kopf creates and
                                   keeps current (aiguard.dev); empty: static (Helm)
AIGUARD_WEBHOOK_EXCLUDE_NAMESPACES never admission-checked, besides kube-system, kube-public,
                                   kube-node-lease and the operator's namespace (empty)
=================================  =====================================================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

LogFormat = Literal["plain", "full", "json"]

#: Namespaces the webhooks never apply to, whatever is configured (the same set injection
#: skips: ``injection.SYSTEM_NAMESPACES``), plus the operator's own namespace.
ALWAYS_EXCLUDED_NAMESPACES: tuple[str, ...] = ("kube-node-lease", "kube-public", "kube-system")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_PEERING = "aiguard"
DEFAULT_WEBHOOK_PORT = 9443
DEFAULT_CERT_DIR = Path("/var/run/aiguard/webhook-certs")
DEFAULT_MANAGED_NAME = "aiguard.dev"


class SettingsError(ValueError):
    """An environment variable has a value the operator cannot use."""


@dataclass(frozen=True)
class WebhookSettings:
    enabled: bool = True
    """Serve the AIPolicy validating webhook. Off only for debugging: bad policies then get
    through to the reconciler, which marks them Invalid."""
    addr: str = "127.0.0.1"
    """Listen address. Never empty: kopf treats None as every interface."""
    port: int = DEFAULT_WEBHOOK_PORT
    """Listen port (TCP)."""
    host: str | None = None
    """Host name or IP in the URL registered with the API server; None: ``addr``."""
    cert_dir: Path = DEFAULT_CERT_DIR
    """Directory with the CA and serving certificate (see :mod:`aiguard_operator.certs`)."""
    generate_certs: bool = True
    """Create and rotate certificates in ``cert_dir``; false: use mounted ones as they are."""
    extra_hosts: tuple[str, ...] = ()
    """More SANs for the serving certificate."""
    managed: str | None = DEFAULT_MANAGED_NAME
    """Name of the Validating/MutatingWebhookConfiguration kopf manages; None: static."""
    exclude_namespaces: tuple[str, ...] = ALWAYS_EXCLUDED_NAMESPACES
    """Namespaces the webhook configurations exclude (the system ones and the operator's)."""

    @property
    def url_host(self) -> str:
        return self.host or self.addr

    @property
    def cert_hosts(self) -> list[str]:
        hosts = [self.url_host, *self.extra_hosts]
        if self.addr not in ("0.0.0.0", "::") and self.addr not in hosts:  # noqa: S104
            hosts.append(self.addr)
        return list(dict.fromkeys(hosts))


@dataclass(frozen=True)
class Settings:
    kubeconfig: str | None = None
    """Kubeconfig path(s); None: in-cluster."""
    namespaces: tuple[str, ...] = ()
    """Namespaces (or kopf glob patterns) to watch; empty: the whole cluster."""
    operator_namespace: str = ""
    """Where the operator runs; "" when unknown (outside a cluster)."""
    peering: str | None = DEFAULT_PEERING
    """kopf ClusterKopfPeering name for HA (one active replica); None: standalone."""
    peering_priority: int = 0
    post_events: bool = True
    log_format: LogFormat = "plain"
    log_level: int = logging.INFO
    liveness: str | None = None
    secret_retry_seconds: float = 30.0
    """Seconds between re-checks of a policy that references a missing Secret."""
    webhook: WebhookSettings = field(default_factory=WebhookSettings)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


# --------------------------------------------------------------------------- parsing

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR
_FORMATS: dict[str, LogFormat] = {"plain": "plain", "full": "full", "json": "json"}


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in env.get(name, "").split(",") if x.strip())


def _number(env: Mapping[str, str], name: str, default: float, *, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={raw!r}: expected a value from {lo:g} to {hi:g}")
    return value


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    peering = env.get("AIGUARD_PEERING", DEFAULT_PEERING).strip()
    format_name = env.get("AIGUARD_LOG_FORMAT", "plain").strip().lower() or "plain"
    if format_name not in _FORMATS:
        raise SettingsError(f"AIGUARD_LOG_FORMAT={format_name!r}: expected plain, full or json")
    level_name = env.get("AIGUARD_LOG_LEVEL", "info").strip().lower() or "info"
    if level_name not in _LEVELS:
        raise SettingsError(f"AIGUARD_LOG_LEVEL={level_name!r}: expected {', '.join(_LEVELS)}")
    addr = env.get("AIGUARD_WEBHOOK_ADDR", "127.0.0.1").strip()
    if not addr:
        raise SettingsError("AIGUARD_WEBHOOK_ADDR is empty: name an address (0.0.0.0 for all)")
    managed = env.get("AIGUARD_WEBHOOK_MANAGED", DEFAULT_MANAGED_NAME).strip()
    own_ns = env.get("AIGUARD_OPERATOR_NAMESPACE", "").strip()
    if not own_ns and env is os.environ and SERVICE_ACCOUNT_NAMESPACE.exists():
        own_ns = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    excluded = tuple(
        dict.fromkeys(
            (
                *ALWAYS_EXCLUDED_NAMESPACES,
                *([own_ns] if own_ns else []),
                *_list(env, "AIGUARD_WEBHOOK_EXCLUDE_NAMESPACES"),
            )
        )
    )
    webhook = WebhookSettings(
        enabled=_bool(env, "AIGUARD_WEBHOOK", True),
        addr=addr,
        port=int(_number(env, "AIGUARD_WEBHOOK_PORT", DEFAULT_WEBHOOK_PORT, lo=1, hi=65535)),
        host=env.get("AIGUARD_WEBHOOK_HOST", "").strip() or None,
        cert_dir=Path(env.get("AIGUARD_WEBHOOK_CERT_DIR", "").strip() or DEFAULT_CERT_DIR),
        generate_certs=_bool(env, "AIGUARD_WEBHOOK_GENERATE_CERTS", True),
        extra_hosts=_list(env, "AIGUARD_WEBHOOK_CERT_HOSTS"),
        managed=managed or None,
        exclude_namespaces=excluded,
    )
    return Settings(
        kubeconfig=env.get("KUBECONFIG", "").strip() or None,
        namespaces=_list(env, "AIGUARD_NAMESPACES"),
        operator_namespace=own_ns,
        peering=None if peering in ("", "standalone") else peering,
        peering_priority=int(
            _number(env, "AIGUARD_PEERING_PRIORITY", 0, lo=-(2**31), hi=2**31 - 1)
        ),
        post_events=_bool(env, "AIGUARD_POST_EVENTS", True),
        log_format=_FORMATS[format_name],
        log_level=_LEVELS[level_name],
        liveness=env.get("AIGUARD_LIVENESS", "").strip() or None,
        secret_retry_seconds=_number(env, "AIGUARD_SECRET_RETRY_SECONDS", 30.0, lo=1, hi=3600),
        webhook=webhook,
    )
