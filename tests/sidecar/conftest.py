"""Fixtures for end-to-end sidecar tests: a real sidecar (in this process, ephemeral ports) in
front of real provider stand-ins served over TLS with a trustme CA, driven by the official SDKs.

* ``ca``                   the test CA; ``server_tls(...)`` issues a server context from it
* ``secrets``              a Kubernetes-style Secret volume (``..data`` symlink swaps)
* ``upstream``/``backup``  provider stand-ins (primary and secondary) over TLS 1.3
* ``start_sidecar``        writes a policy and starts a :class:`SidecarServer`
* ``records``              the audit records the sidecar emitted (a capturing sink)
* ``no_blocking``          (autouse) fails a test whose event loop was blocked > 100 ms
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import json
import logging
import os
import ssl
import threading
import time
from asyncio.base_events import _format_handle  # type: ignore[attr-defined]
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import httpx2
import openai
import pytest
import trustme
import yaml

from aiguard_api.constants import PLACEHOLDER_KEY
from aiguard_sidecar.app import Settings, SidecarServer
from aiguard_sidecar.hooks import GuardrailsFactory, no_guardrails
from aiguard_sidecar.identity import Workload
from aiguard_sidecar.metrics import Metrics
from aiguard_sidecar.records import RequestRecord
from tests.harness.standin import ProviderStandIn

OPENAI_KEY = "sk-test-openai-real-7f3a9c"
OPENAI_BACKUP_KEY = "sk-test-openai-backup-51d0e2"
ANTHROPIC_KEY = "sk-ant-test-real-0b77aa"
AZURE_KEY = "azure-test-real-91ce04"
REAL_KEYS = (OPENAI_KEY, OPENAI_BACKUP_KEY, ANTHROPIC_KEY, AZURE_KEY)
WORKLOAD = Workload(namespace="team-a", service_account="chatbot", pod="chatbot-5d9c-abcde")
SLOW_CALLBACK_SECONDS = 0.1


# ── the event loop must never block ──────────────────────────────────────────────────────────


class LoopWatchdog:
    """Times every callback the event loop runs (each task step is one) and remembers those
    that kept the loop for more than ``limit`` seconds.

    Like asyncio's debug mode with ``slow_callback_duration`` (what aiohttp's tests use), with
    two refinements so that it reports the system under test and nothing else:

    * time the thread spent runnable but not scheduled (``/proc/thread-self/schedstat``,
      Linux) is not counted: on a busy CI machine a preempted 5 ms step must not look like a
      blocked loop, while a blocking sleep, file read or long computation still does;
    * steps of the test's own tasks (the test function and fixture bodies: the *client* side,
      where the SDKs parse responses) are not counted. Everything the sidecar and the stand-ins
      run, in their request handlers, background tasks and callbacks, is.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.slow: list[str] = []
        self._thread = threading.get_ident()
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None
        self._original = asyncio.events.Handle._run

    def _runqueue_wait(self) -> float:
        if self._fd is None:
            return 0.0
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def install(self) -> None:
        original, watchdog = self._original, self

        def _run(handle: asyncio.events.Handle) -> None:
            if threading.get_ident() != watchdog._thread:
                return original(handle)
            waited = watchdog._runqueue_wait()
            start = time.perf_counter()
            try:
                return original(handle)
            finally:
                elapsed = time.perf_counter() - start
                if elapsed > watchdog.limit:
                    busy = elapsed - (watchdog._runqueue_wait() - waited)
                    if busy > watchdog.limit and not _client_side(handle):
                        watchdog.slow.append(
                            f"{_format_handle(handle)} held the loop {busy * 1000:.0f} ms"
                        )

        asyncio.events.Handle._run = _run  # type: ignore[method-assign]

    def uninstall(self) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]
        if self._fd is not None:
            os.close(self._fd)


_CLIENT_CODE = (str(Path(__file__).resolve().parents[1]), "pytest_asyncio")


def _client_side(handle: asyncio.events.Handle) -> bool:
    """Is ``handle`` a step of a task whose coroutine is test code (or pytest-asyncio's)?"""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    if not isinstance(task, asyncio.Task):
        return False
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and any(part in code.co_filename for part in _CLIENT_CODE)


@pytest.fixture(autouse=True)
async def no_blocking() -> AsyncIterator[None]:
    """Fail the test if anything held the event loop for more than 100 ms."""
    watchdog = LoopWatchdog(SLOW_CALLBACK_SECONDS)
    watchdog.install()
    try:
        yield
    finally:
        watchdog.uninstall()
    if watchdog.slow:
        pytest.fail("the event loop was blocked:\n" + "\n".join(watchdog.slow))


# ── TLS ──────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1", "localhost"))).configure_cert(ctx)
    return ctx


# ── secrets as Kubernetes mounts them ────────────────────────────────────────────────────────


class SecretVolume:
    """``DIR/NAME/KEY`` files laid out like a Secret volume: ``KEY -> ..data/KEY`` and
    ``..data -> ..<timestamp>``, updated by an atomic symlink swap."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._n = 0

    def write(self, name: str, data: dict[str, str | bytes]) -> None:
        vol = self.root / name
        vol.mkdir(parents=True, exist_ok=True)
        self._n += 1
        version = vol / f"..v{self._n}"
        version.mkdir()
        for key, value in data.items():
            (version / key).write_bytes(value.encode() if isinstance(value, str) else value)
        tmp = vol / "..data_tmp"
        tmp.symlink_to(version.name)
        tmp.replace(vol / "..data")
        for key in data:
            link = vol / key
            if not link.is_symlink():
                link.symlink_to(f"..data/{key}")

    def remove(self, name: str, key: str) -> None:
        (self.root / name / key).unlink()


@pytest.fixture
def secrets(tmp_path: Path, ca: trustme.CA) -> SecretVolume:
    vol = SecretVolume(tmp_path / "secrets")
    vol.write("openai", {"api-key": OPENAI_KEY + "\n"})
    vol.write("openai-backup", {"api-key": OPENAI_BACKUP_KEY})
    vol.write("anthropic", {"api-key": ANTHROPIC_KEY})
    vol.write("azure", {"api-key": AZURE_KEY})
    vol.write("test-ca", {"ca.crt": ca.cert_pem.bytes()})
    return vol


# ── provider stand-ins ───────────────────────────────────────────────────────────────────────


def _standin(ca: trustme.CA, **options: Any) -> ProviderStandIn:
    return ProviderStandIn(
        ssl_context=options.pop("ssl_context", None) or server_tls(ca),
        openai_keys=options.pop("openai_keys", [OPENAI_KEY]),
        azure_keys=options.pop("azure_keys", [AZURE_KEY]),
        anthropic_keys=options.pop("anthropic_keys", [ANTHROPIC_KEY]),
        **options,
    )


@pytest.fixture
async def upstream(ca: trustme.CA) -> AsyncIterator[ProviderStandIn]:
    """The primary provider (OpenAI, Azure and Anthropic formats)."""
    async with _standin(ca) as s:
        yield s


@pytest.fixture
async def backup(ca: trustme.CA) -> AsyncIterator[ProviderStandIn]:
    """A second OpenAI-format provider, the failover target."""
    async with _standin(ca, openai_keys=[OPENAI_BACKUP_KEY], reply="from backup") as s:
        yield s


# ── policies ─────────────────────────────────────────────────────────────────────────────────

CA_REF = {"caSecretRef": {"name": "test-ca", "key": "ca.crt"}}
ALL_OPERATIONS = ["chat", "responses", "embeddings", "models", "tools"]


def make_policy(
    upstream: ProviderStandIn, backup: ProviderStandIn | None = None, **spec: Any
) -> dict[str, Any]:
    """An AIPolicy with providers on the stand-ins; ``spec`` keys replace the defaults."""
    providers: list[dict[str, Any]] = [
        {
            "name": "openai-main",
            "type": "openai",
            "baseURL": upstream.openai_base_url,
            "apiKeySecretRef": {"name": "openai"},
            "tls": copy.deepcopy(CA_REF),
        },
        {
            "name": "anthropic-main",
            "type": "anthropic",
            "baseURL": upstream.anthropic_base_url,
            "apiKeySecretRef": {"name": "anthropic"},
            "tls": copy.deepcopy(CA_REF),
        },
        {
            "name": "azure-main",
            "type": "azure-openai",
            "baseURL": upstream.azure_endpoint,
            "apiKeySecretRef": {"name": "azure"},
            "apiVersion": "2024-10-21",
            "tls": copy.deepcopy(CA_REF),
        },
    ]
    gpt_targets = [{"provider": "openai-main"}]
    if backup is not None:
        providers.append(
            {
                "name": "openai-backup",
                "type": "openai",
                "baseURL": backup.openai_base_url,
                "apiKeySecretRef": {"name": "openai-backup"},
                "tls": copy.deepcopy(CA_REF),
            }
        )
        gpt_targets.append({"provider": "openai-backup"})
    doc: dict[str, Any] = {
        "apiVersion": "aiguard.dev/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": "test-policy", "namespace": "team-a", "generation": 1},
        "spec": {
            "providers": providers,
            "routes": [
                {
                    "name": "gpt",
                    "models": ["gpt-4o", "gpt-4o-mini", "gpt-*"],
                    "targets": gpt_targets,
                },
                {
                    "name": "embeddings",
                    "models": ["text-embedding-3-small"],
                    "targets": [{"provider": "openai-main"}],
                },
                {
                    "name": "claude",
                    "models": ["claude-sonnet-4-5", "claude-*"],
                    "targets": [{"provider": "anthropic-main"}],
                },
                {
                    "name": "azure",
                    "models": ["az-gpt-4o"],
                    "targets": [{"provider": "azure-main", "model": "gpt-4o"}],
                },
            ],
            "resilience": {"breakerFailureThreshold": 2, "breakerOpenSeconds": 0.5},
            "access": {
                "rules": [
                    {
                        "name": "everyone",
                        "subjects": {"allAuthenticated": True},
                        "models": ["*"],
                        "operations": ALL_OPERATIONS,
                    }
                ]
            },
        },
    }
    doc["spec"].update(copy.deepcopy(spec))
    return doc


class CapturingSink:
    """An AuditSink that keeps records (the real one is the audit issue's)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    async def emit(self, record: RequestRecord) -> None:
        self.records.append(record)

    async def close(self) -> None:
        return None

    @property
    def last(self) -> RequestRecord:
        assert self.records, "no request was recorded"
        return self.records[-1]


@dataclass
class HttpClients:
    """The SDKs' default HTTP clients. The sidecar is plain HTTP on loopback, so they skip
    loading the system CA store (tens of ms of blocking work per client, on the test's side)."""

    openai_async: httpx2.AsyncClient
    openai_sync: httpx2.Client
    anthropic_async: httpx2.AsyncClient
    anthropic_sync: httpx2.Client

    @classmethod
    def build(cls) -> HttpClients:
        return cls(
            openai.DefaultAsyncHttpxClient(verify=False),
            openai.DefaultHttpxClient(verify=False),
            anthropic.DefaultAsyncHttpxClient(verify=False),
            anthropic.DefaultHttpxClient(verify=False),
        )

    async def aclose(self) -> None:
        await self.openai_async.aclose()
        await self.anthropic_async.aclose()
        await asyncio.to_thread(self.openai_sync.close)
        await asyncio.to_thread(self.anthropic_sync.close)


@dataclass
class Sidecar:
    server: SidecarServer
    policy_path: Path
    sink: CapturingSink
    metrics: Metrics
    http: HttpClients

    @property
    def url(self) -> str:
        return self.server.url

    def write_policy(self, doc: dict[str, Any] | str) -> None:
        """Replace the policy file atomically (as a ConfigMap update does)."""
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.policy_path)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    # SDK clients with the placeholder key, as the injected app environment has them.
    def openai(self, **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/openai/v1",
            api_key=PLACEHOLDER_KEY,
            max_retries=0,
            http_client=self.http.openai_async,
            **kw,
        )

    def openai_sync(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/openai/v1",
            api_key=PLACEHOLDER_KEY,
            max_retries=0,
            http_client=self.http.openai_sync,
            **kw,
        )

    def azure(self, **kw: Any) -> openai.AsyncAzureOpenAI:
        return openai.AsyncAzureOpenAI(
            azure_endpoint=f"{self.url}/azure",
            api_key=PLACEHOLDER_KEY,
            api_version="2024-10-21",
            max_retries=0,
            http_client=self.http.openai_async,
            **kw,
        )

    def anthropic(self, **kw: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=f"{self.url}/anthropic",
            api_key=PLACEHOLDER_KEY,
            max_retries=0,
            http_client=self.http.anthropic_async,
            **kw,
        )

    def anthropic_sync(self, **kw: Any) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=f"{self.url}/anthropic",
            api_key=PLACEHOLDER_KEY,
            max_retries=0,
            http_client=self.http.anthropic_sync,
            **kw,
        )


StartSidecar = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def start_sidecar(tmp_path: Path, secrets: SecretVolume) -> AsyncIterator[StartSidecar]:
    """``await start_sidecar(policy_doc, **settings)`` → a running :class:`Sidecar`."""
    started: list[Sidecar] = []

    async def start(
        doc: dict[str, Any] | None,
        *,
        guardrails: GuardrailsFactory = no_guardrails,
        **settings: Any,
    ) -> Sidecar:
        """``doc=None``: use the ``policy_path`` passed in ``settings`` as it is."""
        path = settings.pop("policy_path", None) or tmp_path / f"policy-{len(started)}.yaml"
        if doc is not None:
            path.write_text(yaml.safe_dump(doc))
        sink = CapturingSink()
        metrics = Metrics()
        options: dict[str, Any] = {
            "policy_path": path,
            "workload": WORKLOAD,
            "listen_port": 0,
            "admin_host": "127.0.0.1",
            "admin_port": 0,
            "secrets_dir": str(secrets.root),
            "policy_poll_seconds": 0.05,
            "secret_poll_seconds": 0.05,
            "drain_seconds": 5.0,
            # In this process: the tests build the validators anyway, and a child per start
            # and reload would add ~0.3 s each (the child path: tests/unit/test_policy_load.py,
            # tests/sidecar/test_lean_start.py).
            "validate_in_child": False,
        }
        options.update(settings)
        server = SidecarServer(
            Settings(**options), metrics=metrics, audit=sink, guardrails=guardrails
        )
        await server.start()
        http = HttpClients.build()
        sidecar = Sidecar(server, path, sink, metrics, http)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        await sidecar.http.aclose()
        await sidecar.server.stop()


@pytest.fixture
async def sidecar(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, backup: ProviderStandIn
) -> Sidecar:
    """A sidecar with the default test policy (primary + backup OpenAI providers)."""
    return await start_sidecar(make_policy(upstream, backup))


# ── helpers ──────────────────────────────────────────────────────────────────────────────────


async def wait_for(
    condition: Callable[[], bool], *, within: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``condition`` every 10 ms (no blind sleeps); fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


async def raw_request(port: int, data: bytes) -> tuple[int, bytes]:
    """Send raw bytes, read until the server closes; return (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


def assert_no_real_keys(text: str) -> None:
    for key in REAL_KEYS:
        assert key not in text, "a provider key leaked"


@pytest.fixture
def log_lines(caplog: pytest.LogCaptureFixture) -> Callable[[], str]:
    """All log output of the test as JSON-ish text (for "no key in logs" checks)."""
    caplog.set_level(logging.DEBUG)

    def text() -> str:
        return "\n".join(
            json.dumps({"msg": r.getMessage(), **getattr(r, "fields", {})}, default=str)
            for r in caplog.records
        )

    return text


@pytest.fixture(scope="session", autouse=True)
def warm_sdks(ca: trustme.CA) -> None:
    """Exercise each SDK once, off any test's event loop: their first call imports modules and
    builds pydantic validators for ~1 s, which would otherwise trip ``no_blocking`` on the
    test's own (client) side."""
    with ProviderStandIn.run_in_thread(ssl_context=server_tls(ca)) as handle:
        s = handle.standin
        http = httpx2.Client(verify=ca_ssl_context(ca))
        oc = openai.OpenAI(base_url=s.openai_base_url, api_key="k", max_retries=0, http_client=http)
        msgs: Any = [{"role": "user", "content": "warm"}]
        oc.chat.completions.create(model="gpt-4o", messages=msgs)
        for _ in oc.chat.completions.create(model="gpt-4o", messages=msgs, stream=True):
            pass
        oc.responses.create(model="gpt-4o", input="warm")
        with oc.responses.stream(model="gpt-4o", input="warm") as rs:
            for _ in rs:
                pass
        oc.embeddings.create(model="text-embedding-3-small", input="warm")
        list(oc.models.list())
        oc.models.retrieve("gpt-4o")
        az = openai.AzureOpenAI(
            azure_endpoint=s.azure_endpoint,
            api_key="k",
            api_version="2024-10-21",
            max_retries=0,
            http_client=http,
        )
        az.chat.completions.create(model="gpt-4o", messages=msgs)
        ac = anthropic.Anthropic(
            base_url=s.anthropic_base_url, api_key="k", max_retries=0, http_client=http
        )
        ac.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=msgs)
        with ac.messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=msgs) as ms:
            for _ in ms.text_stream:
                pass
        # Error paths build their own models on first use.
        for call in (lambda: oc.models.retrieve("nope"), lambda: ac.models.retrieve("nope")):
            with contextlib.suppress(openai.NotFoundError, anthropic.NotFoundError):
                call()
        http.close()
        asyncio.run(_warm_async(s, ca))
    # Everything imported and built so far lives for the whole session: keep it out of the
    # collector's full passes, whose pauses would otherwise show up as a blocked loop.
    gc.collect()
    gc.freeze()


async def _warm_async(s: ProviderStandIn, ca: trustme.CA) -> None:
    """The async clients' first call imports their transports (anyio backends...)."""
    async with httpx2.AsyncClient(verify=ca_ssl_context(ca)) as http:
        msgs: Any = [{"role": "user", "content": "warm"}]
        oc = openai.AsyncOpenAI(
            base_url=s.openai_base_url, api_key="k", max_retries=0, http_client=http
        )
        await oc.chat.completions.create(model="gpt-4o", messages=msgs)
        async for _ in await oc.chat.completions.create(model="gpt-4o", messages=msgs, stream=True):
            pass
        await oc.responses.create(model="gpt-4o", input="warm")
        async with oc.responses.stream(model="gpt-4o", input="warm") as rs:
            async for _ in rs:
                pass
        await oc.embeddings.create(model="text-embedding-3-small", input="warm")
        _ = [m async for m in oc.models.list()]
        ac = anthropic.AsyncAnthropic(
            base_url=s.anthropic_base_url, api_key="k", max_retries=0, http_client=http
        )
        await ac.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=msgs)
        async with ac.messages.stream(
            model="claude-sonnet-4-5", max_tokens=10, messages=msgs
        ) as ms:
            async for _ in ms.text_stream:
                pass


def ca_ssl_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx
