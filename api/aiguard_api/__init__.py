"""aiguard's contract: the types both the operator and the sidecar rely on.

Layers (checked by ``tests/unit/test_layers.py``)::

    aiguard_api        pydantic models, constants, the compiled sidecar config, audit schema
      ▲        ▲
      │        └── aiguard_sidecar   (aiohttp; never imports kopf or the operator)
      └─────────── aiguard_operator  (kopf; never imports aiohttp handlers of the sidecar)

This package imports neither kopf, aiohttp nor presidio.
"""

from aiguard_api.constants import API_GROUP, API_VERSION

__all__ = ["API_GROUP", "API_VERSION", "__version__"]

__version__ = "0.1.0"
