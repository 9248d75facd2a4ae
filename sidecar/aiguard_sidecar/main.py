"""``aiguard-sidecar``: the console script.

::

    aiguard-sidecar --policy FILE [--listen HOST:PORT] [--admin HOST:PORT]
                    [--secrets-dir DIR] [--log-level LEVEL] [--drain-seconds S]
                    [--collector-url URL] [--spool-dir DIR] [--collector-token-file F]
                    [--collector-ca-file F] [--event-loop uvloop|asyncio]
    aiguard-sidecar scan ...        the policy's guardrails over JSON lines (``scan.py``)

``--policy`` takes the compiled config the operator writes (``/etc/aiguard/policy/config.json``)
or, for local use, an AIPolicy manifest. ``--listen`` defaults to ``127.0.0.1:15080`` (only the
pod's own containers can reach it). ``--admin`` defaults to ``0.0.0.0:15090`` so the kubelet's
probes and Prometheus can reach ``/healthz``, ``/readyz`` and ``/metrics``; bind it to
``127.0.0.1:15090`` when running outside a cluster.

The workload identity comes from the environment the injector sets through the downward API
(``AIGUARD_POD_NAMESPACE``, ``AIGUARD_POD_SERVICE_ACCOUNT``, ``AIGUARD_POD_NAME``); outside a
cluster the policy's namespace, ``default`` and the host name stand in, with a warning.

The event loop is uvloop (libuv; the sidecar's dependency) unless ``--event-loop asyncio`` or
``AIGUARD_EVENT_LOOP=asyncio`` asks for the standard library's: uvloop costs less CPU per proxied
request (``benchmarks/results/sidecar_proxy_compare_loop.json``); the asyncio loop is the fallback
to rule the loop out when debugging.

SIGTERM/SIGINT drain: ``/readyz`` turns 503, the proxy stops accepting connections, in-flight
requests get ``--drain-seconds`` to finish, then the process exits 0. A policy that cannot be
loaded at startup exits 2 with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from aiguard_api import audit, constants
from aiguard_api.errors import ConfigError
from aiguard_sidecar import logs, memory, policy_load
from aiguard_sidecar.app import Settings, SidecarServer
from aiguard_sidecar.audit.sink import AuditSettings
from aiguard_sidecar.identity import Workload

log = logging.getLogger("aiguard.sidecar")


def _address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aiguard-sidecar", description="aiguard's LLM egress enforcement sidecar."
    )
    p.add_argument("--policy", required=True, type=Path, help="compiled config or AIPolicy file")
    p.add_argument(
        "--listen",
        type=_address,
        default=(constants.SIDECAR_PROXY_HOST, constants.SIDECAR_PROXY_PORT),
        help="proxy address (default 127.0.0.1:15080)",
    )
    p.add_argument(
        "--admin",
        type=_address,
        default=("0.0.0.0", constants.SIDECAR_ADMIN_PORT),  # noqa: S104
        help="admin address for /metrics, /healthz, /readyz (default 0.0.0.0:15090)",
    )
    p.add_argument("--secrets-dir", help="where Secret NAME key KEY is read: DIR/NAME/KEY")
    p.add_argument(
        "--log-level",
        default=os.environ.get("AIGUARD_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=20.0,
        help="on SIGTERM, time in-flight requests get to finish (default 20)",
    )
    # ── audit (audit/sink.py) ──
    env = os.environ.get
    p.add_argument(
        "--collector-url",
        default=env("AIGUARD_COLLECTOR_URL") or None,
        help="collector base URL; audit events are spooled and shipped there "
        "(env AIGUARD_COLLECTOR_URL; default: none, events are only logged)",
    )
    p.add_argument(
        "--spool-dir",
        type=Path,
        default=Path(env("AIGUARD_SPOOL_DIR") or constants.SIDECAR_SPOOL_DIR),
        help=f"audit spool directory (env AIGUARD_SPOOL_DIR; {constants.SIDECAR_SPOOL_DIR})",
    )
    p.add_argument(
        "--collector-token-file",
        type=Path,
        default=Path(env("AIGUARD_COLLECTOR_TOKEN_FILE") or audit.COLLECTOR_TOKEN_FILE),
        help="projected ServiceAccount token for the collector "
        f"(env AIGUARD_COLLECTOR_TOKEN_FILE; {audit.COLLECTOR_TOKEN_FILE})",
    )
    p.add_argument(
        "--collector-ca-file",
        type=Path,
        default=Path(ca) if (ca := env("AIGUARD_COLLECTOR_CA_FILE")) else None,
        help="CA bundle of the collector's certificate (env AIGUARD_COLLECTOR_CA_FILE)",
    )
    p.add_argument(
        "--event-loop",
        default=env("AIGUARD_EVENT_LOOP") or "uvloop",
        choices=["uvloop", "asyncio"],
        help="event loop implementation (env AIGUARD_EVENT_LOOP; default uvloop)",
    )
    return p


def run_loop(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Run ``main`` on the chosen loop; uvloop is a dependency of the sidecar, not optional."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def workload_from_env(policy_namespace: str) -> Workload:
    try:
        return Workload.from_env()
    except ValueError as e:
        w = Workload(
            namespace=policy_namespace, service_account="default", pod=socket.gethostname()
        )
        log.warning(
            "workload identity not set by the injector; using a local stand-in",
            extra={"fields": {"error": str(e), "workload": w.ref, "pod": w.pod}},
        )
        return w


async def serve(settings: Settings) -> int:
    # The policy's guardrails (engine compiled in a worker thread at each policy load).
    from aiguard_sidecar.guarding import engine_guardrails

    server = SidecarServer(settings, guardrails=engine_guardrails)
    try:
        await server.start()
    except ConfigError as e:
        log.error("cannot load the policy", extra={"fields": {"error": str(e)}})
        return 2
    except OSError as e:
        log.error("cannot listen", extra={"fields": {"error": str(e)}})
        return 1
    # Startup objects (pydantic models, compiled policy) live for the whole process: keep them
    # out of the collector's full passes, whose pauses would stall requests.
    gc.collect()
    gc.freeze()
    await asyncio.to_thread(memory.trim)  # the startup peak's freed blocks back to the kernel
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["scan"]:  # ``aiguard-sidecar scan``: the guardrails over JSON lines
        from aiguard_sidecar import scan  # imported here: it loads the guardrail engine

        return scan.main(argv[1:])
    args = parser().parse_args(argv)
    listener = logs.setup(args.log_level)
    try:
        return _run(args)
    finally:
        listener.stop()


def _run(args: argparse.Namespace) -> int:
    try:
        data = Path(args.policy).read_bytes()
    except OSError as e:
        error = f"{args.policy}: cannot read: {e.strerror}"
        log.error("cannot load the policy", extra={"fields": {"error": error}})
        return 2
    try:
        # Validated in a child (policy_load): kept, so the store's first load reuses it.
        namespace = policy_load.parse(data, str(args.policy), args.secrets_dir).policy.namespace
    except ConfigError as e:
        log.error("cannot load the policy", extra={"fields": {"error": str(e)}})
        return 2
    settings = Settings(
        policy_path=args.policy,
        workload=workload_from_env(namespace),
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        admin_host=args.admin[0],
        admin_port=args.admin[1],
        secrets_dir=args.secrets_dir,
        drain_seconds=args.drain_seconds,
        audit=AuditSettings(
            collector_url=args.collector_url,
            spool_dir=args.spool_dir,
            token_file=args.collector_token_file,
            ca_file=args.collector_ca_file,
        ),
    )
    return run_loop(serve(settings), args.event_loop)


if __name__ == "__main__":
    sys.exit(main())
