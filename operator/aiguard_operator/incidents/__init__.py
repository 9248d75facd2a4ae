"""Automatic incidents: security events derived from stored audit events, aggregated into
``AIIncident`` objects, with Kubernetes Events and optional webhook notifications
(docs/incidents.md).

Modules:

- :mod:`.derive`: pure functions, audit event → security signals, keys, counts, names;
- :mod:`.manager`: the collector's hook, a bounded queue and a worker that recounts each
  touched window from the store and creates or updates the ``AIIncident``;
- :mod:`.notify`: Slack, PagerDuty Events v2 and generic JSON webhooks, retried;
- :mod:`.transitions`: state changes (ack, resolve, approve, deny), recorded with the actor;
- :mod:`.cli`: ``kubectl aiguard incidents | ack | resolve``.
"""
