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
AIGUARD_PEERING_PRIORITY           this replica's peering priority (0); ``random``: a
                                   random one per start (the chart's HA replicas: kopf
                                   pauses every peer when two share the top priority)
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
AIGUARD_WEBHOOK_CERT_SECRET        share the generated certificates between replicas through
                                   this Secret in the operator's namespace (the chart:
                                   <release>-webhook-certs); unset: each process keeps its
                                   own (one replica, or dev)
AIGUARD_WEBHOOK_MANAGED            name of the webhook configurations kopf creates and
                                   keeps current (aiguard.dev); empty: static (Helm)
AIGUARD_WEBHOOK_EXCLUDE_NAMESPACES never admission-checked, besides kube-system, kube-public,
                                   kube-node-lease and the operator's namespace (empty)
AIGUARD_INJECTION_FAILURE_POLICY   what the API server does with an opted-in pod when the
                                   injection webhook cannot be reached: Fail (reject the
                                   pod; the default) or Ignore (create it without the
                                   sidecar; coverage reports it)
AIGUARD_INJECTION_TIMEOUT_SECONDS  the injection webhook's timeoutSeconds, 1-30 (10)
AIGUARD_SIDECAR_IMAGE              sidecar image (ghcr.io/aiguard/aiguard-sidecar:VERSION)
AIGUARD_SIDECAR_VERSION            version recorded in aiguard.dev/status (the image tag,
                                   else this operator's version)
AIGUARD_SIDECAR_PULL_POLICY        Always | IfNotPresent | Never (IfNotPresent)
AIGUARD_SIDECAR_CPU_REQUEST        sidecar CPU request (100m); no CPU limit by default
AIGUARD_SIDECAR_CPU_LIMIT          sidecar CPU limit (unset: none)
AIGUARD_SIDECAR_MEMORY_REQUEST     sidecar memory request (128Mi)
AIGUARD_SIDECAR_MEMORY_LIMIT       sidecar memory limit (512Mi)
AIGUARD_SIDECAR_SPOOL_SIZE         sizeLimit of the audit spool emptyDir (1Gi)
AIGUARD_SIDECAR_LOG_LEVEL          debug | info | warning | error (info)
AIGUARD_SIDECAR_COLLECTOR_URL      collector URL injected sidecars ship audit events to
                                   (the chart: https://<release>-collector.<ns>.svc:15093);
                                   unset: sidecars only log their events
AIGUARD_SIDECAR_COLLECTOR_CA_FILE  PEM CA bundle (operator's file system) handed to
                                   sidecars in each policy ConfigMap to verify the
                                   collector; unset: the system trust store
AIGUARD_METRICS                    HOST:PORT of the operator's /metrics endpoint
                                   (127.0.0.1:15091; the chart sets 0.0.0.0:15091);
                                   empty: no endpoint
AIGUARD_COVERAGE_INTERVAL_SECONDS  recount every namespace's coverage this often, on top
                                   of the recount on each pod, namespace and policy
                                   change (60)
=================================  =====================================================
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from aiguard_api import __version__
from aiguard_operator.injection import SidecarSettings

LogFormat = Literal["plain", "full", "json"]
FailurePolicy = Literal["Fail", "Ignore"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
SidecarLogLevel = Literal["debug", "info", "warning", "error"]

#: Namespaces the webhooks never apply to, whatever is configured (the same set injection
#: skips: ``injection.SYSTEM_NAMESPACES``), plus the operator's own namespace.
ALWAYS_EXCLUDED_NAMESPACES: tuple[str, ...] = ("kube-node-lease", "kube-public", "kube-system")
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_PEERING = "aiguard"
DEFAULT_WEBHOOK_PORT = 9443
DEFAULT_CERT_DIR = Path("/var/run/aiguard/webhook-certs")
DEFAULT_MANAGED_NAME = "aiguard.dev"
DEFAULT_SIDECAR_REPOSITORY = "ghcr.io/aiguard/aiguard-sidecar"
DEFAULT_METRICS = ("127.0.0.1", 15091)
MAX_WEBHOOK_TIMEOUT = 30  # the API server's limit for timeoutSeconds


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
    cert_secret: str | None = None
    """Secret (operator namespace) that replicas share generated certificates through."""
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
class InjectionSettings:
    """The pod injection webhooks (see ``aiguard_operator.admission``)."""

    failure_policy: FailurePolicy = "Fail"
    """What the API server does with an opted-in pod when the webhook cannot answer: ``Fail``
    rejects it (the ReplicaSet or Job controller retries with backoff), so no opted-in pod
    ever runs without its sidecar; ``Ignore`` creates it without the sidecar, and coverage
    (status, Event, metric) reports it. Only opted-in pods reach the webhook, so ``Fail``
    never blocks anyone else's pods."""
    timeout_seconds: int = 10
    """The webhooks' ``timeoutSeconds`` (1-30). Admission answers in milliseconds; the rest
    is headroom for a busy operator, and the budget within which it waits for its indices
    right after a start."""


@dataclass(frozen=True)
class MetricsSettings:
    """The operator's Prometheus endpoint (``GET /metrics``)."""

    addr: str | None = DEFAULT_METRICS[0]
    """Listen address; None: no endpoint."""
    port: int = DEFAULT_METRICS[1]
    """Listen port (TCP)."""


def _default_sidecar() -> SidecarSettings:
    return SidecarSettings(image=f"{DEFAULT_SIDECAR_REPOSITORY}:{__version__}", version=__version__)


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
    injection: InjectionSettings = field(default_factory=InjectionSettings)
    sidecar: SidecarSettings = field(default_factory=_default_sidecar)
    """Image, version, resources and sizes of the injected sidecar."""
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    coverage_interval: float = 60.0
    """Seconds between full coverage recounts (changes trigger one within a second)."""
    collector_ca_file: Path | None = None
    """The collector's CA (PEM) copied into every policy ConfigMap for the sidecars."""

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


_T = TypeVar("_T", bound=str)


def _choice(env: Mapping[str, str], name: str, default: _T, choices: tuple[_T, ...]) -> _T:
    """One of ``choices``, matched case-insensitively and returned as spelled there."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    for choice in choices:
        if raw.lower() == choice.lower():
            return choice
    raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(choices)}")


_FAILURE_POLICIES: tuple[FailurePolicy, ...] = ("Fail", "Ignore")
_PULL_POLICIES: tuple[PullPolicy, ...] = ("Always", "IfNotPresent", "Never")
_SIDECAR_LEVELS: tuple[SidecarLogLevel, ...] = ("debug", "info", "warning", "error")


def image_version(image: str) -> str | None:
    """The tag of an image reference (``repo:1.2.3`` → ``1.2.3``), None without one."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else None


def _sidecar(env: Mapping[str, str]) -> SidecarSettings:
    image = env.get("AIGUARD_SIDECAR_IMAGE", "").strip()
    version = env.get("AIGUARD_SIDECAR_VERSION", "").strip()
    if not image:
        image = f"{DEFAULT_SIDECAR_REPOSITORY}:{version or __version__}"
    version = version or image_version(image) or __version__
    requests = {
        "cpu": env.get("AIGUARD_SIDECAR_CPU_REQUEST", "").strip() or "100m",
        "memory": env.get("AIGUARD_SIDECAR_MEMORY_REQUEST", "").strip() or "128Mi",
    }
    limits = {"memory": env.get("AIGUARD_SIDECAR_MEMORY_LIMIT", "").strip() or "512Mi"}
    cpu_limit = env.get("AIGUARD_SIDECAR_CPU_LIMIT", "").strip()
    if cpu_limit:
        limits["cpu"] = cpu_limit
    pull = _choice(env, "AIGUARD_SIDECAR_PULL_POLICY", "IfNotPresent", _PULL_POLICIES)
    level = _choice(env, "AIGUARD_SIDECAR_LOG_LEVEL", "info", _SIDECAR_LEVELS)
    try:
        return SidecarSettings(
            image=image,
            version=version,
            image_pull_policy=pull,
            resources={"requests": requests, "limits": limits},
            spool_size=env.get("AIGUARD_SIDECAR_SPOOL_SIZE", "").strip() or "1Gi",
            log_level=level,
            collector_url=env.get("AIGUARD_SIDECAR_COLLECTOR_URL", "").strip() or None,
            collector_ca=bool(env.get("AIGUARD_SIDECAR_COLLECTOR_CA_FILE", "").strip()),
        )
    except ValueError as e:
        raise SettingsError(f"AIGUARD_SIDECAR_*: {e}") from None


def _metrics(env: Mapping[str, str]) -> MetricsSettings:
    if "AIGUARD_METRICS" not in env:
        return MetricsSettings()
    raw = env["AIGUARD_METRICS"].strip()
    if not raw:
        return MetricsSettings(addr=None)
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise SettingsError(f"AIGUARD_METRICS={raw!r}: expected HOST:PORT, e.g. 0.0.0.0:15091")
    return MetricsSettings(addr=host.strip("[]"), port=int(port))


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
        cert_secret=env.get("AIGUARD_WEBHOOK_CERT_SECRET", "").strip() or None,
        managed=managed or None,
        exclude_namespaces=excluded,
    )
    if webhook.cert_secret and not own_ns:
        raise SettingsError(
            "AIGUARD_WEBHOOK_CERT_SECRET needs the operator's namespace: set "
            "AIGUARD_OPERATOR_NAMESPACE (the chart sets it from the downward API)"
        )
    if webhook.cert_secret and not webhook.generate_certs:
        raise SettingsError(
            "AIGUARD_WEBHOOK_CERT_SECRET shares generated certificates, but "
            "AIGUARD_WEBHOOK_GENERATE_CERTS is false (mounted certificates): unset one"
        )
    return Settings(
        kubeconfig=env.get("KUBECONFIG", "").strip() or None,
        namespaces=_list(env, "AIGUARD_NAMESPACES"),
        operator_namespace=own_ns,
        peering=None if peering in ("", "standalone") else peering,
        peering_priority=_priority(env),
        post_events=_bool(env, "AIGUARD_POST_EVENTS", True),
        log_format=_FORMATS[format_name],
        log_level=_LEVELS[level_name],
        liveness=env.get("AIGUARD_LIVENESS", "").strip() or None,
        secret_retry_seconds=_number(env, "AIGUARD_SECRET_RETRY_SECONDS", 30.0, lo=1, hi=3600),
        webhook=webhook,
        injection=InjectionSettings(
            failure_policy=_choice(
                env, "AIGUARD_INJECTION_FAILURE_POLICY", "Fail", _FAILURE_POLICIES
            ),
            timeout_seconds=int(
                _number(env, "AIGUARD_INJECTION_TIMEOUT_SECONDS", 10, lo=1, hi=MAX_WEBHOOK_TIMEOUT)
            ),
        ),
        sidecar=_sidecar(env),
        metrics=_metrics(env),
        coverage_interval=_number(env, "AIGUARD_COVERAGE_INTERVAL_SECONDS", 60.0, lo=1, hi=86400),
        collector_ca_file=Path(ca) if (ca := _collector_ca_file(env)) else None,
    )


def _priority(env: Mapping[str, str]) -> int:
    if env.get("AIGUARD_PEERING_PRIORITY", "").strip().lower() == "random":
        return secrets.randbelow(2**31 - 2) + 1
    return int(_number(env, "AIGUARD_PEERING_PRIORITY", 0, lo=-(2**31), hi=2**31 - 1))


def _collector_ca_file(env: Mapping[str, str]) -> str | None:
    ca = env.get("AIGUARD_SIDECAR_COLLECTOR_CA_FILE", "").strip()
    if ca and not env.get("AIGUARD_SIDECAR_COLLECTOR_URL", "").strip():
        raise SettingsError(
            "AIGUARD_SIDECAR_COLLECTOR_CA_FILE is set without AIGUARD_SIDECAR_COLLECTOR_URL: "
            "name the collector the CA is for"
        )
    return ca or None
