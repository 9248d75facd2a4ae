"""aiguard's enforcement sidecar: an LLM egress proxy that runs beside the app in its pod.

One request's path (``pipeline.py``)::

    providers/  parse the body once → Exchange (provider-neutral, text segments with locators)
    identity    workload + verified end user        (identity.py)
    access      model/operation RBAC, default deny  (access.py)
    ratelimit   requests, tokens, concurrency       (ratelimit.py)
    guardrails  input checks on the segments        (hooks.py → guardrails/)
    routing     model glob → targets, breakers, retry budget, failover   (routing.py)
    upstream    key custody, TLS ≥ 1.3, timeouts    (upstream.py)
    relay       JSON or SSE event by event, output hooks, usage accounting
    record      RequestRecord → AuditSink, metrics  (records.py, metrics.py)

Process wiring: ``main.py`` (CLI, logging, signals) → ``app.py`` (aiohttp application,
shared resources) → ``policy_store.py`` (hot reload → :class:`runtime.Runtime` snapshots),
``admin.py`` (``/metrics``, ``/healthz``, ``/readyz``).

Layering: this package imports ``aiguard_api`` and never the operator.
"""

__all__: list[str] = []
