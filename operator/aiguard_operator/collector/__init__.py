"""The audit collector, served by the operator process: ingest, storage, queries, retention.

::

    sidecar spool ──POST /v1/events (Bearer: projected SA token)──► server.post_events
                                                    auth.Authenticator (TokenReview, cached)
                                                    store.Store.insert (idempotent by id)
    kubectl aiguard verify-audit ──GET /v1/events, /v1/chains/{instance}, /v1/purges──►
                                                    auth (TokenReview + SubjectAccessReview)
    retention.run_purge (every AIGUARD_COLLECTOR_PURGE_INTERVAL_SECONDS) ──► store.purge
                                                    + a PurgeRecord per policy and run

Modules: ``config`` (environment), ``auth``, ``store`` (interface + SQLite), ``postgres``,
``retention``, ``server`` (HTTP API, :class:`~.server.CollectorServer`, operator wiring).

Example session (``curl``; the token from ``kubectl create token``)::

    $ curl -s -H "Authorization: Bearer $TOKEN" \\
        "$COLLECTOR/v1/events?namespace=team-a&from=2025-06-01T00:00:00Z&limit=2"
    {"events":[{"aiguard.decisions":[...],...,"sequence":1,...}, ...],"next":"WzE3NDg..."}
    $ curl -s -H "Authorization: Bearer $TOKEN" "$COLLECTOR/v1/chains/team-a%2Fchatbot-5d9c%2F8c1f"
    {"instance":"team-a/chatbot-5d9c/8c1f","events":1200,"head":{"sequence":1200,...},
     "start":null,"verification":{"ok":true,"problems":[]},...}
"""
