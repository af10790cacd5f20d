"""The package boundaries of docs/architecture.md, enforced on the source tree.

Dependencies point inward only: server -> session -> {sql, policy, masking, audit,
identity, approvals} -> wire. Each rule names a package and what it must not import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "gateway"

# package (relative to gateway/) -> forbidden import prefixes
RULES: dict[str, tuple[str, ...]] = {
    "wire": (
        "asyncio", "socket", "ssl", "selectors", "pglast", "uvloop",
        "gateway.sql", "gateway.policy", "gateway.masking", "gateway.audit",
        "gateway.identity", "gateway.approvals", "gateway.server", "gateway.session",
        "gateway.config", "gateway.cli",
    ),
    "sql": ("gateway.wire", "asyncio", "gateway.server", "gateway.session"),
    "policy": ("asyncio", "socket", "gateway.server", "gateway.session"),
    "masking": ("asyncio", "gateway.server", "gateway.session"),
    "identity": ("gateway.server", "gateway.policy", "gateway.session"),
    "audit": ("gateway.server", "gateway.session"),
    "approvals": ("gateway.server", "gateway.wire", "gateway.session"),
    "session": ("gateway.server", "asyncio", "socket", "uvloop"),
    "config.py": ("asyncio", "gateway.server", "gateway.session"),
}
# Only gateway/sql may import pglast.
PGLAST_ALLOWED = ("sql",)


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def owner(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.name


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_package_boundaries(path: Path) -> None:
    pkg = owner(path)
    forbidden = RULES.get(pkg, ())
    violations = [
        f"{path.relative_to(ROOT.parent)}:{line}: imports {name}"
        for line, name in imports_of(path)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
        or (name.split(".")[0] == "pglast" and pkg not in PGLAST_ALLOWED)
    ]
    assert not violations, "\n".join(violations)


def test_rules_catch_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom gateway.server import worker\n")
    names = [name for _, name in imports_of(bad)]
    assert names == ["asyncio", "gateway.server"]
    assert any(n.startswith(f) for n in names for f in RULES["wire"])


def test_every_module_has_a_docstring() -> None:
    missing = [
        str(p.relative_to(ROOT.parent))
        for p in modules()
        if ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert not missing, "modules without a docstring: " + ", ".join(missing)
