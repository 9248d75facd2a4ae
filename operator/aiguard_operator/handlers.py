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
``aiguard_pods``       index pods              per namespace: small records of its pods
``aiguard_namespaces`` index namespaces        namespace → labels (namespace opt-in)
``aiguard_policies``   index AIPolicies        per namespace: selector, readiness, coverage
``pod_changed``        on.event pods           keep ``status.coverage`` of policies current
``shutdown``           on.cleanup              stop certificate rotation, close the client
=============================================  ============================================

No finalizers: deleting a policy never waits for the operator. The ConfigMap carries an
owner reference, so the garbage collector removes it even while the operator is down.

kopf's managed webhook configurations have no ``namespaceSelector``; :func:`_exclude_namespaces`
adds one (kube-system and configured namespaces are never sent to the webhook), so a stopped
operator can never block changes there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf
from kopf._core.engines import admission as kopf_admission  # see _exclude_namespaces

from aiguard_api import constants
from aiguard_api.config import compile_policy
from aiguard_api.policy import AIPolicy, LabelSelector
from aiguard_operator import certs, configmaps, coverage, kube, status, validation
from aiguard_operator.settings import Settings, from_env

logger = logging.getLogger("aiguard.operator")

POLICY = (constants.API_GROUP, constants.API_VERSION, constants.PLURAL_POLICY)
WEBHOOK_ID = "validate-policy"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
#: Prefix of kopf's own bookkeeping annotations on AIPolicy objects.
KOPF_STORAGE_PREFIX = "operator.aiguard.dev"
CERT_CHECK_INTERVAL = 3600.0
MEMO_KEY = "aiguard"

PodIndex = kopf.Index[str, "coverage.PodFacts"]
PolicyIndex = kopf.Index[str, "PolicyEntry"]
NamespaceIndex = kopf.Index[str, "dict[str, str]"]


@dataclass
class Runtime:
    """Shared resources, created by ``configure`` and closed by ``shutdown``."""

    settings: Settings
    api: kube.Client
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


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


def _exclude_namespaces(excluded: Sequence[str]) -> None:
    """Make kopf's managed webhook configurations skip ``excluded`` namespaces.

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

    def build_webhooks(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        hooks = original(*args, **kwargs)
        for hook in hooks:
            hook["namespaceSelector"] = selector
        return hooks

    build_webhooks.__wrapped__ = original  # type: ignore[attr-defined]
    kopf_admission.build_webhooks = build_webhooks


def _webhook_server(cfg: Settings) -> kopf.WebhookServer:
    wh = cfg.webhook
    paths = certs.CertPaths(wh.cert_dir)
    if wh.generate_certs:
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


async def _rotate_certs(cfg: Settings) -> None:
    """Re-check the webhook certificates hourly; kopf reloads the files when they change."""
    while True:
        await asyncio.sleep(CERT_CHECK_INTERVAL)
        try:
            outcome = await asyncio.to_thread(
                certs.ensure_certs, cfg.webhook.cert_dir, hosts=cfg.webhook.cert_hosts
            )
        except OSError:
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

    if cfg.webhook.enabled:
        settings.admission.server = _webhook_server(cfg)
        if cfg.webhook.managed:
            _exclude_namespaces(cfg.webhook.exclude_namespaces)
            settings.admission.managed = cfg.webhook.managed

    runtime = Runtime(settings=cfg, api=kube.Client(kube.load(cfg.kubeconfig)))
    await runtime.api.open()
    if cfg.peering:
        await _ensure_peering_object(runtime.api, cfg.peering)
    if cfg.webhook.enabled and cfg.webhook.generate_certs:
        runtime.tasks.append(asyncio.create_task(_rotate_certs(cfg), name="aiguard-certs"))
    memo[MEMO_KEY] = runtime
    logger.info(
        "aiguard operator: watching %s; peering %s; webhook %s",
        ", ".join(cfg.namespaces) or "all namespaces",
        cfg.peering or "off (standalone)",
        f"https://{cfg.webhook.url_host}:{cfg.webhook.port}" if cfg.webhook.enabled else "off",
    )


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get(MEMO_KEY)
    if not isinstance(runtime, Runtime):
        return
    for task in runtime.tasks:
        task.cancel()
    for task in runtime.tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
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


def _coverage(
    runtime: Runtime,
    namespace: str,
    policies: Sequence[coverage.PolicySelector],
    *,
    pods: PodIndex | None,
    namespaces: NamespaceIndex | None,
) -> dict[str, coverage.Coverage]:
    """Coverage of every policy of ``namespace``, from the pod and namespace indices."""
    labels: dict[str, str] = {}
    if namespaces is not None:
        labels = next((v for v in namespaces.get(namespace, []) if isinstance(v, dict)), {})
    return coverage.count(
        _pods_in(pods, namespace),
        policies,
        namespace=namespace,
        namespace_labels=labels,
        operator_namespace=runtime.settings.operator_namespace,
    )


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
        is_ready = status.is_true((peer.get("status") or {}).get("conditions"), status.READY)
        out.append(coverage.PolicySelector(name, selector, (ready or {}).get(name, is_ready)))
    return out


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
        if _ready_changed(conditions_now, conditions):
            _post(body, warning=True, reason=report.reason, message=report.message())
        if report.only_missing_secrets:
            # No spec change will announce the Secret: look again later.
            raise kopf.TemporaryError(report.message(), delay=runtime.settings.secret_retry_seconds)
        return

    policy: AIPolicy = report.policy
    config = compile_policy(policy)
    manifest = configmaps.build(policy, config)
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
        raise kopf.TemporaryError(f"ConfigMap {cm_name}: {e}", delay=10) from e

    selectors = [s for s in _selectors(peers) if s.name != name]
    selectors.append(coverage.PolicySelector(name, policy.spec.selector, True))
    counts = _coverage(
        runtime, namespace, selectors, pods=aiguard_pods, namespaces=aiguard_namespaces
    )

    conditions = status.merge(
        conditions_now,
        status.ready(config_map=cm_name, compiled_hash=config.hash, overlap=overlap),
        generation=generation,
        now=_now(),
    )
    patch.status["conditions"] = conditions
    patch.status["observedGeneration"] = generation
    patch.status["compiledHash"] = config.hash
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
    counts = _coverage(runtime, namespace, _selectors(peers), pods=pods, namespaces=namespaces)
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
    selector: LabelSelector | None
    coverage: Mapping[str, Any]
    reconciled: bool
    """The operator has written a Ready condition (so it owns status.coverage now)."""
    ready: bool


@kopf.index(*POLICY)
def aiguard_policies(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[str, PolicyEntry]:
    st = body.get("status") or {}
    return {
        _namespaced(namespace): PolicyEntry(
            name=name,
            selector=_selector_of(body),
            coverage=dict(st.get("coverage") or {}),
            reconciled=status.find(st.get("conditions") or [], status.READY) is not None,
            ready=status.is_true(st.get("conditions") or [], status.READY),
        )
    }


@kopf.on.event("", "v1", "pods", id="pod-changed")
async def pod_changed(
    type: str,
    namespace: str | None,
    memo: kopf.Memo,
    aiguard_pods: PodIndex | None = None,
    aiguard_policies: PolicyIndex | None = None,
    aiguard_namespaces: NamespaceIndex | None = None,
    **_: Any,
) -> None:
    """Re-count the namespace's policies when a pod comes, goes or changes labels."""
    namespace = _namespaced(namespace)
    if aiguard_policies is None:
        return
    entries = [
        e
        for e in aiguard_policies.get(namespace, [])
        if isinstance(e, PolicyEntry) and e.selector is not None and e.reconciled
    ]
    if not entries:
        return
    runtime = _runtime(memo)
    counts = _coverage(
        runtime,
        namespace,
        [coverage.PolicySelector(e.name, e.selector, e.ready) for e in entries if e.selector],
        pods=aiguard_pods,
        namespaces=aiguard_namespaces,
    )
    api = runtime.api
    for entry in entries:
        wanted = counts[entry.name].as_status()
        if dict(entry.coverage) != wanted:
            with contextlib.suppress(kube.NotFound):
                await api.patch(
                    _policy_path(namespace, entry.name, "status"), {"status": {"coverage": wanted}}
                )


# --------------------------------------------------------------------------- running

_LOG_FORMATS = {
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
    "json": kopf.LogFormat.JSON,
}


class _OperatorLogFilter(logging.Filter):
    """Adjust two of kopf's per-object log lines.

    * "Handler 'pod-changed' succeeded." would be logged for every pod event: dropped;
    * a rejected AIPolicy is logged by kopf as an ERROR ("Webhook ... failed permanently"),
      but rejecting bad input is the webhook doing its job: logged as INFO "rejected".
    """

    REJECTED = f"Webhook '{WEBHOOK_ID}' failed permanently: "

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno == logging.INFO and message == "Handler 'pod-changed' succeeded.":
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
