"""The hostile-HTTP tests run a real sidecar in front of the provider stand-in: the fixtures
are the end-to-end tests' own (``tests/sidecar/conftest.py``), loop watchdog included."""

from tests.sidecar.conftest import (  # noqa: F401 (fixtures)
    backup,
    ca,
    no_blocking,
    secrets,
    sidecar,
    start_sidecar,
    upstream,
)
