"""Write a bundle directory and its manifest; verify one later.

``manifest.json`` (schema ``aiguard.dev/evidence-manifest/v1``)::

    {"schema": ..., "provenance": {period, cluster, collector, generator, generated_at},
     "files": {"index.html": {"sha256": "<hex>", "bytes": n}, ...},
     "digest": "sha256:<hex over the sorted lines '<sha256>  <name>\\n'>"}

The manifest covers every other file; :func:`verify` reports a file that changed, is missing
or was added, and a manifest whose own digest line was edited. To bind the bundle to a
person or time, sign ``manifest.json`` (or its ``digest``) with the organisation's tooling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Final

from aiguard_operator.evidence import render_data, render_html, render_md, render_svg
from aiguard_operator.evidence.build import Report

MANIFEST: Final = "manifest.json"
MANIFEST_SCHEMA: Final = "aiguard.dev/evidence-manifest/v1"


def files_of(report: Report) -> dict[str, str]:
    """Every file of the bundle except the manifest: name → text."""
    svg = render_svg.render(report)
    files = {
        "index.html": render_html.render(report, svg),
        "report.md": render_md.render(report),
        "evidence.json": render_data.to_json(report),
        "dataflow.svg": svg,
    }
    files.update(render_data.csv_files(report))
    return files


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest(entries: dict[str, dict[str, Any]]) -> str:
    lines = "".join(f"{v['sha256']}  {k}\n" for k, v in sorted(entries.items()))
    return "sha256:" + _sha256(lines.encode())


def write(report: Report, out: Path) -> dict[str, Any]:
    """Write the bundle into ``out`` (created; must be empty if it exists). Returns the
    manifest."""
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; give a new directory")
    entries: dict[str, dict[str, Any]] = {}
    for name, text in files_of(report).items():
        data = text.encode()
        (out / name).write_bytes(data)
        entries[name] = {"sha256": _sha256(data), "bytes": len(data)}
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "provenance": dataclasses.asdict(report.provenance),
        "files": entries,
        "digest": _digest(entries),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def verify(directory: Path) -> list[str]:
    """Problems with the bundle in ``directory`` (empty: every file is as generated)."""
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        entries: dict[str, dict[str, Any]] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{MANIFEST}: unreadable: {e}"]
    problems: list[str] = []
    if manifest.get("schema") != MANIFEST_SCHEMA:
        problems.append(
            f"{MANIFEST}: schema {manifest.get('schema')!r}, expected {MANIFEST_SCHEMA}"
        )
    if manifest.get("digest") != _digest(entries):
        problems.append(f"{MANIFEST}: the digest does not match its file list (edited)")
    for name, entry in sorted(entries.items()):
        if os.sep in name or name.startswith(".") or "/" in name:
            problems.append(f"{name}: not a plain file name")
            continue
        file = directory / name
        if not file.is_file():
            problems.append(f"{name}: missing")
            continue
        actual = _sha256(file.read_bytes())
        if actual != entry.get("sha256"):
            listed = str(entry.get("sha256"))[:16]
            problems.append(f"{name}: changed (SHA-256 {actual[:16]}…, manifest {listed}…)")
    for extra in sorted(p.name for p in directory.iterdir() if p.name != MANIFEST):
        if extra not in entries:
            problems.append(f"{extra}: not in the manifest (added after generation)")
    return problems
