"""kopf handlers: the only module that imports kopf. Each handler is thin — it fetches what
the pure cores need, calls them, and writes what they return.

=============================================  ============================================
handler                                        does
=============================================  ============================================
``configure``          on.startup              settings (peering, events, storage), webhook
                                               server + certificates, API client, rotation,
                                               the ClusterKopfPeering object if missing
``login``              on.login                kubeconfig (``$KUBECONFIG``) or ServiceAccount
``reconcile``          on.create/update/resume validate → compile → ConfigMap → status,
                                               Events; then the peers' overlap and coverage
``forget``             on.event DELETED        delete the ConfigMap (the GC would, too)
``validate_policy``    on.validate             admission: reject invalid policies
``inject_pod_*``       on.mutate pods CREATE   admission: inject the sidecar (two webhooks,
                                               see :mod:`aiguard_operator.admission`)
``aiguard_pods``       index pods              per namespace: small records of its pods
``aiguard_namespaces`` index namespaces        namespace → labels (namespace opt-in)
``aiguard_policies``   index AIPolicies        per namespace: selector, readiness, coverage,
                                               and what injection needs (``PolicyInfo``)
``pod_changed``        on.event pods           schedule a coverage recount of the namespace
``namespace_changed``  on.event namespaces     the indices are loaded (admission may use
                                               them); a label change → coverage recount
``shutdown``           on.cleanup              stop the background tasks, close the client
=============================================  ============================================

Background tasks (started by ``configure``): certificate rotation, the Event recorder
(:mod:`aiguard_operator.events`), the coverage worker (recounts namespaces after changes,
debounced, and all of them every ``AIGUARD_COVERAGE_INTERVAL_SECONDS``), and the
``/metrics`` endpoint (:mod:`aiguard_operator.metrics`).

No finalizers: deleting a policy never waits for the operator. The ConfigMap carries an
owner reference, so the garbage collector removes it even while the operator is down. (So no
kopf timers or daemons either: kopf puts a finalizer on every object that has one.)

Admission makes no API calls: the pod webhooks read kopf's in-memory indices of policies
and namespaces. kopf gates its resource handlers, not its webhooks, on the indices being
loaded; ``namespace_changed`` runs only once they are, and admission waits for that (within
the webhook's timeout) right after a start.

kopf's managed webhook configurations have no ``namespaceSelector``; :func:`_exclude_namespaces`
adds one (kube-system and configured namespaces are never sent to the webhook), so a stopped
operator can never block changes there, and gives the pod webhooks their own selectors,
``failurePolicy`` and ``timeoutSeconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
from aiohttp import web
from kopf._core.engines import admission as kopf_admission  # see _exclude_namespaces

from aiguard_api import constants
from aiguard_api.config import compile_policy
from aiguard_api.policy import AIPolicy, LabelSelector
from aiguard_operator import (
    admission,
    certs,
    certsync,
    configmaps,
    coverage,
    events,
    injection,
    kube,
    metrics,
    status,
    validation,
)
from aiguard_operator.collector import server as collector_server
from aiguard_operator.collector.capture import CaptureKeyError
from aiguard_operator.collector.config import CollectorSettingsError
from aiguard_operator.settings import Settings, from_env

logger = logging.getLogger("aiguard.operator")

POLICY = (constants.API_GROUP, constants.API_VERSION, constants.PLURAL_POLICY)
WEBHOOK_ID = "validate-policy"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: Prefix of kopf's own bookkeeping annotations on AIPolicy objects.
KOPF_STORAGE_PREFIX = "operator.aiguard.dev"
CERT_CHECK_INTERVAL = 3600.0
MEMO_KEY = "aiguard"
COMPONENT = "aiguard-operator"
COVERAGE_DEBOUNCE = 1.0
"""Seconds the coverage worker waits after a change, so a rollout is one recount."""
UNINJECTED_REASON = "UninjectedPods"
"""Event reason on a policy when pods it governs appear without the sidecar."""
MAX_EVENT_PODS = 10
POLICY_WAIT_INTERVAL = 0.05
"""Seconds between looks at a policy being compiled while a pod that needs it waits."""

PodIndex = kopf.Index[str, "coverage.PodFacts"]
PolicyIndex = kopf.Index[str, "PolicyEntry"]
NamespaceIndex = kopf.Index[str, "dict[str, str]"]


@dataclass(frozen=True)
class Indices:
    """kopf's indices, captured once loaded: live read-only views, current at every read."""

    pods: PodIndex
    policies: PolicyIndex
    namespaces: NamespaceIndex


@dataclass
class Runtime:
    """Shared resources, created by ``configure`` and closed by ``shutdown``."""

    settings: Settings
    api: kube.Client
    recorder: events.Recorder
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics_runner: web.AppRunner | None = None
    indices: Indices | None = None
    indexed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once kopf has loaded every index (``namespace_changed`` ran)."""
    coverage_pending: set[str] = field(default_factory=set)
    coverage_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    known_gaps: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    """(namespace, policy) → its uninjected pods when last reported (for new-gap Events)."""
    coverage_memos: dict[str, coverage.Memo] = field(default_factory=dict)
    """Namespace → the per-pod results of its last coverage count."""


def _runtime(memo: Mapping[str, Any]) -> Runtime:
    runtime = memo.get(MEMO_KEY)
    if not isinstance(runtime, Runtime):
        raise kopf.PermanentError("operator not configured: the startup handler did not run")
    return runtime


def _namespaced(namespace: str | None) -> str:
    if not namespace:
        raise kopf.PermanentError("a namespaced object without a namespace")
    return namespace


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- startup


def webhook_namespace_selector(excluded: Sequence[str]) -> dict[str, Any]:
    """A namespaceSelector matching every namespace except ``excluded``."""
    return {
        "matchExpressions": [
            {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": sorted(set(excluded))}
        ]
    }


def webhook_name(handler_id: str, suffix: str) -> str:
    """The name kopf gives a handler's entry in a managed webhook configuration."""
    return f"{handler_id.replace('/', '.').replace('_', '-')}.{suffix}"


def _exclude_namespaces(
    excluded: Sequence[str], overrides: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """Make kopf's managed webhook configurations skip ``excluded`` namespaces, and set the
    fields in ``overrides`` (handler id → fields) on those handlers' webhooks.

    kopf (1.45) builds the managed configurations in ``admission.build_webhooks`` and offers
    no namespaceSelector. We wrap that one function; if a kopf version no longer has it, the
    operator refuses to start rather than register a webhook that covers kube-system.
    """
    current = getattr(kopf_admission, "build_webhooks", None)
    if not callable(current):
        raise RuntimeError(
            "this kopf version has no admission.build_webhooks: cannot exclude kube-system "
            "from the managed webhook; set AIGUARD_WEBHOOK_MANAGED= and register it statically"
        )
    original: Callable[..., list[dict[str, Any]]] = getattr(current, "__wrapped__", current)
    selector = webhook_namespace_selector(excluded)
    changes = dict(overrides or {})

    def build_webhooks(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        hooks = original(*args, **kwargs)
        suffix = str(kwargs.get("name_suffix", ""))
        for hook in hooks:
            hook["namespaceSelector"] = selector
            for handler_id, fields in changes.items():
                if hook.get("name") == webhook_name(handler_id, suffix):
                    hook.update(fields)
        return hooks

    build_webhooks.__wrapped__ = original  # type: ignore[attr-defined]
    kopf_admission.build_webhooks = build_webhooks


_PLAIN_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _watched_names(patterns: Sequence[str]) -> list[str]:
    """The namespaces a namespaced operator serves, when all are plain names (no kopf globs
    or negations): the pod webhooks then select only those. Empty: no restriction."""
    if patterns and all(_PLAIN_NAMESPACE.match(p) for p in patterns):
        return list(patterns)
    return []


def _webhook_server(cfg: Settings) -> kopf.WebhookServer:
    wh = cfg.webhook
    paths = certs.CertPaths(wh.cert_dir)
    if wh.generate_certs:
        if not wh.cert_secret:  # shared ones were synced (and rotated) just before
            outcome = certs.ensure_certs(wh.cert_dir, hosts=wh.cert_hosts)
            for change in outcome.changed:
                logger.info("webhook certificates in %s: %s", wh.cert_dir, change)
        cafile = paths.ca_bundle
    else:
        # Mounted by cert-manager or the chart: tls.crt, tls.key, ca.crt.
        cafile = paths.ca_cert
    return kopf.WebhookServer(
        addr=wh.addr,
        port=wh.port,
        host=wh.url_host,
        certfile=str(paths.cert),
        pkeyfile=str(paths.key),
        cafile=str(cafile),
    )


async def _ensure_certs(cfg: Settings, api: kube.Client) -> certs.Outcome:
    """Create or rotate the webhook certificates: in the directory, or shared by every
    replica through ``AIGUARD_WEBHOOK_CERT_SECRET`` (:mod:`aiguard_operator.certsync`)."""
    wh = cfg.webhook
    if wh.cert_secret:
        return await certsync.sync(
            api,
            namespace=cfg.operator_namespace,
            name=wh.cert_secret,
            directory=wh.cert_dir,
            hosts=wh.cert_hosts,
        )
    return await asyncio.to_thread(certs.ensure_certs, wh.cert_dir, hosts=wh.cert_hosts)


async def _rotate_certs(cfg: Settings, api: kube.Client) -> None:
    """Re-check the webhook certificates hourly; kopf reloads the files when they change."""
    while True:
        await asyncio.sleep(CERT_CHECK_INTERVAL)
        try:
            outcome = await _ensure_certs(cfg, api)
        except (OSError, certsync.CertSyncError):
            logger.exception("webhook certificate rotation failed; retrying in an hour")
            continue
        for change in outcome.changed:
            logger.info("webhook certificates: %s", change)
        if outcome.deferred:
            logger.info("webhook certificates: %s", outcome.deferred)


async def _ensure_peering_object(api: kube.Client, name: str) -> None:
    """Create the ClusterKopfPeering object if it is missing.

    With mandatory peering kopf pauses every watch until the object exists, and says little
    about it: a replica would admit policies but never reconcile them.
    """
    path = kube.path(group="kopf.dev", version="v1", plural="clusterkopfpeerings", name=name)
    if await api.get_or_none(path) is not None:
        return
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        await api.create(
            kube.path(group="kopf.dev", version="v1", plural="clusterkopfpeerings"), body
        )
    except kube.NotFound:
        raise kopf.PermanentError(
            "the kopf peering CRD (clusterkopfpeerings.kopf.dev) is not installed: "
            "kubectl apply -f crds/kopf-peering.yaml, or run one replica with "
            "AIGUARD_PEERING=standalone"
        ) from None
    except kube.ApiError as e:
        if e.status != 409:
            raise
    logger.info("created ClusterKopfPeering %s", name)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = memo.get("settings")
    if not isinstance(cfg, Settings):
        cfg = from_env()

    # One active replica at a time, whatever the watched namespaces: a ClusterKopfPeering.
    settings.peering.clusterwide = True
    settings.peering.stealth = True
    settings.posting.enabled = cfg.post_events
    settings.posting.reporting_component = "aiguard-operator"
    settings.posting.reporting_instance = socket.gethostname()
    settings.posting.event_name_prefix = "aiguard-"
    # kopf's bookkeeping under our own annotation prefix, and not in status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=KOPF_STORAGE_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{KOPF_STORAGE_PREFIX}/finalizer"

    api = kube.Client(kube.load(cfg.kubeconfig))
    if cfg.webhook.enabled and cfg.webhook.generate_certs and cfg.webhook.cert_secret:
        await api.open()
        try:
            outcome = await _ensure_certs(cfg, api)
        except certsync.CertSyncError as e:
            await api.close()
            raise kopf.PermanentError(f"webhook certificates: {e}") from e
        for change in outcome.changed:
            logger.info("webhook certificates: %s", change)
    if cfg.webhook.enabled:
        settings.admission.server = _webhook_server(cfg)
        if cfg.webhook.managed:
            pod_hooks = admission.pod_webhooks(
                excluded=cfg.webhook.exclude_namespaces,
                watched=_watched_names(cfg.namespaces),
                failure_policy=cfg.injection.failure_policy,
                timeout_seconds=cfg.injection.timeout_seconds,
            )
            _exclude_namespaces(cfg.webhook.exclude_namespaces, pod_hooks)
            settings.admission.managed = cfg.webhook.managed

    runtime = Runtime(
        settings=cfg,
        api=api,
        recorder=events.Recorder(component=COMPONENT, instance=socket.gethostname()),
    )
    await runtime.api.open()
    if cfg.peering:
        await _ensure_peering_object(runtime.api, cfg.peering)
    metrics.initialise(admission.metric_series())
    memo[MEMO_KEY] = runtime
    try:
        if cfg.metrics.addr is not None:
            runtime.metrics_runner = await metrics.serve(cfg.metrics.addr, cfg.metrics.port)
        if cfg.webhook.enabled and cfg.webhook.generate_certs:
            runtime.tasks.append(
                asyncio.create_task(_rotate_certs(cfg, runtime.api), name="aiguard-certs")
            )
        runtime.tasks.append(
            asyncio.create_task(runtime.recorder.run(runtime.api), name="aiguard-events")
        )
        runtime.tasks.append(
            asyncio.create_task(_coverage_worker(runtime), name="aiguard-coverage")
        )
        await collector_server.start_in(memo, runtime.api)  # the collector, if AIGUARD_COLLECTOR
    except BaseException as e:
        # Release what this attempt started (ports, tasks, the client): kopf retries a failed
        # startup handler, and a retry must not find its own metrics port taken.
        await _release(memo)
        memo.pop(MEMO_KEY, None)
        if isinstance(e, (CaptureKeyError, CollectorSettingsError)):
            raise kopf.PermanentError(f"audit collector: {e}") from e
        raise
    logger.info(
        "aiguard operator: watching %s; peering %s; webhook %s; pod injection failurePolicy "
        "%s, sidecar %s; metrics %s",
        ", ".join(cfg.namespaces) or "all namespaces",
        cfg.peering or "off (standalone)",
        f"https://{cfg.webhook.url_host}:{cfg.webhook.port}" if cfg.webhook.enabled else "off",
        cfg.injection.failure_policy,
        cfg.sidecar.image,
        f"http://{cfg.metrics.addr}:{cfg.metrics.port}/metrics" if cfg.metrics.addr else "off",
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    await _release(memo)


async def _release(memo: MutableMapping[str, Any]) -> None:
    """Stop what the startup handler started: tasks, the metrics server, the collector."""
    runtime = memo.get(MEMO_KEY)
    if not isinstance(runtime, Runtime):
        return
    for task in runtime.tasks:
        task.cancel()
    for task in runtime.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if runtime.metrics_runner is not None:
        await runtime.metrics_runner.cleanup()
    await collector_server.stop_in(memo)  # audit collector
    await runtime.api.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The kubeconfig in ``$KUBECONFIG`` if set, else the pod's ServiceAccount."""
    if os.environ.get("KUBECONFIG"):
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs)


# --------------------------------------------------------------------------- API helpers


def _policy_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    return kube.path(
        group=constants.API_GROUP,
        version=constants.API_VERSION,
        plural=constants.PLURAL_POLICY,
        namespace=namespace,
        name=name,
        subresource=sub,
    )


def _configmap_path(namespace: str, name: str | None = None) -> str:
    return kube.path(plural="configmaps", namespace=namespace, name=name)


def _created(meta: Mapping[str, Any]) -> dt.datetime | None:
    raw = meta.get("creationTimestamp")
    if not raw:
        return None
    return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def _selector_of(obj: Mapping[str, Any]) -> LabelSelector | None:
    """The policy's selector, or None if it does not parse (the policy is then not counted)."""
    try:
        return LabelSelector.model_validate((obj.get("spec") or {}).get("selector") or {})
    except ValueError:
        return None


async def _peers(api: kube.Client, namespace: str) -> list[dict[str, Any]]:
    return await api.list(_policy_path(namespace))


def _peer_policies(peers: Iterable[Mapping[str, Any]]) -> list[validation.PeerPolicy]:
    out = []
    for peer in peers:
        selector = _selector_of(peer)
        if selector is not None:
            meta = peer.get("metadata", {})
            out.append(validation.PeerPolicy(meta["name"], selector, _created(meta)))
    return out


async def _secret_keys(
    api: kube.Client, namespace: str, names: Collection[str]
) -> dict[str, Collection[str] | None]:
    """Key names of each Secret (values are never kept), None for a missing one."""

    async def one(name: str) -> tuple[str, Collection[str] | None]:
        secret = await api.get_or_none(kube.path(plural="secrets", namespace=namespace, name=name))
        return name, (None if secret is None else frozenset(secret.get("data") or {}))

    return dict(await asyncio.gather(*(one(n) for n in sorted(set(names)))))


async def _check(
    api: kube.Client,
    obj: Mapping[str, Any],
    *,
    namespace: str,
    created: dt.datetime | None,
    peers: Sequence[Mapping[str, Any]] | None = None,
) -> validation.Report:
    """All of validation.py for ``obj``, with its Secrets and peers fetched from the API."""
    policy, problems = validation.parse(obj)
    if policy is None:
        return validation.Report(None, tuple(problems))
    keys = await _secret_keys(api, namespace, [ref.name for _, ref in policy.spec.secret_refs()])
    if peers is None:
        peers = await _peers(api, namespace)
    return validation.validate(obj, secrets=keys.get, others=_peer_policies(peers), created=created)


def _collector_ca(settings: Settings) -> str | None:
    """The collector CA for the policy ConfigMaps; missing or unreadable is a temporary error:
    writing the ConfigMap without it would leave new sidecars unable to deliver audit."""
    path = settings.collector_ca_file
    if path is None:
        return None
    try:
        pem = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise kopf.TemporaryError(f"collector CA {path}: {e}", delay=10) from e
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise kopf.TemporaryError(f"collector CA {path} holds no PEM certificate", delay=10)
    return pem


def _obj(body: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    meta = dict(body.get("metadata") or {})
    meta.setdefault("namespace", namespace)
    return {"metadata": meta, "spec": dict(body.get("spec") or {})}


# --------------------------------------------------------------------------- admission


@kopf.on.validate(*POLICY, id=WEBHOOK_ID, operations=["CREATE", "UPDATE"])
async def validate_policy(
    *,
    body: kopf.Body,
    namespace: str | None,
    warnings: list[str],
    memo: kopf.Memo,
    old: kopf.Body | None = None,
    operation: str | None = None,
    **_: Any,
) -> None:
    """Reject an AIPolicy that would not compile, with every problem in one message."""
    runtime = _runtime(memo)
    ns = namespace or body.get("metadata", {}).get("namespace") or "default"
    if ns in runtime.settings.webhook.exclude_namespaces:
        return
    if body.get("metadata", {}).get("deletionTimestamp"):
        return  # being deleted: let finalizer removals through
    if operation == "UPDATE" and old is not None and old.get("spec") == body.get("spec"):
        return  # metadata or kopf bookkeeping only: the spec was checked when it changed
    obj = _obj(body, ns)
    created = _created(obj["metadata"]) if operation == "UPDATE" else None
    try:
        report = await _check(runtime.api, obj, namespace=ns, created=created)
    except kube.ApiError as e:
        raise kopf.AdmissionError(
            f"aiguard-operator could not check the policy's Secrets or peers: {e.message}",
            code=503,
        ) from e
    if not report.ok:
        name = obj["metadata"].get("name", "")
        count = len(report.errors)
        raise kopf.AdmissionError(
            f'AIPolicy "{name}" is invalid ({count} problem{"s" if count > 1 else ""}): '
            + report.message(),
            code=422,
        )
    warnings.extend(str(w) for w in report.warnings)


# --------------------------------------------------------------------------- reconcile


async def _apply_configmap(
    api: kube.Client, wanted: Mapping[str, Any], existing: Mapping[str, Any] | None
) -> str | None:
    """Create or patch the ConfigMap; returns "created", "updated" or None (unchanged)."""
    meta = wanted["metadata"]
    ns, name = meta["namespace"], meta["name"]
    if existing is None:
        try:
            await api.create(_configmap_path(ns), dict(wanted))
            return "created"
        except kube.ApiError as e:
            if e.status != 409:
                raise
            existing = await api.get(_configmap_path(ns, name))
    patch = configmaps.merge_patch(existing, wanted)
    if patch is None:
        return None
    await api.patch(_configmap_path(ns, name), patch)
    return "updated"


def _post(body: kopf.Body, *, warning: bool, reason: str, message: str) -> None:
    if warning:
        kopf.warn(body, reason=reason, message=message)
    else:
        kopf.info(body, reason=reason, message=message)


def _ready_changed(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> bool:
    before, after = status.find(old, status.READY), status.find(new, status.READY)
    keys = ("status", "reason", "message")
    return before is None or after is None or any(before.get(k) != after.get(k) for k in keys)


def _pods_in(index: PodIndex | None, namespace: str) -> list[coverage.PodFacts]:
    """The pods of ``namespace`` from the kopf index (empty before it is populated)."""
    if index is None:
        return []
    return [p for p in index.get(namespace, []) if isinstance(p, coverage.PodFacts)]


def _labels_in(index: NamespaceIndex | None, namespace: str) -> dict[str, str] | None:
    """The namespace's labels from the kopf index; None when it has not seen the namespace."""
    if index is None:
        return None
    return next((v for v in index.get(namespace, []) if isinstance(v, dict)), None)


def _coverage(
    runtime: Runtime,
    namespace: str,
    policies: Sequence[coverage.PolicySelector],
    *,
    pods: PodIndex | None,
    namespaces: NamespaceIndex | None,
) -> coverage.CoverageReport:
    """Coverage of every policy of ``namespace``, from the pod and namespace indices.

    Counted with the namespace's ``coverage.Memo``: only pods that changed since the last
    count are looked at again, so a recount during a rollout does not hold up admission.
    """
    memo = runtime.coverage_memos.setdefault(namespace, coverage.Memo())
    return memo.report(
        _pods_in(pods, namespace),
        policies,
        namespace=namespace,
        namespace_labels=_labels_in(namespaces, namespace) or {},
        operator_namespace=runtime.settings.operator_namespace,
        excluded_namespaces=runtime.settings.webhook.exclude_namespaces,
    )


def _compiled(st: Mapping[str, Any]) -> bool:
    """The policy has a compiled config pods can mount (``injection.PolicyInfo.is_ready``).

    Not the Ready condition: an edit makes Ready lag until it is reconciled, and a policy
    whose Secret went missing keeps its last good ConfigMap; pods are injected with that
    config meanwhile (the sidecar hot-reloads the next one) rather than left unguarded.
    """
    return bool(st.get("compiledHash")) and bool(st.get("configMap"))


def _selectors(
    peers: Iterable[Mapping[str, Any]], *, ready: Mapping[str, bool] | None = None
) -> list[coverage.PolicySelector]:
    """Policies as coverage sees them; ``ready`` overrides what their status says."""
    out = []
    for peer in peers:
        selector = _selector_of(peer)
        name = str(peer.get("metadata", {}).get("name", ""))
        if selector is None or peer.get("metadata", {}).get("deletionTimestamp"):
            continue
        is_ready = _compiled(peer.get("status") or {})
        out.append(coverage.PolicySelector(name, selector, (ready or {}).get(name, is_ready)))
    return out


@dataclass(frozen=True)
class PolicyRef:
    """What publishing a policy's coverage needs to know of it."""

    name: str
    uid: str
    reported: Sequence[str]
    """``status.coverage.uninjectedPods`` as stored (what was reported before)."""


def _policy_refs(peers: Iterable[Mapping[str, Any]]) -> dict[str, PolicyRef]:
    out = {}
    for peer in peers:
        meta = peer.get("metadata") or {}
        cov = (peer.get("status") or {}).get("coverage") or {}
        name = str(meta.get("name", ""))
        out[name] = PolicyRef(name, str(meta.get("uid", "")), list(cov.get("uninjectedPods") or []))
    return out


def _gap_message(gaps: Sequence[coverage.PodCoverage], new: Collection[str]) -> str:
    """The UninjectedPods Event: the new gaps, each reason explained once."""
    fresh = [g for g in gaps if g.pod in new]
    shown = ", ".join(
        f"{g.pod} ({(g.reason or coverage.SIDECAR_MISSING).code})" for g in fresh[:MAX_EVENT_PODS]
    )
    if len(fresh) > MAX_EVENT_PODS:
        shown += f" and {len(fresh) - MAX_EVENT_PODS} more"
    reasons = {(g.reason or coverage.SIDECAR_MISSING).code: g.reason for g in fresh}
    explained = " ".join(
        f"{code}: {(reason or coverage.SIDECAR_MISSING).sentence}"
        for code, reason in sorted(reasons.items())
    )
    return (
        f"{len(gaps)} pod{'s' if len(gaps) != 1 else ''} governed by this policy "
        f"run{'s' if len(gaps) == 1 else ''} without the aiguard sidecar; new: {shown}. "
        f"{explained}"
    )


def _publish_coverage(
    runtime: Runtime,
    namespace: str,
    report: coverage.CoverageReport,
    policies: Mapping[str, PolicyRef],
) -> None:
    """Gauges for the namespace's policies, and a Warning Event on each policy whose
    governed pods now include some without the sidecar that were not reported before."""
    counts = report.by_policy()
    metrics.set_coverage(
        namespace,
        {name: (c.governed_pods, len(c.uninjected)) for name, c in counts.items()},
    )
    for key in [k for k in runtime.known_gaps if k[0] == namespace and k[1] not in counts]:
        del runtime.known_gaps[key]
    for name, cov in counts.items():
        ref = policies.get(name)
        if ref is None:
            continue
        now = frozenset(cov.uninjected)
        before = runtime.known_gaps.get((namespace, name))
        if before is None:  # first count since the operator started: what the status says
            before = frozenset(ref.reported)
        runtime.known_gaps[(namespace, name)] = now
        new = now - before
        if new and runtime.settings.post_events:
            gaps = [g for g in report.gaps if name in g.policies]
            policy = events.ObjectRef(
                constants.GROUP_VERSION, constants.KIND_POLICY, name, namespace, ref.uid or None
            )
            message = _gap_message(gaps, new)
            runtime.recorder.record(
                policy, type="Warning", reason=UNINJECTED_REASON, message=message
            )
            logger.warning("AIPolicy %s/%s: %s", namespace, name, message)


@kopf.on.resume(*POLICY, id="reconcile")
@kopf.on.create(*POLICY, id="reconcile")
@kopf.on.update(*POLICY, id="reconcile", field="spec")
async def reconcile(
    body: kopf.Body,
    meta: kopf.Meta,
    namespace: str | None,
    name: str,
    patch: kopf.Patch,
    memo: kopf.Memo,
    aiguard_pods: PodIndex | None = None,
    aiguard_namespaces: NamespaceIndex | None = None,
    **_: Any,
) -> None:
    """Validate, compile, write the ConfigMap, report. Idempotent: a resume changes nothing."""
    runtime = _runtime(memo)
    api = runtime.api
    namespace = _namespaced(namespace)
    generation = meta.get("generation")
    conditions_now: list[dict[str, Any]] = list(body.status.get("conditions") or [])
    obj = _obj(body, namespace)
    peers = await _peers(api, namespace)
    report = await _check(api, obj, namespace=namespace, created=_created(meta), peers=peers)
    cm_name = constants.configmap_name(name)
    existing = await api.get_or_none(_configmap_path(namespace, cm_name))
    uid = str(meta.get("uid", ""))
    overlap = validation.overlap_message(report.warnings)

    if not report.ok or report.policy is None:
        kept = cm_name if existing is not None and configmaps.is_owned_by(existing, uid) else None
        wanted = status.invalid(
            reason=report.reason, message=report.message(), kept_config_map=kept, overlap=overlap
        )
        conditions = status.merge(conditions_now, wanted, generation=generation, now=_now())
        patch.status["conditions"] = conditions
        patch.status["observedGeneration"] = generation
        metrics.set_policy_ready(namespace, name, False)
        if _ready_changed(conditions_now, conditions):
            _post(body, warning=True, reason=report.reason, message=report.message())
        if report.only_missing_secrets:
            # No spec change will announce the Secret: look again later.
            raise kopf.TemporaryError(report.message(), delay=runtime.settings.secret_retry_seconds)
        return

    policy: AIPolicy = report.policy
    config = compile_policy(policy)
    manifest = configmaps.build(policy, config, collector_ca=_collector_ca(runtime.settings))
    try:
        action = await _apply_configmap(api, manifest, existing)
    except kube.ApiError as e:
        conditions = status.merge(
            conditions_now,
            status.apply_failed(message=f"writing ConfigMap {cm_name} failed: {e.message}"),
            generation=generation,
            now=_now(),
        )
        patch.status["conditions"] = conditions
        metrics.set_policy_ready(namespace, name, False)
        raise kopf.TemporaryError(f"ConfigMap {cm_name}: {e}", delay=10) from e

    selectors = [s for s in _selectors(peers) if s.name != name]
    selectors.append(coverage.PolicySelector(name, policy.spec.selector, True))
    report_ = _coverage(
        runtime, namespace, selectors, pods=aiguard_pods, namespaces=aiguard_namespaces
    )
    refs = _policy_refs(peers)
    refs[name] = PolicyRef(
        name, uid, list((body.status.get("coverage") or {}).get("uninjectedPods") or [])
    )
    _publish_coverage(runtime, namespace, report_, refs)
    counts = report_.by_policy()

    conditions = status.merge(
        conditions_now,
        status.ready(config_map=cm_name, compiled_hash=config.hash, overlap=overlap),
        generation=generation,
        now=_now(),
    )
    patch.status["conditions"] = conditions
    patch.status["observedGeneration"] = generation
    patch.status["compiledHash"] = config.hash
    metrics.set_policy_ready(namespace, name, True)
    patch.status["configMap"] = cm_name
    patch.status["coverage"] = counts[name].as_status()

    if action is not None:
        _post(
            body,
            warning=False,
            reason="ConfigMapCreated" if action == "created" else "ConfigMapUpdated",
            message=f"generation {generation} compiled into ConfigMap {cm_name} ({config.hash})",
        )
    elif _ready_changed(conditions_now, conditions):
        _post(body, warning=False, reason=status.REASON_COMPILED, message=f"valid again: {cm_name}")
    for problem in report.warnings:
        if status.is_true(conditions_now, status.SELECTOR_OVERLAP) and (
            problem.reason == status.REASON_OVERLAP
        ):
            continue  # already reported
        if problem.reason == status.REASON_OVERLAP or action is not None:
            _post(body, warning=True, reason=problem.reason, message=str(problem))

    await _refresh_namespace(
        runtime, namespace, pods=aiguard_pods, namespaces=aiguard_namespaces, skip=name
    )


# --------------------------------------------------------------------------- other policies


async def _refresh_namespace(
    runtime: Runtime,
    namespace: str,
    *,
    pods: PodIndex | None,
    namespaces: NamespaceIndex | None,
    skip: str | None = None,
) -> None:
    """Bring coverage and SelectorOverlap of every policy in ``namespace`` up to date.

    A policy's change (or deletion) moves pods between policies and starts or ends overlaps
    with its peers; their own reconcilers would not notice.
    """
    api = runtime.api
    peers = await _peers(api, namespace)
    selectors = _peer_policies(peers)
    report_ = _coverage(runtime, namespace, _selectors(peers), pods=pods, namespaces=namespaces)
    _publish_coverage(runtime, namespace, report_, _policy_refs(peers))
    counts = report_.by_policy()
    for peer in peers:
        meta = peer.get("metadata", {})
        pname = meta.get("name", "")
        selector = _selector_of(peer)
        if pname == skip or selector is None or meta.get("deletionTimestamp"):
            continue
        current = peer.get("status") or {}
        conditions_now = list(current.get("conditions") or [])
        patch: dict[str, Any] = {}
        if pname not in counts:
            continue
        wanted_cov = counts[pname].as_status()
        if (current.get("coverage") or {}) != wanted_cov:
            patch["coverage"] = wanted_cov
        if status.find(conditions_now, status.READY) is not None:  # reconciled before
            problems = validation.check_selectors(
                pname, namespace, selector, selectors, created=_created(meta)
            )
            wanted = status.overlap_condition(validation.overlap_message(problems))
            have = status.find(conditions_now, status.SELECTOR_OVERLAP) or {}
            if (have.get("status"), have.get("message")) != (wanted.status, wanted.message):
                patch["conditions"] = status.merge(
                    conditions_now, [wanted], generation=meta.get("generation"), now=_now()
                )
        if patch:
            with contextlib.suppress(kube.NotFound):
                await api.patch(_policy_path(namespace, pname, "status"), {"status": patch})


# --------------------------------------------------------------------------- deletion


def _deleted(type: str, **_: Any) -> bool:
    return type == "DELETED"


@kopf.on.event(*POLICY, id="forget", when=_deleted)
async def forget(
    type: str,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    memo: kopf.Memo,
    aiguard_pods: PodIndex | None = None,
    aiguard_namespaces: NamespaceIndex | None = None,
    **_: Any,
) -> None:
    """On deletion: delete the ConfigMap now (the GC would soon) and re-count the peers."""
    runtime = _runtime(memo)
    namespace = _namespaced(namespace)
    uid = body.get("metadata", {}).get("uid", "")
    path = _configmap_path(namespace, constants.configmap_name(name))
    metrics.forget_policy(namespace, name)
    existing = await runtime.api.get_or_none(path)
    if existing is not None and configmaps.is_owned_by(existing, uid):
        await runtime.api.delete(path)
        logger.info("deleted ConfigMap %s/%s of deleted AIPolicy", namespace, path.rsplit("/")[-1])
    await _refresh_namespace(runtime, namespace, pods=aiguard_pods, namespaces=aiguard_namespaces)


# --------------------------------------------------------------------------- coverage


@kopf.index("", "v1", "pods")
def aiguard_pods(
    *, namespace: str | None, body: kopf.Body, **_: Any
) -> dict[str, coverage.PodFacts]:
    """Per namespace: small records of its pods (what coverage needs, not whole pods)."""
    return {_namespaced(namespace): coverage.PodFacts.from_pod(body)}


@kopf.index("", "v1", "namespaces")
def aiguard_namespaces(*, name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    """Namespace → its labels (the namespace-level injection opt-in)."""
    return {name: dict(labels)}


@dataclass(frozen=True)
class PolicyEntry:
    """One AIPolicy in the policy index."""

    name: str
    uid: str
    selector: LabelSelector | None
    coverage: Mapping[str, Any]
    reconciled: bool
    """The operator has written a Ready condition (so it owns status.coverage now)."""
    ready: bool
    """It has a compiled config pods can mount (:func:`_compiled`)."""
    info: injection.PolicyInfo | None
    """What injection needs; None when the spec does not parse (the policy is then unusable,
    and no pod is injected with it)."""


def _policy_info(name: str, body: Mapping[str, Any]) -> injection.PolicyInfo | None:
    st = body.get("status") or {}
    policy, _ = validation.parse(body)
    if policy is None:
        return None
    info = injection.PolicyInfo.from_policy(policy, ready=_compiled(st))
    return dataclasses.replace(
        info,
        compiled_hash=st.get("compiledHash") or None,
        configmap=st.get("configMap") or constants.configmap_name(name),
    )


@kopf.index(*POLICY)
def aiguard_policies(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[str, PolicyEntry]:
    """Per namespace: its policies, as coverage and admission need them."""
    st = body.get("status") or {}
    return {
        _namespaced(namespace): PolicyEntry(
            name=name,
            uid=str(body.get("metadata", {}).get("uid", "")),
            selector=_selector_of(body),
            coverage=dict(st.get("coverage") or {}),
            reconciled=status.find(st.get("conditions") or [], status.READY) is not None,
            ready=_compiled(st),
            info=_policy_info(name, body),
        )
    }


def _entries(index: PolicyIndex | None, namespace: str) -> list[PolicyEntry]:
    if index is None:
        return []
    return [e for e in index.get(namespace, []) if isinstance(e, PolicyEntry)]


def _schedule_coverage(runtime: Runtime, namespace: str) -> None:
    """Recount ``namespace`` soon (the coverage worker coalesces a burst of changes)."""
    runtime.coverage_pending.add(namespace)
    runtime.coverage_wakeup.set()


@kopf.on.event("", "v1", "pods", id="pod-changed")
async def pod_changed(
    namespace: str | None,
    memo: kopf.Memo,
    aiguard_policies: PolicyIndex | None = None,
    **_: Any,
) -> None:
    """A pod came, went or changed: recount its namespace's policies (if it has any)."""
    namespace = _namespaced(namespace)
    if any(e.reconciled for e in _entries(aiguard_policies, namespace)):
        _schedule_coverage(_runtime(memo), namespace)


@kopf.on.event("", "v1", "namespaces", id="namespace-changed")
async def namespace_changed(
    name: str,
    memo: kopf.Memo,
    aiguard_pods: PodIndex | None = None,
    aiguard_policies: PolicyIndex | None = None,
    aiguard_namespaces: NamespaceIndex | None = None,
    **_: Any,
) -> None:
    """kopf calls resource handlers only once every index is loaded: from the first call on,
    admission may decide with them. A namespace's labels decide its pods' opt-in: recount."""
    runtime = _runtime(memo)
    if runtime.indices is None:
        if aiguard_pods is None or aiguard_policies is None or aiguard_namespaces is None:
            raise kopf.PermanentError("kopf passed no indices: the index handlers are missing")
        runtime.indices = Indices(aiguard_pods, aiguard_policies, aiguard_namespaces)
        runtime.indexed.set()
        logger.info(
            "indices loaded: %d namespaces, %d with policies, %d with pods",
            len(aiguard_namespaces),
            len(aiguard_policies),
            len(aiguard_pods),
        )
    if any(e.reconciled for e in _entries(aiguard_policies, name)):
        _schedule_coverage(runtime, name)


async def _sync_coverage(runtime: Runtime, namespace: str) -> None:
    """Recount one namespace from the indices; write what changed, publish gauges and Events."""
    idx = runtime.indices
    if idx is None:
        return
    entries = [e for e in _entries(idx.policies, namespace) if e.reconciled and e.selector]
    if not entries:  # the namespace's last policy went away: nothing to count any more
        runtime.coverage_memos.pop(namespace, None)
        _publish_coverage(runtime, namespace, coverage.CoverageReport((), ()), {})
        return
    selectors = [
        coverage.PolicySelector(e.name, e.selector, e.ready) for e in entries if e.selector
    ]
    report_ = _coverage(runtime, namespace, selectors, pods=idx.pods, namespaces=idx.namespaces)
    refs = {
        e.name: PolicyRef(e.name, e.uid, list(e.coverage.get("uninjectedPods") or []))
        for e in entries
    }
    _publish_coverage(runtime, namespace, report_, refs)
    counts = report_.by_policy()
    for entry in entries:
        wanted = counts[entry.name].as_status()
        if dict(entry.coverage) != wanted:
            with contextlib.suppress(kube.NotFound):
                await runtime.api.patch(
                    _policy_path(namespace, entry.name, "status"), {"status": {"coverage": wanted}}
                )


async def _coverage_worker(runtime: Runtime) -> None:
    """Recount the namespaces changes were reported for (``_schedule_coverage``), at most
    once per ``COVERAGE_DEBOUNCE``, and every namespace with policies every
    ``coverage_interval``: the periodic pass repairs what a missed event or a failed status
    write left behind."""
    await runtime.indexed.wait()
    interval = runtime.settings.coverage_interval
    next_full = time.monotonic()
    while True:
        with contextlib.suppress(TimeoutError):
            timeout = max(0.0, next_full - time.monotonic())
            await asyncio.wait_for(runtime.coverage_wakeup.wait(), timeout)
        if time.monotonic() >= next_full and runtime.indices is not None:
            runtime.coverage_pending.update(runtime.indices.policies)
            next_full = time.monotonic() + interval
        await asyncio.sleep(COVERAGE_DEBOUNCE)
        runtime.coverage_wakeup.clear()
        pending, runtime.coverage_pending = runtime.coverage_pending, set()
        for namespace in sorted(pending):
            try:
                await _sync_coverage(runtime, namespace)
            except Exception:
                logger.exception("coverage of namespace %s: recount failed; retrying", namespace)
                runtime.coverage_pending.add(namespace)


# --------------------------------------------------------------------------- pod injection


def _answer_with(patch: kopf.Patch, outcome: admission.Outcome) -> None:
    """Make kopf's AdmissionResponse carry ``outcome.patch`` (none for a skip).

    kopf's documented way is ``patch.fns``: it applies the function to a deep copy of the pod
    and diffs the two with ``jsonpatch.JsonPatch.from_diff``, which costs five times what
    ``injection.json_patch`` does (``benchmarks/admission.py``); it deep-copies the pod even
    when nothing is to change (3 ms of a skip's 4). kopf builds the response from
    ``patch.as_json_patch()``: that one object is given the operations computed already. The
    function stays in ``patch.fns``, so a kopf that stopped asking ``as_json_patch`` would
    still send the same pod (``tests/unit/test_operator_handlers.py`` checks both paths).
    """
    operations = list(outcome.patch)
    if outcome.plan is not None and operations:
        # kopf types the body as its RawBody TypedDict; the mutator takes any mutable mapping.
        patch.fns.append(cast("Callable[[Any], None]", injection.mutator(outcome.plan)))

    def precomputed(body: Any = None) -> Any:
        return operations

    patch.as_json_patch = precomputed  # type: ignore[method-assign]


def _applying(entries: Iterable[PolicyEntry], pod: Mapping[str, Any]) -> list[PolicyEntry]:
    """The policies that apply to the pod: the one its annotation names, else those whose
    selector matches it."""
    meta = pod.get("metadata") or {}
    wanted = str((meta.get("annotations") or {}).get(constants.ANNOTATION_POLICY, "")).strip()
    if wanted:
        return [e for e in entries if e.name == wanted]
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if isinstance(v, str)}
    return [e for e in entries if e.selector is not None and e.selector.matches(labels)]


async def _review_pod(
    runtime: Runtime,
    via: admission.Via,
    pod: Mapping[str, Any],
    namespace: str,
    *,
    policies: PolicyIndex | None,
    namespaces: NamespaceIndex | None,
) -> admission.Outcome:
    cfg = runtime.settings
    if not runtime.indexed.is_set():
        # Just started: kopf serves webhooks before its indices are loaded. Wait within the
        # webhook's timeout rather than decide with empty ones.
        try:
            await asyncio.wait_for(runtime.indexed.wait(), cfg.injection.timeout_seconds / 2)
        except TimeoutError:
            return admission.failed(admission.OPERATOR_STARTING, cfg.injection.failure_policy)

    # The indices lag the API server by the watch latency (milliseconds). A policy created
    # a moment before the pod may be missing: the skip is then a Warning Event, and coverage
    # reports the pod, rather than every admission paying for an API call.
    def review() -> admission.Outcome:
        return admission.review(
            pod,
            namespace=namespace,
            namespace_labels=admission.namespace_labels(
                via, namespace, _labels_in(namespaces, namespace)
            ),
            policies=[e.info for e in _entries(policies, namespace) if e.info is not None],
            settings=cfg.sidecar,
            operator_namespace=cfg.operator_namespace,
            excluded_namespaces=cfg.webhook.exclude_namespaces,
        )

    outcome = review()
    # `kubectl apply -f dir/` sends a new policy and its workload together: the pods arrive
    # while the policy is being compiled. Wait for that (a policy compiled before and not
    # ready now is invalid: no wait), within the webhook's timeout.
    deadline = time.monotonic() + cfg.injection.timeout_seconds / 2
    while (
        outcome.skip == injection.Skip.POLICY_NOT_READY
        and any(not e.reconciled for e in _applying(_entries(policies, namespace), pod))
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(POLICY_WAIT_INTERVAL)
        outcome = review()
    return outcome


def _report(
    runtime: Runtime,
    outcome: admission.Outcome,
    pod: Mapping[str, Any],
    namespace: str,
    *,
    dryrun: bool,
) -> None:
    """The log line, the metric and the Event of one admission (no metric or Event for a
    dry run: it creates nothing)."""
    warn = outcome.decision == metrics.ERROR or bool(outcome.warnings)
    logger.log(
        logging.WARNING if warn else logging.INFO,
        "pod %s%s: %s",
        admission.describe(pod, namespace),
        " (dry run)" if dryrun else "",
        outcome.summary(),
    )
    if dryrun:
        return
    metrics.INJECTION_DECISIONS.labels(outcome.decision, outcome.reason).inc()
    spec = outcome.event(pod, namespace)
    if spec is not None and runtime.settings.post_events:
        runtime.recorder.record(spec.ref, type=spec.type, reason=spec.reason, message=spec.message)


async def _admit_pod(
    via: admission.Via,
    *,
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    namespace: str | None,
    dryrun: bool,
    memo: kopf.Memo,
    policies: PolicyIndex | None,
    namespaces: NamespaceIndex | None,
) -> None:
    started = time.perf_counter()
    runtime = _runtime(memo)
    pod = dict(body)  # the AdmissionReview's JSON, without kopf's mapping views
    ns = namespace or str((pod.get("metadata") or {}).get("namespace") or "")
    try:
        outcome = await _review_pod(runtime, via, pod, ns, policies=policies, namespaces=namespaces)
    except Exception:
        logger.exception("pod %s: the injection webhook failed", admission.describe(pod, ns))
        outcome = admission.failed(
            admission.INTERNAL_ERROR, runtime.settings.injection.failure_policy
        )
    _report(runtime, outcome, pod, ns, dryrun=dryrun)
    metrics.ADMISSION_DURATION.labels(via).observe(time.perf_counter() - started)
    if not outcome.allowed:
        raise kopf.AdmissionError(outcome.summary(), code=503)
    warnings.extend(outcome.warnings)
    _answer_with(patch, outcome)


@kopf.on.mutate(
    "",
    "v1",
    "pods",
    id=admission.NAMESPACE_WEBHOOK,
    operations=["CREATE"],
    persistent=True,
    side_effects=True,
)
async def inject_pod_by_namespace(
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    namespace: str | None,
    dryrun: bool,
    memo: kopf.Memo,
    aiguard_policies: PolicyIndex | None = None,
    aiguard_namespaces: NamespaceIndex | None = None,
    **_: Any,
) -> None:
    """Pods in namespaces labelled ``aiguard.dev/injection: enabled``."""
    await _admit_pod(
        "namespace",
        body=body,
        patch=patch,
        warnings=warnings,
        namespace=namespace,
        dryrun=dryrun,
        memo=memo,
        policies=aiguard_policies,
        namespaces=aiguard_namespaces,
    )


@kopf.on.mutate(
    "",
    "v1",
    "pods",
    id=admission.OBJECT_WEBHOOK,
    operations=["CREATE"],
    persistent=True,
    side_effects=True,
)
async def inject_pod_by_label(
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    namespace: str | None,
    dryrun: bool,
    memo: kopf.Memo,
    aiguard_policies: PolicyIndex | None = None,
    aiguard_namespaces: NamespaceIndex | None = None,
    **_: Any,
) -> None:
    """Pods labelled ``aiguard.dev/inject`` in other namespaces."""
    await _admit_pod(
        "object",
        body=body,
        patch=patch,
        warnings=warnings,
        namespace=namespace,
        dryrun=dryrun,
        memo=memo,
        policies=aiguard_policies,
        namespaces=aiguard_namespaces,
    )


# --------------------------------------------------------------------------- running

_LOG_FORMATS = {
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
    "json": kopf.LogFormat.JSON,
}


class _OperatorLogFilter(logging.Filter):
    """Adjust some of kopf's per-object log lines.

    * "Handler 'pod-changed' succeeded." would be logged for every pod event, and the like
      for every namespace event and every pod admission (which has a line of our own, with
      the decision): dropped;
    * a rejected AIPolicy is logged by kopf as an ERROR ("Webhook ... failed permanently"),
      but rejecting bad input is the webhook doing its job: logged as INFO "rejected".
    """

    REJECTED = f"Webhook '{WEBHOOK_ID}' failed permanently: "
    DROPPED = frozenset(
        {
            "Handler 'pod-changed' succeeded.",
            "Handler 'namespace-changed' succeeded.",
            *(f"Webhook '{hook}' succeeded." for hook in admission.WEBHOOK_IDS.values()),
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno == logging.INFO and message in self.DROPPED:
            return False
        if record.levelno == logging.ERROR and message.startswith(self.REJECTED):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "Admission rejected: %s", (message[len(self.REJECTED) :],)
        return True


def run(cfg: Settings) -> None:
    """Run the operator in this thread until SIGINT/SIGTERM (what ``aiguard-operator`` does)."""
    kopf.configure(
        debug=cfg.log_level <= logging.DEBUG,
        quiet=cfg.log_level >= logging.WARNING,
        log_format=_LOG_FORMATS[cfg.log_format],
        log_refkey="k8s",
    )
    logging.getLogger().setLevel(cfg.log_level)
    logging.getLogger("kopf.objects").addFilter(_OperatorLogFilter())
    if cfg.log_level > logging.DEBUG:
        # One line per admission request is debug material.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=cfg.clusterwide,
        namespaces=list(cfg.namespaces),
        standalone=cfg.peering is None,
        peering_name=cfg.peering,
        priority=cfg.peering_priority,
        liveness_endpoint=cfg.liveness,
        memo=kopf.Memo(settings=cfg),
    )
