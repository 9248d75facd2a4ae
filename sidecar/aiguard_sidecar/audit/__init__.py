"""Audit events: built from each decided request, chained, spooled durably, shipped.

::

    pipeline ── RequestRecord ──► sink.AuditService.emit          (before the response ends)
                                   │  events.draft    (on the loop: metadata, no hashing)
                                   ▼
                                 spool.Spool.append ──► writer thread: seal (hashes, chain),
                                   │                    group commit: write + fsync, resolve
                                   ▼
                                 spool segments  ◄── shipper.Shipper: POST /v1/events,
                                                     cursor moves on the collector's ack

The event schema and chain verification live in :mod:`aiguard_api.audit`; the metrics in
:mod:`aiguard_sidecar.metrics` (``aiguard_audit_*``).
"""
