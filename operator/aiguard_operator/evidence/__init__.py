"""The SOC 2 evidence bundle: ``kubectl aiguard evidence --from DATE --to DATE --out DIR``.

::

    collect   I/O: the cluster (AIPolicies, AIIncidents, RBAC, API server version) through
              :mod:`aiguard_operator.kube`, the collector's HTTP API (events, chains with
              verification, purge records) → :class:`build.Sources`
    build     pure: Sources + Provenance → :class:`build.Report` (every number, every status
              with the rule that decided it)
    render_*  pure: Report → index.html (self-contained), report.md, evidence.json, CSVs,
              dataflow.svg
    bundle    writes the files and manifest.json (provenance + SHA-256 of every file);
              :func:`bundle.verify` checks a bundle later (``--verify DIR``)

Evidence is sample-free: counts, hashes, decisions, identities and policy names; never a
prompt, a response, a decision reason or a finding's text (audit events carry none either).
"""
