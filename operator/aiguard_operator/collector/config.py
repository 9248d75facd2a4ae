"""The collector's settings, read from the environment in one place (:func:`from_env`).

=========================================  =============================================
variable                                   meaning (default)
=========================================  =============================================
AIGUARD_COLLECTOR                          serve the collector in this process (false;
                                           the chart sets true)
AIGUARD_COLLECTOR_ADDR                     listen address (127.0.0.1; the chart: 0.0.0.0)
AIGUARD_COLLECTOR_PORT                     listen port (15093)
AIGUARD_COLLECTOR_DB                       SQLite file (/var/lib/aiguard/collector/
                                           audit.db; a PersistentVolume in a cluster)
AIGUARD_COLLECTOR_POSTGRES_DSN             use PostgreSQL instead (postgresql://...)
AIGUARD_COLLECTOR_CERT_DIR                 serve HTTPS with tls.crt and tls.key from this
                                           directory (unset: plain HTTP, for local runs)
AIGUARD_COLLECTOR_AUDIENCE                 token audience sidecars must present
                                           (aiguard.dev/collector)
AIGUARD_COLLECTOR_QUERY_AUTH               rbac: readers need get on aipolicies/audit;
                                           none: no check (local development only)
AIGUARD_COLLECTOR_PURGE_INTERVAL_SECONDS   how often retention runs (3600)
AIGUARD_COLLECTOR_TOKEN_CACHE_SECONDS      TokenReview results are reused this long (30)
AIGUARD_COLLECTOR_CAPTURE_KEY_FILE         base64 AES-256 keys, one per line, the first
                                           encrypting (see collector/capture.py); unset:
                                           captured content is dropped, never stored
=========================================  =============================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from aiguard_api import audit

DEFAULT_DB: Final = Path("/var/lib/aiguard/collector/audit.db")
QueryAuth = Literal["rbac", "none"]


class CollectorSettingsError(ValueError):
    """A variable has a value the collector cannot use (the message names it)."""


@dataclass(frozen=True, slots=True)
class CollectorSettings:
    enabled: bool = False
    addr: str = "127.0.0.1"
    port: int = audit.COLLECTOR_PORT
    """0: any free port (tests)."""
    db: Path = DEFAULT_DB
    postgres_dsn: str | None = None
    cert_dir: Path | None = None
    cert_check_interval: float = 30.0
    """Seconds between checks of ``cert_dir`` for a renewed certificate (reloaded in place)."""
    audience: str = audit.COLLECTOR_AUDIENCE
    query_auth: QueryAuth = "rbac"
    purge_interval: float = 3600.0
    """Seconds between retention runs; the first runs one interval after the start."""
    token_cache_seconds: float = 30.0
    capture_key_file: Path | None = None


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CollectorSettingsError(f"{name}={raw!r}: expected a number") from None
    if not lo <= value <= hi:
        raise CollectorSettingsError(f"{name}={raw!r}: expected {lo:g} to {hi:g}")
    return value


def from_env(env: Mapping[str, str] | None = None) -> CollectorSettings:
    env = os.environ if env is None else env
    enabled = env.get("AIGUARD_COLLECTOR", "").strip().lower() in ("1", "true", "yes", "on")
    auth = env.get("AIGUARD_COLLECTOR_QUERY_AUTH", "rbac").strip().lower() or "rbac"
    if auth not in ("rbac", "none"):
        raise CollectorSettingsError(f"AIGUARD_COLLECTOR_QUERY_AUTH={auth!r}: rbac or none")
    cert_dir = env.get("AIGUARD_COLLECTOR_CERT_DIR", "").strip()
    return CollectorSettings(
        enabled=enabled,
        addr=env.get("AIGUARD_COLLECTOR_ADDR", "").strip() or "127.0.0.1",
        port=int(_float(env, "AIGUARD_COLLECTOR_PORT", audit.COLLECTOR_PORT, 0, 65535)),
        db=Path(env.get("AIGUARD_COLLECTOR_DB", "").strip() or DEFAULT_DB),
        postgres_dsn=env.get("AIGUARD_COLLECTOR_POSTGRES_DSN", "").strip() or None,
        cert_dir=Path(cert_dir) if cert_dir else None,
        cert_check_interval=_float(env, "AIGUARD_COLLECTOR_CERT_CHECK_SECONDS", 30, 0.1, 3600),
        audience=env.get("AIGUARD_COLLECTOR_AUDIENCE", "").strip() or audit.COLLECTOR_AUDIENCE,
        query_auth="none" if auth == "none" else "rbac",
        purge_interval=_float(env, "AIGUARD_COLLECTOR_PURGE_INTERVAL_SECONDS", 3600, 1, 86400),
        token_cache_seconds=_float(env, "AIGUARD_COLLECTOR_TOKEN_CACHE_SECONDS", 30, 0, 3600),
        capture_key_file=Path(key)
        if (key := env.get("AIGUARD_COLLECTOR_CAPTURE_KEY_FILE", "").strip())
        else None,
    )
