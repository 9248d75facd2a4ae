"""The operator starts the collector from its environment (``AIGUARD_COLLECTOR*``) and stops
it at cleanup; the settings parser names a bad variable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aiguard_operator import kube
from aiguard_operator.collector import config
from aiguard_operator.collector.server import MEMO_KEY, CollectorServer, start_in, stop_in


async def test_collector_starts_only_when_enabled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = kube.Client(kube.Credentials(server="https://127.0.0.1:1"))
    memo: dict[str, Any] = {}
    monkeypatch.delenv("AIGUARD_COLLECTOR", raising=False)
    await start_in(memo, api)
    assert memo == {}

    monkeypatch.setenv("AIGUARD_COLLECTOR", "true")
    monkeypatch.setenv("AIGUARD_COLLECTOR_PORT", "0")
    monkeypatch.setenv("AIGUARD_COLLECTOR_DB", str(tmp_path / "db" / "audit.db"))
    await start_in(memo, api)
    server = memo[MEMO_KEY]
    assert isinstance(server, CollectorServer)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as r:
            assert (r.status, await r.text()) == (200, "ok")
        async with aiohttp.ClientSession() as http, http.get(f"{server.url}/v1/events") as r:
            assert r.status == 401  # a reader must present a token
    finally:
        await stop_in(memo)
        await api.close()
    assert (tmp_path / "db" / "audit.db").exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AIGUARD_COLLECTOR_PORT": "70000"}, "AIGUARD_COLLECTOR_PORT"),
        ({"AIGUARD_COLLECTOR_QUERY_AUTH": "maybe"}, "AIGUARD_COLLECTOR_QUERY_AUTH"),
        ({"AIGUARD_COLLECTOR_PURGE_INTERVAL_SECONDS": "soon"}, "PURGE_INTERVAL"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.CollectorSettingsError, match=message):
        config.from_env(env)


def test_defaults() -> None:
    s = config.from_env({})
    assert (s.enabled, s.addr, s.port, s.query_auth) == (False, "127.0.0.1", 15093, "rbac")
    assert s.postgres_dsn is None
