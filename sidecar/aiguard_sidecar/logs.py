"""Structured JSON logs: one object per line on stderr.

Call sites pass structured data as ``extra={"fields": {...}}``; the formatter merges it into
the line. What goes in is metadata only: paths, names, ids, counts, decisions. Keys, tokens and
prompt or response content never do (the pipeline and the audit record keep content out of
``fields`` by construction).

Writing to stderr can block (a slow log pipe), so the event loop only puts records on a queue;
a :class:`logging.handlers.QueueListener` thread formats and writes them.
"""

from __future__ import annotations

import copy
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, Final

_RESERVED: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "fields" and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class _QueueHandler(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Keep the record as it is (the listener's JsonFormatter needs ``fields`` and
        # ``exc_info``); only resolve the message so ``args`` need not cross the thread.
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        return record


def setup(level: str = "info") -> logging.handlers.QueueListener:
    """Route every logger through a queue to one JSON handler on stderr. Stop the returned
    listener at exit to flush what is queued."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(q, handler, respect_handler_level=False)
    root = logging.getLogger()
    root.handlers[:] = [_QueueHandler(q)]
    root.setLevel(level.upper())
    # aiohttp's access log is off (the request record is the access log).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    listener.start()
    return listener
