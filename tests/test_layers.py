"""The packages import downwards only: each may import the ones below it,
never one above (imports inside functions and under TYPE_CHECKING count)."""

from __future__ import annotations

import ast
from pathlib import Path

import prismfs

SRC = Path(prismfs.__file__).parent

# What each package must not import: everything above it.
ABOVE = {
    "wire": {
        "raft",
        "meta",
        "data",
        "node",
        "leader",
        "gateway",
        "client",
        "fuse",
        "cli",
        "daemon",
    },
    "raft": {"meta", "data", "node", "leader", "gateway", "client", "fuse", "cli", "daemon"},
    "data": {"node", "leader", "gateway", "client", "fuse", "cli", "daemon"},
    "node": {"leader", "gateway", "client", "fuse", "cli", "daemon"},
    "leader": {"gateway", "fuse", "cli", "daemon"},
    "gateway": {"fuse", "cli", "daemon"},
    "daemon": {"cli", "fuse"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "prismfs":
                names += [f"prismfs.{alias.name}" for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("prismfs.")}
    return found


def test_no_package_imports_one_above_it() -> None:
    wrong = []
    for package, above in ABOVE.items():
        files = (
            [SRC / "daemon.py"] if package == "daemon" else sorted((SRC / package).rglob("*.py"))
        )
        assert files, package
        for path in files:
            for bad in sorted(imported_packages(path) & above):
                wrong.append(f"{path.relative_to(SRC)} imports prismfs.{bad}")
    assert wrong == []


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from prismfs.leader.repair import Health\n    import prismfs.cli\n"
    )
    assert imported_packages(source) == {"leader", "cli"}
