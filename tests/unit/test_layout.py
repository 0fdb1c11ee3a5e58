"""The house rules the import graph cannot check: no module reaches into another's private names.

A `_name` is its module's own business. Another vsop module neither imports it
(`from vsop.x import _name`) nor reaches it through the module (`x._name`, `vsop.x._name`).
What two modules share goes into a public name, usually in a module of its own (vsop.cli.common).
The cycles between packages are import-linter's (pyproject.toml, `lint-imports`).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "operator"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted((ROOT / "vsop").rglob("*.py"))}


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def reach_ins(module: str, source: str) -> list[str]:
    """Every private name of another vsop module that `source` (the text of `module`) imports or reaches."""
    tree = ast.parse(source)
    found: list[str] = []
    aliases: dict[str, str] = {}  # a local name -> the vsop module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "vsop":
            for alias in node.names:
                if private(alias.name) and node.module != module:
                    found.append(f"{module}:{node.lineno}: from {node.module} import {alias.name}")
                if f"{node.module}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vsop":
                    aliases[alias.asname or "vsop"] = alias.name if alias.asname else "vsop"
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and private(node.attr)):
            continue
        chain: list[str] = []
        value = node.value
        while isinstance(value, ast.Attribute):
            chain.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name) and value.id in aliases:
            owner = ".".join([aliases[value.id], *reversed(chain)])
            if owner in MODULES and owner != module:
                found.append(f"{module}:{node.lineno}: {owner}.{node.attr}")
    return found


def test_no_module_imports_or_reaches_a_private_name_of_another() -> None:
    found = [line for module, path in MODULES.items() for line in reach_ins(module, path.read_text(encoding="utf-8"))]
    assert found == [], "\n".join(found)


def test_the_check_sees_each_kind_of_reach_in() -> None:
    source = (
        "from vsop.cli.main import _load, main\n"
        "from vsop.cli import common\n"
        "import vsop.node.execute\n"
        "import vsop.node.lock as lock\n"
        "from vsop.core.plan import Plan\n"
        "common._hidden(); vsop.node.execute._helper(); lock._path; Plan._private; common.__name__; self._mine\n"
    )
    assert sorted(reach_ins("vsop.cli.example", source)) == [
        "vsop.cli.example:1: from vsop.cli.main import _load",
        "vsop.cli.example:6: vsop.cli.common._hidden",
        "vsop.cli.example:6: vsop.node.execute._helper",
        "vsop.cli.example:6: vsop.node.lock._path",
    ]
    assert reach_ins("vsop.cli.main", "from vsop.cli.main import _load\n") == []  # its own
