"""The aiguard operator: reconciles AIPolicy objects into compiled sidecar configs.

Layers (only :mod:`aiguard_operator.handlers` imports kopf)::

    main          console script `aiguard-operator`: settings from the environment → kopf.run
    handlers      kopf handlers, thin: fetch what the cores need, call them, write the result
      │
      ├── validation   checks beyond the schema (Secrets, selectors, portable regexes)
      ├── configmaps   AIPolicy + compiled config → ConfigMap manifest
      ├── status       conditions with correct transition times
      ├── injection    sidecar injection: decide, plan, mutate a pod
      ├── coverage     governed / injected pods per policy (injection's rules)
      └── certs        webhook CA + serving certificate, rotation
    kube          a small asyncio Kubernetes API client (kubeconfig or in-cluster)
    cli           console script `kubectl-aiguard`
    settings      every setting of the operator, read from the environment in one place

The pure cores import neither kopf nor aiohttp; they take plain data and return plain data.
"""
