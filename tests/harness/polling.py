"""Waiting on a condition in async tests: poll, never a blind sleep, fail saying what for.

    result = await until(check, "the AIPolicy to be Ready", within=20)

``check`` is an async callable; the first truthy value it returns is the result. On timeout
the test fails with ``what`` and, if given, ``detail()`` (a log tail, the last state seen).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


async def until(
    check: Callable[[], Awaitable[Any]],
    what: str,
    within: float = 30.0,
    *,
    every: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> Any:
    deadline = time.monotonic() + within
    while not (result := await check()):
        if time.monotonic() > deadline:
            more = f"\n{detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {within} s waiting for {what}{more}")
        await asyncio.sleep(every)
    return result
