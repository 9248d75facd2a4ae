"""Key custody and header handling: what the provider receives from the client's request, and
how mounted Secret files are read and refreshed."""

from __future__ import annotations

from pathlib import Path

import pytest
from multidict import CIMultiDict

from aiguard_sidecar.upstream import SecretFiles, forward_headers, key_text, response_headers


def test_client_credentials_identity_and_hop_by_hop_headers_are_dropped() -> None:
    client = CIMultiDict(
        {
            "Authorization": "Bearer aiguard-placeholder",
            "X-Api-Key": "placeholder",
            "api-key": "placeholder",
            "Cookie": "a=b",
            "Host": "127.0.0.1:15080",
            "Content-Length": "12",
            "Connection": "keep-alive, X-Custom-Hop",
            "X-Custom-Hop": "1",
            "Transfer-Encoding": "chunked",
            "Accept-Encoding": "br",
            "OpenAI-Organization": "org-app",
            "X-Forwarded-For": "10.0.0.1",
            "X-Aiguard-User": "alice",
            "X-User-Token": "jwt",
            "Content-Type": "application/json",
            "User-Agent": "OpenAI/Python 3.60.0",
            "X-Stainless-Lang": "python",
            "anthropic-beta": "tools-2024",
        }
    )
    out = forward_headers(
        client, strip=frozenset({"x-user-token"}), extra={"anthropic-version": "2023-06-01"}
    )
    assert out == {
        "content-type": "application/json",
        "user-agent": "OpenAI/Python 3.60.0",
        "x-stainless-lang": "python",
        "anthropic-beta": "tools-2024",
        "anthropic-version": "2023-06-01",
    }


def test_the_clients_own_version_header_wins_over_the_default() -> None:
    out = forward_headers(
        {"anthropic-version": "2026-01-01"},
        strip=frozenset(),
        extra={"anthropic-version": "2023-06-01"},
    )
    assert out == {"anthropic-version": "2026-01-01"}


def test_response_headers_relayed() -> None:
    upstream = CIMultiDict(
        {
            "Content-Type": "text/event-stream",
            "Content-Encoding": "gzip",
            "Content-Length": "10",
            "Set-Cookie": "__cf_bm=x",
            "x-request-id": "req_1",
            "Retry-After": "3",
            "x-ratelimit-remaining-requests": "9",
            "Server": "cloudflare",
        }
    )
    assert response_headers(upstream) == {
        "Content-Type": "text/event-stream",
        "x-request-id": "req_1",
        "Retry-After": "3",
        "x-ratelimit-remaining-requests": "9",
    }


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (b"sk-abc\n", "sk-abc"),
        (b"  sk-abc  ", "sk-abc"),
        (b"", None),
        (b"\n", None),
        (b"sk-a\r\nX-Injected: 1", None),
        (b"\xff\xfe", None),
    ],
)
def test_key_text(data: bytes, key: str | None) -> None:
    assert key_text(data) == key


async def test_secret_files_follow_a_kubernetes_symlink_swap(tmp_path: Path) -> None:
    reloads: list[bool] = []
    changed: list[tuple[Path, bytes | None]] = []
    files = SecretFiles(on_reload=reloads.append)

    async def listener(path: Path, data: bytes | None) -> None:
        changed.append((path, data))

    files.on_change(listener)
    (tmp_path / "..v1").mkdir()
    (tmp_path / "..v1" / "api-key").write_text("one")
    (tmp_path / "..data").symlink_to("..v1")
    key = tmp_path / "api-key"
    key.symlink_to("..data/api-key")
    missing = tmp_path / "other" / "api-key"

    await files.watch([key, missing])
    assert files.get(key) == b"one"
    assert files.get(missing) is None
    assert files.error(missing)
    await files.refresh()
    assert reloads == []
    assert changed == []

    (tmp_path / "..v2").mkdir()
    (tmp_path / "..v2" / "api-key").write_text("two")
    (tmp_path / "..tmp").symlink_to("..v2")
    (tmp_path / "..tmp").replace(tmp_path / "..data")
    await files.refresh()
    assert files.get(key) == b"two"
    assert reloads == [True]
    assert changed == [(key, b"two")]

    await files.watch([key])  # the policy no longer names the other Secret
    assert files.error(missing) == "not watched"
