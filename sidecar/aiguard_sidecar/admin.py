"""The admin server (``:15090``): ``/metrics``, ``/healthz``, ``/readyz``.

* ``/healthz`` — the process is alive and its event loop answers (liveness).
* ``/readyz``  — a policy is loaded, the proxy port is listening and the sidecar is not
  draining (readiness; 503 with the reason otherwise).
* ``/metrics`` — Prometheus text format from the sidecar's own registry.

It binds ``0.0.0.0`` by default so the kubelet's probes and Prometheus can reach it; it
serves no request content and no secrets.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from aiguard_sidecar.metrics import Metrics

Readiness = Callable[[], str | None]
"""None when ready, else the reason it is not."""


def create_admin_app(metrics: Metrics, readiness: Readiness) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        reason = readiness()
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def metrics_handler(request: web.Request) -> web.Response:
        body = metrics.exposition()
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
