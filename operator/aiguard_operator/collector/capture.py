"""Captured content, encrypted at rest (``spec.audit.contentCapture: redacted``).

A sidecar sends the redacted text of a request beside its audit event (``aiguard.capture``,
outside the event's hash; the event carries ``aiguard.capture.hash``). The collector checks
that hash, encrypts the capture with AES-256-GCM and stores only the ciphertext, apart from the
event, so retention can purge captures sooner (``captureRetentionDays``) without touching the
hash chain.

Keys: ``AIGUARD_COLLECTOR_CAPTURE_KEY_FILE`` holds one or more base64-encoded 32-byte keys,
one per line (the chart mounts a Secret generated once and kept across upgrades). The first
key encrypts; every key decrypts, so a key is rotated by putting the new one first and
removing the old one after ``captureRetentionDays``. A key is named by its id (the first 16
hex digits of its SHA-256), never by its bytes. The associated data binds a ciphertext to its
event id, namespace and policy: a ciphertext copied to another row does not decrypt.

Without a key file the collector keeps no captured content at all (never plaintext): the
events are stored, each dropped capture is counted and logged, and the event's
``aiguard.capture.hash`` still says a capture was made.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aiguard_api import audit

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12


class CaptureKeyError(ValueError):
    """The key file is missing, unreadable or holds no valid key (the message says which)."""


class CaptureError(ValueError):
    """A capture that cannot be stored or read (hash mismatch, unknown key, tampering)."""


@dataclass(frozen=True, slots=True)
class Sealed:
    """One encrypted capture, as stored."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def _aad(event_id: str, namespace: str, policy: str) -> bytes:
    return f"aiguard-capture/v1|{event_id}|{namespace}|{policy}".encode()


class CaptureCipher:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise CaptureKeyError("no capture key")
        for k in keys:
            if len(k) != KEY_BYTES:
                raise CaptureKeyError(f"a capture key must be {KEY_BYTES} bytes, not {len(k)}")
        self._current = keys[0]
        self._by_id = {key_id(k): AESGCM(k) for k in keys}

    @classmethod
    def from_file(cls, path: Path) -> CaptureCipher:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise CaptureKeyError(f"capture key file {path}: {e}") from e
        keys: list[bytes] = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                keys.append(base64.b64decode(line, validate=True))
            except (binascii.Error, ValueError):
                raise CaptureKeyError(f"capture key file {path} line {n}: not base64") from None
        if not keys:
            raise CaptureKeyError(f"capture key file {path} holds no key")
        return cls(keys)

    @property
    def key_id(self) -> str:
        return key_id(self._current)

    def seal(self, capture: Any, *, event_id: str, namespace: str, policy: str) -> Sealed:
        nonce = os.urandom(NONCE_BYTES)
        data = audit.canonical(capture)
        box = self._by_id[self.key_id]
        return Sealed(
            self.key_id, nonce, box.encrypt(nonce, data, _aad(event_id, namespace, policy))
        )

    def open(self, sealed: Sealed, *, event_id: str, namespace: str, policy: str) -> Any:
        box = self._by_id.get(sealed.key_id)
        if box is None:
            raise CaptureError(
                f"capture of event {event_id} is encrypted with key {sealed.key_id}, which is "
                "no longer in the key file"
            )
        try:
            data = box.decrypt(sealed.nonce, sealed.ciphertext, _aad(event_id, namespace, policy))
        except InvalidTag:
            raise CaptureError(
                f"capture of event {event_id} does not decrypt: altered or moved"
            ) from None
        return json.loads(data)


def check(event: dict[str, Any]) -> Any | None:
    """Take the capture out of ``event`` (mutates it); None when it carries none.

    CaptureError when the capture does not match the event's ``aiguard.capture.hash``, or
    arrives without one (it would be content nothing in the chain vouches for).
    """
    if audit.CAPTURE not in event:
        return None
    capture = event.pop(audit.CAPTURE)
    declared = event.get(audit.CAPTURE_HASH)
    if not isinstance(declared, str):
        raise CaptureError(f"{audit.CAPTURE} without {audit.CAPTURE_HASH}")
    if audit.capture_hash(capture) != declared:
        raise CaptureError(f"{audit.CAPTURE} does not match {audit.CAPTURE_HASH}")
    return capture
