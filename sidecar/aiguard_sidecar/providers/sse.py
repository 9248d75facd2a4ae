"""Server-sent events, incrementally: split a byte stream into events without buffering it.

Upstream chunks arrive at arbitrary boundaries. :class:`SSESplitter` returns every complete
event block (``...\\n\\n``) as soon as its last byte arrives and keeps the incomplete tail;
:func:`parse_block` reads the ``event:`` and ``data:`` fields of one block.
CRLF line endings are normalised to LF (clients accept both).
"""

from __future__ import annotations

from typing import Final

_SEP: Final = b"\n\n"
MAX_EVENT_BYTES: Final = 16 << 20
"""An event larger than this is a broken or hostile upstream."""


class SSEError(ValueError):
    pass


class SSESplitter:
    __slots__ = ("_buf", "_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the last chunk ended in CR: it may be half of a CRLF

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete event blocks (with what was held back before), each ending in a blank line."""
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if b"\r" in chunk:
            if chunk[-1:] == b"\r":
                chunk = chunk[:-1]
                self._cr = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(_SEP)
        if end < 0:
            if len(buf) > MAX_EVENT_BYTES:
                raise SSEError("server-sent event exceeds 16 MiB")
            self._buf = buf
            return []
        end += 2
        self._buf = buf[end:]
        complete = buf[:end]
        # Blank lines between events carry nothing; they are dropped so that the blocks do not
        # depend on where the chunks were cut (found by tests/fuzz: "}\r\r\n\n" cut before or
        # after its last LF gave a block with or without a leading newline).
        if complete.find(_SEP) == end - 2:
            block = complete.lstrip(b"\n") if complete[:1] == b"\n" else complete
            return [block] if len(block) > 2 else []
        blocks = complete.split(_SEP)
        blocks.pop()  # what follows the last separator: empty, or one blank line
        return [b.lstrip(b"\n") + _SEP for b in blocks if b.strip(b"\n")]

    @property
    def pending(self) -> bytes:
        """Bytes of an event that has not ended (a truncated stream leaves them here)."""
        return (self._buf + (b"\n" if self._cr else b"")).lstrip(b"\n")


def parse_block(block: bytes) -> tuple[str | None, str | None]:
    """``(event name, data)`` of one block; data lines are joined by ``\\n``; comments skipped.

    Returns ``(None, None)`` for a block with neither field (a comment or keep-alive).
    """
    if block[:6] == b"data: " and block.find(b"\n") == len(block) - 2 and block[-1:] == b"\n":
        # one ``data: `` line and the blank one (OpenAI's chunks): the line is the data. Its
        # ends are ASCII, so decoding the slice gives the same text as decoding the block.
        return None, block[6:-2].decode("utf-8", "replace")
    return _parse_lines(block)


def _parse_lines(block: bytes) -> tuple[str | None, str | None]:
    name: str | None = None
    data: list[str] = []
    for line in block.decode("utf-8", "replace").split("\n"):
        if not line or line[0] == ":":
            continue
        fname, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if fname == "data":
            data.append(value)
        elif fname == "event":
            name = value
    return name, ("\n".join(data) if data else None)
