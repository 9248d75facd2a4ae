"""Captured content at the collector: bound to its event's hash, AES-256-GCM at rest, bound to
its event, namespace and policy, keys rotated without losing what is stored."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from aiguard_api import audit
from aiguard_operator.collector import capture
from aiguard_operator.collector.capture import CaptureCipher, CaptureError, CaptureKeyError
from tests.harness.auditdata import chain

CAPTURE: dict[str, Any] = {
    "input": [["user", "Email <EMAIL_ADDRESS> about the order"]],
    "output": [["assistant", "Done."]],
    "masked": {"EMAIL_ADDRESS": 1},
}


def captured_event() -> dict[str, Any]:
    """An event as a sidecar ships it with a capture: hashed without it, carrying it."""
    (event,) = chain(1)
    body = {k: v for k, v in event.items() if k != audit.HASH}
    body[audit.CAPTURE_HASH] = audit.capture_hash(CAPTURE)
    body[audit.CAPTURE] = CAPTURE
    _, line = audit.hash_and_line(body)
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def test_the_capture_is_outside_the_chain_but_bound_to_it() -> None:
    event = captured_event()
    assert audit.verify_chain([event]) == []
    stripped = dict(event)
    assert capture.check(stripped) == CAPTURE
    assert audit.CAPTURE not in stripped
    # Stored without the capture, the event still verifies: purging captures keeps chains.
    assert audit.verify_chain([stripped]) == []
    # The hash of the capture is part of the hashed event: swapping it breaks the chain.
    forged = {**stripped, audit.CAPTURE_HASH: audit.capture_hash({"input": []})}
    assert audit.verify_chain([forged]) != []


def test_a_capture_that_does_not_match_its_hash_is_refused() -> None:
    event = captured_event()
    event[audit.CAPTURE] = {**CAPTURE, "input": [["user", "something else"]]}
    with pytest.raises(CaptureError, match="does not match"):
        capture.check(event)
    unvouched = captured_event()
    del unvouched[audit.CAPTURE_HASH]
    with pytest.raises(CaptureError, match="without"):
        capture.check(unvouched)


def test_sealed_captures_open_only_for_their_own_event() -> None:
    cipher = CaptureCipher([os.urandom(32)])
    where = {"event_id": "e1", "namespace": "team-a", "policy": "p"}
    sealed = cipher.seal(CAPTURE, **where)
    assert b"EMAIL_ADDRESS" not in sealed.ciphertext
    assert cipher.open(sealed, **where) == CAPTURE
    for other in ({"event_id": "e2"}, {"namespace": "team-b"}, {"policy": "q"}):
        with pytest.raises(CaptureError, match="altered or moved"):
            cipher.open(sealed, **{**where, **other})
    flipped = dataclasses.replace(
        sealed, ciphertext=bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    )
    with pytest.raises(CaptureError, match="altered"):
        cipher.open(flipped, **where)


def test_keys_rotate_by_putting_the_new_one_first(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    key_file = tmp_path / "keys"
    key_file.write_text(base64.b64encode(old).decode() + "\n")
    where = {"event_id": "e1", "namespace": "team-a", "policy": "p"}
    before = CaptureCipher.from_file(key_file).seal(CAPTURE, **where)

    key_file.write_text(
        f"# rotated\n{base64.b64encode(new).decode()}\n{base64.b64encode(old).decode()}\n"
    )
    rotated = CaptureCipher.from_file(key_file)
    assert rotated.key_id == capture.key_id(new)
    assert rotated.open(before, **where) == CAPTURE  # the old key still decrypts
    assert rotated.seal(CAPTURE, **where).key_id == capture.key_id(new)

    key_file.write_text(base64.b64encode(new).decode() + "\n")
    with pytest.raises(CaptureError, match="no longer in the key file"):
        CaptureCipher.from_file(key_file).open(before, **where)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", "holds no key"),
        ("not base64!\n", "line 1: not base64"),
        (base64.b64encode(b"short").decode(), "must be 32 bytes"),
    ],
)
def test_bad_key_files_are_refused_with_the_reason(
    tmp_path: Path, content: str, words: str
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(content)
    with pytest.raises(CaptureKeyError, match=words):
        CaptureCipher.from_file(key_file)
    with pytest.raises(CaptureKeyError, match="No such file"):
        CaptureCipher.from_file(tmp_path / "missing")
