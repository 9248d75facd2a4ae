"""Licence and vulnerability checks of the images' dependencies (``make supply-chain``).

    python hack/supply_chain.py licences VENV...      pip-licenses over each installed venv
    python hack/supply_chain.py audit LOCKFILE...     pip-audit over the hashed lockfiles

Policy (denied licences, allowed packages, accepted findings with reasons and expiry dates):
``requirements/supply-chain.toml``; what to do about a finding: ``docs/supply-chain.md``.

``audit`` runs pip-audit against PyPI's vulnerability data (``--disable-pip --require-hashes``:
the lockfiles are audited as they are, nothing is resolved). Where pip-audit could not look a
pinned version up (some PyPI mirrors serve only the project-level JSON, not the per-version
one), the project-level ``vulnerabilities`` are used when the pin is the latest release, which
is the release they describe; anything still unaudited is listed, and fails with ``--strict``.
Exit status: 0 clean, 1 a finding (or, with --strict, an unaudited package), 2 usage/tool error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "requirements" / "supply-chain.toml"
PYPI_JSON = "https://pypi.org/pypi/{name}/json"

# ── policy ─────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Ignore:
    id: str
    package: str
    reason: str
    expires: dt.date


@dataclass
class Policy:
    deny: list[str]
    allow: dict[str, str]  # package -> reason
    ignore: list[Ignore] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path = POLICY) -> Policy:
        doc = tomllib.loads(path.read_text())
        licences = doc.get("licences", {})
        allow = {}
        for entry in licences.get("allow", []):
            if not str(entry.get("reason", "")).strip():
                raise ValueError(f"{path.name}: licences.allow {entry.get('package')}: no reason")
            allow[_canonical(entry["package"])] = entry["reason"]
        ignores = []
        for entry in doc.get("vulnerabilities", {}).get("ignore", []):
            missing = [k for k in ("id", "package", "reason", "expires") if not entry.get(k)]
            if missing:
                raise ValueError(f"{path.name}: vulnerabilities.ignore {entry}: needs {missing}")
            expires = entry["expires"]
            if not isinstance(expires, dt.date):
                raise ValueError(f"{path.name}: {entry['id']}: expires must be a date")
            ignores.append(
                Ignore(entry["id"], _canonical(entry["package"]), entry["reason"], expires)
            )
        return cls(list(licences.get("deny", [])), allow, ignores)

    def active_ignores(self, today: dt.date) -> set[str]:
        return {i.id for i in self.ignore if i.expires >= today}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ── licences ───────────────────────────────────────────────────────────────────────────────

_LONG_FORMS = {
    "GPL": re.compile(r"GNU General Public License", re.IGNORECASE),
    "AGPL": re.compile(r"GNU Affero General Public License", re.IGNORECASE),
    "SSPL": re.compile(r"Server Side Public License", re.IGNORECASE),
    "EUPL": re.compile(r"European Union Public Licen[cs]e", re.IGNORECASE),
}
_UNKNOWN = {"", "unknown", "none", "other/proprietary license", "license :: other/proprietary"}


def denied_terms(licence_text: str, deny: Iterable[str]) -> list[str]:
    """The denied licences ``licence_text`` names. A term matches as a word start, so
    ``GPL-3.0-only`` and ``GPLv2`` match GPL while ``LGPL-2.1`` and ``AGPL`` do not."""
    found = []
    for term in deny:
        short = re.compile(rf"(?<![A-Za-z]){re.escape(term)}")
        long = _LONG_FORMS.get(term)
        if short.search(licence_text) or (long is not None and long.search(licence_text)):
            found.append(term)
    return found


@dataclass(frozen=True)
class LicenceFinding:
    package: str
    version: str
    licence: str
    problem: str


def check_licences(
    packages: Iterable[Mapping[str, str]], policy: Policy
) -> tuple[list[LicenceFinding], list[str]]:
    """pip-licenses JSON rows -> (findings, notes about allowed exceptions)."""
    findings: list[LicenceFinding] = []
    notes: list[str] = []
    for row in packages:
        name = row.get("Name", "")
        version = row.get("Version", "")
        texts = [v for k, v in row.items() if k.startswith("License") and isinstance(v, str)]
        text = " ; ".join(t for t in texts if t.strip().lower() not in _UNKNOWN)
        problem = ""
        if not text:
            problem = "licence unknown"
        elif terms := denied_terms(text, policy.deny):
            problem = "denied licence " + "/".join(terms)
        if not problem:
            continue
        reason = policy.allow.get(_canonical(name))
        if reason:
            notes.append(f"{name} {version}: {problem}, allowed: {reason}")
        else:
            findings.append(LicenceFinding(name, version, text or "UNKNOWN", problem))
    return findings, notes


def pip_licenses(venv: Path) -> list[dict[str, str]]:
    result = subprocess.run(
        [
            sys.executable, "-m", "piplicenses",
            "--python", str(venv / "bin" / "python"),
            "--from=all", "--format=json", "--with-system",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows: list[dict[str, str]] = json.loads(result.stdout)
    # the venv has no pip; the project itself is Apache-2.0 (pyproject.toml)
    return [r for r in rows if _canonical(r.get("Name", "")) not in {"aiguard", "pip"}]


def cmd_licences(venvs: Sequence[Path], policy: Policy) -> int:
    failed = False
    for venv in venvs:
        rows = pip_licenses(venv)
        findings, notes = check_licences(rows, policy)
        print(f"licences: {venv.name}: {len(rows)} packages, {len(findings)} findings")
        for note in notes:
            print(f"  allowed  {note}")
        for f in findings:
            print(f"  FAIL     {f.package} {f.version}: {f.problem} ({f.licence})")
        failed |= bool(findings)
    return 1 if failed else 0


# ── vulnerabilities ────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Vulnerability:
    package: str
    version: str
    id: str
    aliases: tuple[str, ...]
    fixed_in: tuple[str, ...]


@dataclass
class AuditResult:
    audited: list[str] = field(default_factory=list)
    findings: list[Vulnerability] = field(default_factory=list)
    ignored: list[Vulnerability] = field(default_factory=list)
    unaudited: list[str] = field(default_factory=list)


ProjectJson = Callable[[str], Mapping[str, Any] | None]


def fetch_project_json(name: str) -> Mapping[str, Any] | None:
    url = PYPI_JSON.format(name=name)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 (fixed https URL)
            data: Mapping[str, Any] = json.loads(r.read())
            return data
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None


def evaluate_audit(
    report: Mapping[str, Any], ignores: set[str], project_json: ProjectJson
) -> AuditResult:
    """pip-audit's JSON report (+ the project-level fallback) -> findings."""
    result = AuditResult()

    def add(vuln: Vulnerability) -> None:
        if {vuln.id, *vuln.aliases} & ignores:
            result.ignored.append(vuln)
        else:
            result.findings.append(vuln)

    for dep in report.get("dependencies", []):
        name, version = dep["name"], dep.get("version")
        if "skip_reason" not in dep:
            result.audited.append(name)
            for v in dep.get("vulns", []):
                add(
                    Vulnerability(
                        name,
                        version,
                        v["id"],
                        tuple(v.get("aliases", [])),
                        tuple(v.get("fix_versions", [])),
                    )
                )
            continue
        match = re.search(r"\(([^()]+)\)\s*$", dep["skip_reason"])
        version = version or (match[1] if match else "")
        data = project_json(name)
        latest = (data or {}).get("info", {}).get("version")
        if data is None or latest != version:
            why = "no vulnerability data" if data is None else f"latest is {latest}"
            result.unaudited.append(f"{name}=={version} ({why})")
            continue
        result.audited.append(name)
        for v in data.get("vulnerabilities", []):
            if not v.get("withdrawn"):
                add(
                    Vulnerability(
                        name,
                        version,
                        v["id"],
                        tuple(v.get("aliases", [])),
                        tuple(v.get("fixed_in", [])),
                    )
                )
    return result


def cmd_audit(lockfiles: Sequence[Path], policy: Policy, *, strict: bool) -> int:
    ignores = policy.active_ignores(dt.date.today())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        argv = [
            sys.executable, "-m", "pip_audit",
            "--disable-pip", "--require-hashes", "--progress-spinner", "off",
            "--format", "json", "--output", str(out),
        ]  # fmt: skip
        for lock in lockfiles:
            argv += ["-r", str(lock)]
        for vuln_id in sorted(ignores):
            argv += ["--ignore-vuln", vuln_id]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if not out.exists():
            print(f"audit: pip-audit failed ({proc.returncode}):\n{proc.stderr}", file=sys.stderr)
            return 2
        report = json.loads(out.read_text())
    result = evaluate_audit(report, ignores, fetch_project_json)
    total = len(result.audited) + len(result.unaudited)
    print(
        f"audit: {total} pinned packages in {len(lockfiles)} lockfiles; "
        f"{len(result.audited)} audited, {len(result.findings)} findings, "
        f"{len(result.ignored)} accepted, {len(result.unaudited)} not auditable"
    )
    for v in result.ignored:
        print(f"  accepted {v.package} {v.version}: {v.id} (requirements/supply-chain.toml)")
    for v in result.findings:
        fix = ", ".join(v.fixed_in) or "no fixed release yet"
        print(f"  FAIL     {v.package} {v.version}: {v.id} {' '.join(v.aliases)} (fixed in {fix})")
    for u in result.unaudited:
        print(f"  {'FAIL' if strict else 'warning'}  not auditable: {u}")
    if result.findings or (strict and result.unaudited):
        print("  see docs/supply-chain.md: 'Handling a vulnerability finding'")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/supply_chain.py", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    lic = sub.add_parser("licences", help="licences of the packages installed in each VENV")
    lic.add_argument("venvs", nargs="+", type=Path)
    aud = sub.add_parser("audit", help="known vulnerabilities of the pins in each LOCKFILE")
    aud.add_argument("lockfiles", nargs="+", type=Path)
    aud.add_argument("--strict", action="store_true", help="fail on unauditable packages too")
    args = parser.parse_args(argv)
    try:
        policy = Policy.load()
    except (ValueError, KeyError, tomllib.TOMLDecodeError) as e:
        print(f"supply-chain policy: {e}", file=sys.stderr)
        return 2
    if args.command == "licences":
        return cmd_licences(args.venvs, policy)
    return cmd_audit(args.lockfiles, policy, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())
