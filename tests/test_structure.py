"""The layout's promises, checked on the source: only the kernel faces import the native
module, and no sls_core modules import each other (directly or around a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "sls_core"
#: The public Python faces of the Rust kernel: the only modules that import _native.
KERNEL_FACES = {
    "sls_core",
    "sls_core._batch",
    "sls_core.activation",
    "sls_core.auditfmt",
    "sls_core.card",
    "sls_core.challenge",
    "sls_core.hotp",
    "sls_core.ocra",
    "sls_core.push",
    "sls_core.sealing",
    "sls_core.totp",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if "api" in parts:  # generated protobuf code
            continue
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every sls_core module ``path`` imports at run time (lazy imports included; imports
    only for type checkers left out)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.startswith("sls_core"))
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sls_core")
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in modules else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in out if m in modules or m == "sls_core._native"}


def test_only_the_kernel_faces_import_the_native_module() -> None:
    modules = _modules()
    offenders = sorted(
        name
        for name, path in modules.items()
        if name not in KERNEL_FACES and "sls_core._native" in _imports(path, modules)
    )
    assert offenders == [], f"import a kernel face instead of sls_core._native: {offenders}"


def test_no_sls_core_modules_import_each_other() -> None:
    modules = _modules()
    graph = {
        name: _imports(path, modules) - {name, "sls_core._native"} for name, path in modules.items()
    }
    # A package's __init__ re-exporting its own submodules is not a circle.
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    circles = []
    for name, targets in graph.items():
        for target in targets:
            if _reaches(graph, target, name):
                circles.append((name, target))
    assert circles == [], f"import circles: {sorted(circles)}"


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node in seen:
            continue
        seen.add(node)
        stack.extend(graph.get(node, ()))
    return False


def test_the_structure_check_finds_a_circle_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _reaches(graph, "b", "a")
    assert not _reaches(graph, "a", "d")


def test_every_test_the_rules_document_names_exists() -> None:
    """docs/rules.md maps each rule to the tests that pin it: a renamed test must not leave
    the document pointing at nothing."""
    import re

    root = PACKAGE.parent.parent
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", (root / "docs" / "rules.md").read_text()))
    defined: set[str] = set()
    for path in (root / "tests").glob("test_*.py"):
        defined.update(re.findall(r"^(?:async )?def (test_[a-z0-9_]+)", path.read_text(), re.M))
    assert named, "docs/rules.md names no test"
    assert sorted(named - defined) == []


def test_dependency_floors_exclude_releases_with_known_advisories() -> None:
    """Issue 11: cryptography before 44.0.1 ships an OpenSSL with known advisories; pillow
    before 11.3 has buffer-overflow advisories. Both the package and the dev setup say so."""
    import re

    import tomllib

    root = PACKAGE.parent.parent
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        found = re.fullmatch(r"([A-Za-z0-9_-]+)>=([0-9.]+).*", dep)
        if found:
            floors[found.group(1).lower()] = tuple(int(x) for x in found.group(2).split("."))
    assert floors["cryptography"] >= (44, 0, 1)
    assert floors["pillow"] >= (11, 3)
    makefile = (root / "Makefile").read_text()
    assert '"cryptography>=44.0.1"' in makefile
    assert '"pillow>=11.3"' in makefile
