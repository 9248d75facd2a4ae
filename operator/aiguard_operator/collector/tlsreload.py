"""The collector's serving certificate, reloaded when its files change.

cert-manager (or the chart's own Secret) renews ``tls.crt``/``tls.key`` in place: the kubelet
swaps the mounted Secret's files, and a collector that read them once would serve the old
certificate until it expires, after which every sidecar's shipping fails and its spool fills.
:class:`ServingCertificate` keeps one :class:`ssl.SSLContext` for the listener and, when the
files' identity (inode, size, mtime) changes, loads the new pair into that same context:
handshakes after the reload present the new certificate, open connections are untouched. A
pair that does not load (half-written, key not matching) is reported and the previous one is
kept; the next check tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

log = logging.getLogger("aiguard.collector")

_Identity = tuple[tuple[int, int, int], ...]


def _identity(*paths: Path) -> _Identity:
    out = []
    for p in paths:
        st = os.stat(p)  # follows the kubelet's ..data symlink to the current files
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ServingCertificate:
    def __init__(self, cert_dir: Path) -> None:
        self.cert = cert_dir / "tls.crt"
        self.key = cert_dir / "tls.key"
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._loaded: _Identity | None = None
        self.reloads = 0
        """Successful loads after the first (tests, logs)."""

    def load(self) -> None:
        """First load: a pair that cannot be used is an error (the collector does not start)."""
        identity = _identity(self.cert, self.key)
        self.context.load_cert_chain(self.cert, self.key)
        self._loaded = identity

    def check(self) -> bool:
        """Reload if the files changed; True if a new pair is now served."""
        try:
            identity = _identity(self.cert, self.key)
        except OSError as e:  # mid-swap: the next check sees the new files
            log.warning(
                "collector certificate: files unreadable", extra={"fields": {"error": str(e)}}
            )
            return False
        if identity == self._loaded:
            return False
        try:
            # Try the pair on a scratch context first: a failed load_cert_chain has already
            # replaced the certificate of the context it ran on, leaving it with the old key.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.cert, self.key)
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            log.error(
                "collector certificate: the new files do not load; still serving the previous "
                "certificate",
                extra={"fields": {"cert": str(self.cert), "error": str(e)}},
            )
            return False
        self._loaded = identity
        self.reloads += 1
        log.info("collector certificate reloaded", extra={"fields": {"cert": str(self.cert)}})
        return True

    async def watch(self, interval: float) -> None:
        """Check every ``interval`` seconds until cancelled (file reads in a worker thread)."""
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.check)
