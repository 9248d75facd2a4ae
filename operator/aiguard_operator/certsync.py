"""One set of webhook certificates for every operator replica, kept in a Secret.

Every replica serves admission (kopf's webhook server does not pause with peering), and the
API server sends each request to any of them through the Service, trusting one ``caBundle``.
If each replica generated its own CA, the replicas would overwrite each other's bundle and
half the admission calls would fail TLS. So with ``AIGUARD_WEBHOOK_CERT_SECRET`` the replicas
share the files of :mod:`aiguard_operator.certs` through one Secret in the operator's
namespace::

    read the Secret ─► its files into the certificate directory
    ensure_certs (create or rotate, exactly as for one replica)
    the directory differs from the Secret ─► write it back, conditional on the
        resourceVersion read; 409 Conflict (another replica wrote first) ─► start over
        with that replica's files

The first replica to start creates the CA; the others adopt it. A rotation made by one replica
reaches the others at their next sync (hourly): a new CA enters the bundle first and signs
serving certificates only after ``RotationPolicy.ca_propagation``, and a re-issued serving
certificate is signed by the same CA, so a replica holding the older files keeps working.
The Secret holds the CA key: RBAC grants get/update on this one Secret (``resourceNames``)
and create on Secrets in the operator's namespace only (see docs/operator-rbac.md).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from aiguard_api import constants
from aiguard_operator import certs, kube

log = logging.getLogger("aiguard.certs")

FILES: Final = (certs.CA_CERT, certs.CA_KEY, certs.CA_BUNDLE, certs.TLS_CERT, certs.TLS_KEY)
PRIVATE: Final = frozenset({certs.CA_KEY, certs.TLS_KEY})
ATTEMPTS: Final = 5


class CertSyncError(Exception):
    """The Secret could not be read or written (the message says which and why)."""


def secret_path(namespace: str, name: str | None = None) -> str:
    return kube.path(version="v1", plural="secrets", namespace=namespace, name=name)


def read_files(directory: Path) -> dict[str, bytes]:
    """The certificate files present in ``directory``."""
    out: dict[str, bytes] = {}
    for name in FILES:
        try:
            out[name] = (directory / name).read_bytes()
        except FileNotFoundError:
            continue
    return out


def write_files(directory: Path, files: Mapping[str, bytes]) -> list[str]:
    """Bring ``directory`` to ``files`` (atomic per file, keys 0600); return what changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed: list[str] = []
    have = read_files(directory)
    for name in FILES:
        if name not in files:
            continue
        if have.get(name) == files[name]:
            continue
        tmp = directory / f".{name}.tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if name in PRIVATE else 0o644
        )
        with os.fdopen(fd, "wb") as f:
            f.write(files[name])
        tmp.replace(directory / name)
        changed.append(name)
    return changed


def _decode(secret: Mapping[str, object]) -> dict[str, bytes]:
    data = secret.get("data") or {}
    if not isinstance(data, Mapping):
        return {}
    return {k: base64.b64decode(str(v)) for k, v in data.items() if k in FILES}


def _encode(files: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in sorted(files.items())}


def _manifest(namespace: str, name: str, files: Mapping[str, bytes]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                constants.LABEL_MANAGED_BY: constants.MANAGED_BY,
                "app.kubernetes.io/part-of": "aiguard",
                "app.kubernetes.io/component": "webhook-certificates",
            },
        },
        "data": _encode(files),
    }


async def sync(
    api: kube.Client,
    *,
    namespace: str,
    name: str,
    directory: Path,
    hosts: Sequence[str],
    now: dt.datetime | None = None,
    policy: certs.RotationPolicy | None = None,
) -> certs.Outcome:
    """Adopt the shared certificates, rotate them if due, publish what changed."""
    path = secret_path(namespace, name)
    for _ in range(ATTEMPTS):
        try:
            secret = await api.get_or_none(path)
        except (kube.KubeError, OSError, TimeoutError) as e:
            raise CertSyncError(f"reading Secret {namespace}/{name}: {e}") from e
        shared = _decode(secret) if secret is not None else {}
        adopted = await asyncio.to_thread(write_files, directory, shared)
        if adopted:
            log.info("webhook certificates: adopted %s from Secret %s/%s", adopted, namespace, name)
        outcome = await asyncio.to_thread(
            certs.ensure_certs, directory, hosts=hosts, now=now, policy=policy
        )
        files = await asyncio.to_thread(read_files, directory)
        if files == shared:
            return outcome
        try:
            if secret is None:
                await api.create(secret_path(namespace), _manifest(namespace, name, files))
            else:
                version = (secret.get("metadata") or {}).get("resourceVersion")
                await api.patch(
                    path, {"metadata": {"resourceVersion": version}, "data": _encode(files)}
                )
        except kube.ApiError as e:
            if e.status == 409:  # another replica wrote first: take its files, try again
                log.info("webhook certificates: Secret %s/%s changed meanwhile", namespace, name)
                continue
            raise CertSyncError(f"writing Secret {namespace}/{name}: {e}") from e
        except (kube.KubeError, OSError, TimeoutError) as e:
            raise CertSyncError(f"writing Secret {namespace}/{name}: {e}") from e
        log.info("webhook certificates: published to Secret %s/%s", namespace, name)
        return outcome
    raise CertSyncError(
        f"Secret {namespace}/{name} kept changing ({ATTEMPTS} attempts): another replica is "
        "rotating; retrying at the next sync"
    )
