"""The aiguard operator: reconciles AIPolicy objects into compiled sidecar configs.

Layers (only :mod:`aiguard_operator.handlers` imports kopf)::

    main          console script `aiguard-operator`: settings from the environment → kopf.run
    handlers      kopf handlers, thin: fetch what the cores need, call them, write the result
      │
      ├── validation   checks beyond the schema (Secrets, selectors, portable regexes)
      ├── configmaps   AIPolicy + compiled config → ConfigMap manifest
      ├── status       conditions with correct transition times
      ├── admission    pod webhooks: their selectors; one pod → patch, warnings, Event, metric
      │    └── injection    sidecar injection: decide, plan, mutate a pod
      ├── coverage     governed / injected pods per policy (injection's rules)
      ├── certs        webhook CA + serving certificate, rotation
      ├── events       Kubernetes Events, aggregated (a rollout makes one Event)
      └── metrics      every Prometheus metric of the operator, and /metrics
    kube          a small asyncio Kubernetes API client (kubeconfig or in-cluster)
    cli           console script `kubectl-aiguard`
    settings      every setting of the operator, read from the environment in one place

The pure cores import neither kopf nor aiohttp; they take plain data and return plain data
(``events`` and ``metrics`` do their I/O through ``kube`` and aiohttp, never kopf).
"""
