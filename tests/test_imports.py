"""Packages import only downward (pipelines < kg < linking, model < flows; linking and model do not
import each other), lazy imports inside functions included, and no module imports another
module's private ``_name``."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEVEL = {"pipelines": 0, "kg": 1, "linking": 2, "model": 2, "flows": 3}


def _imports(path: Path):
    """(line, imported module, imported names) for every import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [a.name for a in node.names]


def _problems() -> list[str]:
    problems = []
    for package, level in LEVEL.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT)
            for line, module, names in _imports(path):
                target = module.split(".")[0]
                if target not in LEVEL or target == package:
                    if target == package:
                        problems += [f"{where}:{line} imports private {module}.{n}" for n in names
                                     if n.startswith("_") and module != package]
                    continue
                if LEVEL[target] >= level:  # upward, or across (linking <-> model)
                    problems.append(f"{where}:{line} imports {module} ({package} must not import {target})")
                problems += [f"{where}:{line} imports private {module}.{n}" for n in names if n.startswith("_")]
    return problems


def test_imports_point_downward_and_skip_private_names():
    assert _problems() == []


def test_imports_checker_sees_lazy_and_private_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from flows.build import _layout\n")
    assert list(_imports(src)) == [(2, "flows.build", ["_layout"])]
