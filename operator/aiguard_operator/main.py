"""``aiguard-operator``: the console script. Reads every setting from the environment (see
:mod:`aiguard_operator.settings`) and runs the kopf handlers until SIGINT or SIGTERM.

    KUBECONFIG=.local/kubeconfig AIGUARD_PEERING=standalone aiguard-operator

In a cluster it runs with the pod's ServiceAccount and the settings the chart puts in its
environment. For local development use ``make operator`` (``tests/harness/devoperator.py``),
which also installs the CRDs and generates the webhook certificates.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from aiguard_operator import settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="aiguard-operator",
        description="Reconcile AIPolicy objects into compiled sidecar configs and validate "
        "them at admission. Configured only through environment variables:",
        epilog=settings.__doc__.split("\n\n", 2)[2] if settings.__doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        cfg = settings.from_env()
    except settings.SettingsError as e:
        print(f"aiguard-operator: {e}", file=sys.stderr)
        return 2
    # Imported here so that `--help` and configuration errors do not pay for importing kopf.
    from aiguard_operator import handlers

    handlers.run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
