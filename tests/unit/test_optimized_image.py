"""The sidecar image runs Python with ``PYTHONOPTIMIZE=2`` (Dockerfile.sidecar): asserts are not
executed and docstrings are not loaded. So nothing the sidecar runs may depend on either:

* every ``assert`` in ``aiguard_sidecar`` and ``aiguard_api`` only narrows a type for mypy
  (``x is not None``, ``isinstance``), never checks input or state that could be false; a check
  that matters raises;
* nothing reads a docstring (``__doc__``, ``inspect.getdoc``).

The installed sidecar is started at that level in ``tests/packaging/test_install.py`` and
``tests/sidecar/test_lean_start.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (ROOT / "sidecar" / "aiguard_sidecar", ROOT / "api" / "aiguard_api")
SOURCES = sorted(p for pkg in PACKAGES for p in pkg.rglob("*.py"))


def _narrowing(test: ast.expr) -> bool:
    """``x is not None``, ``x is None or isinstance(x, T)``, ``isinstance(x, T)``."""
    if isinstance(test, ast.Compare):
        return (
            len(test.ops) == 1
            and isinstance(test.ops[0], ast.IsNot)
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value is None
        )
    if isinstance(test, ast.Call):
        return isinstance(test.func, ast.Name) and test.func.id == "isinstance"
    if isinstance(test, ast.BoolOp):
        return all(_narrowing(v) or _is_none(v) for v in test.values)
    return False


def _is_none(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Is)
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value is None
    )


def _asserts(path: Path) -> Iterator[ast.Assert]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Assert):
            yield node


def test_the_packages_are_found() -> None:
    assert len(SOURCES) > 50
    assert any(_asserts(ROOT / "sidecar" / "aiguard_sidecar" / "audit" / "spool.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_asserts_only_narrow_types(path: Path) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{a.lineno}: assert {ast.unparse(a.test)}"
        for a in _asserts(path)
        if not _narrowing(a.test)
    ]
    assert not wrong, "not executed under PYTHONOPTIMIZE=2; raise instead:\n" + "\n".join(wrong)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_docstring_is_read(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    reads = [
        f"{path.relative_to(ROOT)}:{n.lineno}"
        for n in ast.walk(tree)
        if (isinstance(n, ast.Name) and n.id == "__doc__")
        or (isinstance(n, ast.Attribute) and n.attr in ("__doc__", "getdoc"))
    ]
    assert not reads, "docstrings are None under PYTHONOPTIMIZE=2: " + ", ".join(reads)


@pytest.mark.parametrize(
    ("source", "narrowing"),
    [
        ("assert x is not None", True),
        ("assert isinstance(x, str)", True),
        ("assert kid is None or isinstance(kid, str)", True),
        ("assert x", False),
        ("assert x > 0", False),
        ("assert x is not None and x > 0", False),
        ("assert x == y", False),
    ],
)
def test_what_counts_as_narrowing(source: str, narrowing: bool) -> None:
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.Assert)
    assert _narrowing(node.test) is narrowing
