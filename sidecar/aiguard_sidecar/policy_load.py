"""The policy file validated in a short-lived child process; the sidecar reads the result as
plain data and never loads pydantic.

pydantic in a process costs ~8.5 MB of resident memory: ~3.7 MB to import it (its Rust core's
relocated pages among them), ~3.5 MB for the model machinery a class definition needs, ~1.3 MB
for the policy's model classes, and 3.5 MB more once it has validated (the validators and
serializers it builds). The sidecar validates only when the policy file changes. So
:func:`parse` validates in a child and the sidecar keeps :mod:`aiguard_api.view`, the compiled
config as frozen dataclasses (generated from the models: same names, fields and types) that
import no pydantic (``benchmarks.sidecar_proxy rss``: idle RSS 65.3 → 51.8 MB with the other
changes of the day):

* a child (the same interpreter with ``-B``: nothing is written to disk, the container's root
  file system is read-only; the same environment, so the same packages) reads the file's bytes,
  its name and the secrets directory from a pipe, runs
  :func:`aiguard_api.config.parse_config` (every check and the content hash), turns the
  validated config into its view (:func:`aiguard_api.config.to_view`) and writes it back
  pickled, or writes the :class:`ConfigError`'s message;
* this process unpickles it: dataclasses of :mod:`aiguard_api.view` and enums of
  :mod:`aiguard_api.policy_types`, nothing else (the type is checked). The bytes come from our
  own child over its private pipe; nothing else can write to that pipe;
* an invalid policy is refused with the child's message, which is the message an in-process
  validation gives (``tests/unit/test_policy_load.py``);
* a child that cannot run (no interpreter, killed, over :data:`CHILD_TIMEOUT`, a reply that is
  not a config view) leaves the validation to this process, with a warning: the policy loads as
  before, at the old memory cost (:func:`parse_here`, which tests use directly).

Blocking (a child takes ~0.3 s): the policy store calls :func:`parse` in a worker thread;
``main`` calls it once before the event loop starts. The last result is kept (keyed by the
file's SHA-256, its name and the secrets directory), so the store's first load of the file
``main`` has just read does not start a second child.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import subprocess
import sys
import threading
from typing import Any, Final

from aiguard_api.errors import ConfigError
from aiguard_api.view import SidecarConfig

log = logging.getLogger("aiguard.sidecar.policy")

CHILD_TIMEOUT: Final = 60.0  # seconds; the largest schema-valid policy validates in ~1
_OK: Final = b"ok\n"
_ERROR: Final = b"error\n"


class ChildError(RuntimeError):
    """The child could not give an answer (as opposed to: the policy is invalid)."""


def child_command() -> list[str]:
    """The child's command line (tests replace it to make the child fail)."""
    return [sys.executable, "-B", "-m", "aiguard_sidecar.policy_load"]


_stats = {"child": 0, "in_process": 0, "cached": 0}
_last: tuple[tuple[bytes, str, str | None], SidecarConfig] | None = None
_lock = threading.Lock()


def stats() -> dict[str, int]:
    """How many validations ran in a child, in this process, or were the kept result."""
    with _lock:
        return dict(_stats)


def decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8: {e}") from e


def parse(data: bytes, source: str, secrets_dir: str | None = None) -> SidecarConfig:
    """The validated config of a policy file's bytes (see the module docstring).

    Raises :class:`ConfigError` for a policy that cannot be used. Blocking."""
    global _last
    key = (hashlib.sha256(data).digest(), source, secrets_dir)
    with _lock:
        if _last is not None and _last[0] == key:
            _stats["cached"] += 1
            return _last[1]
    text = decode(data, source)
    try:
        cfg = _in_child(text, source, secrets_dir)
        counter = "child"
    except ChildError as e:
        log.warning(
            "policy validation child failed; validating in this process",
            extra={"fields": {"error": str(e)}},
        )
        cfg = _validate(text, source, secrets_dir)
        counter = "in_process"
    with _lock:
        _stats[counter] += 1
        _last = (key, cfg)
    return cfg


def _validate(text: str, source: str, secrets_dir: str | None) -> SidecarConfig:
    """Validate here: loads pydantic and builds its validators in this process."""
    from aiguard_api.config import parse_config, to_view

    return to_view(parse_config(text, source=source, secrets_dir=secrets_dir))


def parse_here(data: bytes, source: str, secrets_dir: str | None = None) -> SidecarConfig:
    """:func:`parse` without a child (tests that start many sidecars in one process)."""
    return _validate(decode(data, source), source, secrets_dir)


def _in_child(text: str, source: str, secrets_dir: str | None) -> SidecarConfig:
    request = json.dumps({"text": text, "source": source, "secretsDir": secrets_dir})
    try:
        proc = subprocess.run(
            child_command(),
            input=request.encode(),
            capture_output=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise ChildError(f"cannot run the child: {e}") from e
    out = proc.stdout
    if proc.returncode == 0 and out.startswith(_ERROR):
        raise ConfigError(out[len(_ERROR) :].decode("utf-8", "replace"))
    if proc.returncode != 0 or not out.startswith(_OK):
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise ChildError(f"exit status {proc.returncode}: {' '.join(tail) or 'no reply'}")
    try:
        # Our own child's reply over its private pipe (module docstring).
        cfg = pickle.loads(out[len(_OK) :])  # noqa: S301
    except Exception as e:  # a reply that does not unpickle is the child's failure
        raise ChildError(f"unreadable reply: {type(e).__name__}: {e}") from e
    if not isinstance(cfg, SidecarConfig):
        raise ChildError(f"the reply is a {type(cfg).__name__}, not a SidecarConfig")
    return cfg


def _child() -> int:
    """The child's side: one request on stdin, one reply on stdout."""
    req: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    out = sys.stdout.buffer
    try:
        cfg = _validate(req["text"], req["source"], req["secretsDir"])
    except ConfigError as e:
        out.write(_ERROR + str(e).encode())
    else:
        out.write(_OK + pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child())
