"""The collector's HTTP API (aiohttp) and the server that runs it inside the operator.

Endpoints (JSON; times RFC 3339; see :mod:`aiguard_operator.collector` for examples)::

    POST /v1/events                 sidecars: {"events": [event, ...]} (≤ 1000 events, 8 MiB)
                                    → 200 {"accepted": n, "duplicates": n, "conflicts": n}
                                    400 malformed (nothing stored), 401 token, 403 identity,
                                    503 the API server or the database is unavailable
    GET  /v1/events                 ?from=&to=&namespace=&policy=&instance=&order=time|sequence
                                    &limit=(≤5000)&after=<next>
                                    → {"events": [...], "next": "<token>" | null}
    GET  /v1/chains                 ?namespace=   → {"chains": [chain, ...]}
    GET  /v1/chains/{instance}      ?verify=true|false → chain + {"verification": {"ok",
                                    "problems": [...]}} (instance URL-encoded: ns/pod/boot)
    GET  /v1/purges                 ?namespace=&policy=&from=&to= → {"purges": [record, ...]}
    POST /v1/purges                 run retention now → {"purges": [records of this run]}
    POST /v1/approvals              sidecars: hold a request for human review → AIIncident
    GET  /v1/approvals/{ns}/{name}  ?wait=(≤60) long-poll: approved | denied | pending-approval
                                    (see :mod:`aiguard_operator.approvals`)
    GET  /v1/captures/{id}          ?namespace= (required) → the decrypted content capture of
                                    one event (readers need get on aipolicies/capture; every
                                    read is logged with the reader)
    GET  /healthz                   → ok

Authentication and authorisation: :mod:`aiguard_operator.collector.auth`. Handlers stay thin:
parsing and validation run in a worker thread (a 1000-event batch is ~50 ms of pydantic), the
store runs on its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

import pydantic
from aiohttp import web

from aiguard_api import audit
from aiguard_operator import approvals, kube
from aiguard_operator.collector import auth, capture, retention
from aiguard_operator.collector.capture import CaptureCipher, Sealed
from aiguard_operator.collector.config import CollectorSettings
from aiguard_operator.collector.store import (
    MAX_PAGE,
    ChainInfo,
    EventQuery,
    Ingest,
    PurgeQuery,
    SQLiteStore,
    Store,
)
from aiguard_operator.collector.tlsreload import ServingCertificate
from aiguard_operator.incidents import manager as incidents

log = logging.getLogger("aiguard.collector")

MEMO_KEY: Final = "aiguard-collector"
MAX_BODY: Final = audit.MAX_BATCH_BYTES + (1 << 20)


@dataclass(frozen=True, slots=True)
class Deps:
    store: Store
    auth: auth.Authenticator | None
    """None: no authentication at all (unit tests of the HTTP layer only)."""
    query_auth: bool
    retention: retention.RetentionLookup
    on_stored: Callable[[list[Ingest]], None] | None = None
    """Called with a batch that stored at least one new event (incidents): must not block."""
    capture: CaptureCipher | None = None
    """Encrypts captured content; None: captures are dropped, never stored in the clear."""


DEPS: Final = web.AppKey("deps", Deps)


class BadRequest(Exception):
    pass


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return _json({"error": message, **extra}, status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except auth.AuthError as e:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        resp = _error(e.status, e.message)
        if headers:
            resp.headers.update(headers)
        return resp
    except auth.Unavailable as e:
        log.warning("Kubernetes API unavailable", extra={"fields": {"error": str(e)}})
        resp = _error(503, "the Kubernetes API is unavailable; retry")
        resp.headers["Retry-After"] = "2"
        return resp
    except BadRequest as e:
        return _error(400, str(e))


# --------------------------------------------------------------------------- ingest


def _validate(raw: bytes, cipher: CaptureCipher | None = None) -> list[Ingest]:
    """Parse and validate a batch (worker thread). BadRequest names the first bad event.

    A content capture (``aiguard.capture``) is taken out of its event before the event is
    stored, checked against the event's ``aiguard.capture.hash`` and encrypted; one that does
    not match, or arrives with no key configured, is dropped (and logged) while its event is
    kept: the event is the evidence, the capture an attachment."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    events = doc.get("events") if isinstance(doc, dict) else None
    if not isinstance(events, list):
        raise BadRequest('expected {"events": [...]}')
    if len(events) > audit.MAX_BATCH_EVENTS:
        raise BadRequest(f"at most {audit.MAX_BATCH_EVENTS} events per request")
    out: list[Ingest] = []
    for i, event in enumerate(events):
        content: Any = None
        if isinstance(event, dict) and audit.CAPTURE in event:
            try:
                content = capture.check(event)
            except capture.CaptureError as e:
                log.warning(
                    "content capture dropped", extra={"fields": {"event": i, "why": str(e)}}
                )
        try:
            ev = audit.AuditEvent.model_validate(event)
        except pydantic.ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise BadRequest(f"events[{i}]: {where}: {first['msg']}") from None
        prefix = f"{ev.namespace}/{ev.pod}/"
        if not ev.instance.startswith(prefix):
            raise BadRequest(f"events[{i}]: instance {ev.instance!r} is not of pod {prefix}")
        try:
            body = audit.canonical(event).decode()
        except UnicodeEncodeError:  # "\ud800" is valid JSON, but not a character
            raise BadRequest(f"events[{i}]: a string holds a lone surrogate") from None
        out.append(
            Ingest(
                id=ev.id,
                instance=ev.instance,
                sequence=ev.sequence,
                time_us=round(ev.timestamp * 1e6),
                namespace=ev.namespace,
                pod=ev.pod,
                service_account=ev.service_account,
                policy=ev.policy_name,
                hash=ev.hash,
                body=body,
                capture=_seal(cipher, content, ev) if content is not None else None,
            )
        )
    return out


def _seal(cipher: CaptureCipher | None, content: Any, ev: audit.AuditEvent) -> Sealed | None:
    if cipher is None:
        log.warning(
            "content capture dropped: no capture key (AIGUARD_COLLECTOR_CAPTURE_KEY_FILE)",
            extra={"fields": {"event": ev.id, "policy": f"{ev.namespace}/{ev.policy_name}"}},
        )
        return None
    return cipher.seal(content, event_id=ev.id, namespace=ev.namespace, policy=ev.policy_name)


async def post_events(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    who: auth.Identity | None = None
    if deps.auth is not None:
        who = await deps.auth.identify(request.headers.get("Authorization"), writer=True)
    if request.content_length is not None and request.content_length > MAX_BODY:
        return _error(413, f"at most {audit.MAX_BATCH_BYTES} bytes per request")
    raw = await request.read()
    events = await asyncio.to_thread(_validate, raw, deps.capture)
    if who is not None:
        for i, e in enumerate(events):
            why = auth.check_writer(who, e.namespace, e.service_account, e.pod)
            if why is not None:
                log.warning(
                    "refused audit events from another workload",
                    extra={"fields": {"caller": who.username, "event": e.id, "why": why}},
                )
                return _error(403, f"events[{i}]: {why}")
    try:
        result = await deps.store.insert(events, received_us=int(time.time() * 1e6))
    except Exception:
        log.exception("audit store insert failed")
        resp = _error(503, "the audit store is unavailable; retry")
        resp.headers["Retry-After"] = "2"
        return resp
    if result.accepted and deps.on_stored is not None:
        try:  # hand-off to a bounded queue: incident work never fails or slows the ingest
            deps.on_stored(events)
        except Exception:
            log.exception("incident hook failed; the events are stored")
    return _json(
        {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "conflicts": result.conflicts,
        }
    )


# --------------------------------------------------------------------------- queries


def _time_param(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        return round(audit.parse_time(value) * 1e6)
    except ValueError:
        raise BadRequest(f"{name}={value!r}: expected an RFC 3339 time") from None


async def _reader(request: web.Request, namespace: str | None, verb: str = "get") -> None:
    deps = request.app[DEPS]
    if deps.auth is None:
        return
    if not deps.query_auth and verb == "get":
        return
    who = await deps.auth.identify(request.headers.get("Authorization"), writer=False)
    await deps.auth.authorize(who, verb=verb, namespace=namespace)


def _instance_namespace(instance: str) -> str:
    return instance.split("/", 1)[0]


async def get_events(request: web.Request) -> web.Response:
    q = request.query
    instance = q.get("instance") or None
    namespace = q.get("namespace") or (_instance_namespace(instance) if instance else None)
    await _reader(request, namespace)
    order = q.get("order", "time")
    if order not in ("time", "sequence"):
        raise BadRequest("order must be time or sequence")
    try:
        limit = int(q.get("limit", "1000"))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    query = EventQuery(
        start_us=_time_param(request, "from"),
        end_us=_time_param(request, "to"),
        namespace=namespace,
        policy=q.get("policy") or None,
        instance=instance,
        order="time" if order == "time" else "sequence",
        after=q.get("after") or None,
        limit=max(1, min(limit, MAX_PAGE)),
    )
    try:
        page = await request.app[DEPS].store.events(query)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    body = '{"events":[' + ",".join(page.bodies) + '],"next":' + json.dumps(page.next) + "}"
    return web.Response(text=body, content_type="application/json")


async def get_chains(request: web.Request) -> web.Response:
    namespace = request.query.get("namespace") or None
    await _reader(request, namespace)
    chains = await request.app[DEPS].store.chains(namespace)
    return _json({"chains": [c.to_json() for c in chains]})


def _parse_all(bodies: list[str]) -> list[Any]:
    return [json.loads(b) for b in bodies]


async def verify_stored(store: Store, info: ChainInfo) -> list[audit.Problem]:
    """Verify one stored chain against its purge start and head."""
    parsed: list[Any] = []
    after: str | None = None
    while True:
        page = await store.events(
            EventQuery(instance=info.instance, order="sequence", after=after, limit=MAX_PAGE)
        )
        parsed.extend(await asyncio.to_thread(_parse_all, page.bodies))
        if page.next is None:
            break
        after = page.next
    starts = {info.instance: info.start} if info.start is not None else {}
    return await asyncio.to_thread(
        audit.verify_chain, parsed, starts=starts, heads={info.instance: info.last_sequence}
    )


async def get_chain(request: web.Request) -> web.Response:
    instance = request.match_info["instance"]
    await _reader(request, _instance_namespace(instance))
    store = request.app[DEPS].store
    info = await store.chain(instance)
    if info is None:
        return _error(404, f"no events of instance {instance!r}")
    out = info.to_json()
    if request.query.get("verify", "true").lower() not in ("0", "false", "no"):
        problems = await verify_stored(store, info)
        out["verification"] = {
            "ok": not problems and info.conflicts == 0,
            "problems": [p.to_json() for p in problems],
        }
    return _json(out)


async def get_purges(request: web.Request) -> web.Response:
    namespace = request.query.get("namespace") or None
    await _reader(request, namespace)
    records = await request.app[DEPS].store.purges(
        PurgeQuery(
            namespace=namespace,
            policy=request.query.get("policy") or None,
            start_us=_time_param(request, "from"),
            end_us=_time_param(request, "to"),
        )
    )
    return _json({"purges": [r.model_dump(mode="json", by_alias=True) for r in records]})


async def post_purges(request: web.Request) -> web.Response:
    await _reader(request, None, verb="delete")
    deps = request.app[DEPS]
    try:
        records = await retention.run_purge(deps.store, deps.retention)
    except (kube.KubeError, OSError) as e:
        raise auth.Unavailable(f"cannot list AIPolicies: {e}") from e
    return _json({"purges": [r.model_dump(mode="json", by_alias=True) for r in records]})


async def get_capture(request: web.Request) -> web.Response:
    namespace = request.query.get("namespace") or ""
    if not namespace:
        raise BadRequest("namespace is required: captures are read per namespace")
    deps = request.app[DEPS]
    who: auth.Identity | None = None
    if deps.auth is not None and deps.query_auth:
        who = await deps.auth.identify(request.headers.get("Authorization"), writer=False)
        await deps.auth.authorize(who, verb="get", namespace=namespace, subresource="capture")
    event_id = request.match_info["id"]
    stored = await deps.store.capture(event_id)
    if stored is None or stored.namespace != namespace:
        return _error(404, f"no captured content for event {event_id} in {namespace}")
    if deps.capture is None:
        return _error(503, "no capture key is configured: captured content cannot be read")
    try:
        content = deps.capture.open(
            stored.sealed, event_id=stored.id, namespace=stored.namespace, policy=stored.policy
        )
    except capture.CaptureError as e:
        return _error(500, str(e))
    log.info(
        "captured content read",
        extra={"fields": {"reader": who.username if who else None, "event": event_id}},
    )
    return _json(
        {
            "id": stored.id,
            "namespace": stored.namespace,
            "policy": stored.policy,
            "time": audit.format_time(stored.time_us / 1e6),
            "capture": content,
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(deps: Deps) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    app[DEPS] = deps
    app.router.add_post(audit.EVENTS_PATH, post_events)
    app.router.add_get(audit.EVENTS_PATH, get_events)
    app.router.add_get("/v1/chains", get_chains)
    app.router.add_get("/v1/chains/{instance:.+}", get_chain)
    app.router.add_get("/v1/purges", get_purges)
    app.router.add_post("/v1/purges", post_purges)
    app.router.add_get("/v1/captures/{id}", get_capture)
    app.router.add_get("/healthz", healthz)
    return app


# --------------------------------------------------------------------------- the server


def make_store(settings: CollectorSettings) -> Store:
    if settings.postgres_dsn:
        from aiguard_operator.collector.postgres import PostgresStore  # optional dependency

        return PostgresStore(settings.postgres_dsn)
    return SQLiteStore(settings.db)


class CollectorServer:
    """The collector on its port, with its retention loop. ``port=0`` picks a free port."""

    def __init__(
        self,
        settings: CollectorSettings,
        *,
        api: kube.Client,
        store: Store | None = None,
        lookup: retention.RetentionLookup | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or make_store(settings)
        self.auth = auth.Authenticator(
            api, audience=settings.audience, ttl=settings.token_cache_seconds
        )
        inc = incidents.settings_from_env()
        self.incidents = incidents.IncidentManager(api, self.store, inc) if inc.enabled else None

        async def from_kube() -> dict[tuple[str, str], retention.Retention]:
            return await retention.kube_retention(api)

        self.app = create_app(
            Deps(
                store=self.store,
                auth=self.auth,
                query_auth=settings.query_auth == "rbac",
                retention=lookup or from_kube,
                on_stored=self.incidents.submit if self.incidents else None,
                capture=(
                    CaptureCipher.from_file(settings.capture_key_file)
                    if settings.capture_key_file
                    else None
                ),
            )
        )
        self.approvals = approvals.install(
            self.app,
            api=api,
            authenticator=self.auth,
            on_created=self.incidents.notify_soon if self.incidents else None,
        )
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.cert_dir else "http"
        host = "127.0.0.1" if self.settings.addr in ("0.0.0.0", "") else self.settings.addr  # noqa: S104
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        s = self.settings
        await self.store.open()
        if self.incidents is not None:
            await self.incidents.start()
        await self._runner.setup()
        ctx: ssl.SSLContext | None = None
        if s.cert_dir is not None:
            serving = ServingCertificate(s.cert_dir)
            await asyncio.to_thread(serving.load)
            ctx = serving.context
            self._tasks.append(
                asyncio.create_task(
                    serving.watch(s.cert_check_interval), name="aiguard-collector-cert"
                )
            )
        site = web.TCPSite(self._runner, s.addr, s.port, ssl_context=ctx)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else 0
        self._tasks.append(asyncio.create_task(self._purge_loop(), name="aiguard-collector-purge"))
        log.info(
            "audit collector listening",
            extra={"fields": {"url": self.url, "store": type(self.store).__name__}},
        )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._runner.cleanup()
        if self.incidents is not None:
            await self.incidents.stop()
        await self.store.close()

    async def purge_now(self) -> list[audit.PurgeRecord]:
        return await retention.run_purge(self.store, self.app[DEPS].retention)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.purge_interval)
            try:
                await self.purge_now()
            except Exception:
                log.exception("audit retention run failed; retrying at the next interval")


# --------------------------------------------------------------------------- operator wiring


async def start_in(memo: MutableMapping[str, Any], api: kube.Client) -> None:
    """Called by the operator's startup handler: serve the collector when configured
    (``AIGUARD_COLLECTOR=true``; see :mod:`aiguard_operator.collector.config`)."""
    from aiguard_operator.collector.config import from_env

    settings = from_env()
    if not settings.enabled:
        return
    server = CollectorServer(settings, api=api)
    await server.start()
    memo[MEMO_KEY] = server


async def stop_in(memo: MutableMapping[str, Any]) -> None:
    """Called by the operator's cleanup handler."""
    server = memo.get(MEMO_KEY)
    if isinstance(server, CollectorServer):
        await server.stop()
