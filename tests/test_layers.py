"""The package's floors (docs/architecture.md): every module imports only modules on lower floors, so
there is no cycle and no import running back up. Read from the source (static imports, the lazy ones
inside functions included), not from what happens to be imported at run time."""

import ast
from pathlib import Path

import qwenvl

FLOORS = {
    "errors": 0, "dtypes": 0,
    "config": 1,
    "processing": 2, "model": 2, "tiny": 2,
    "fast": 3, "tasks": 3, "synthetic": 3,
    "engine": 4, "synth": 4,
    "pipeline": 5,
    "serve": 6, "eval": 6, "train": 6,
    "bench": 7,
    "cli": 8,
}
ROOT = Path(qwenvl.__file__).parent


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """The top-level qwenvl units (folder or module) that the file imports."""
    parts = list(path.relative_to(root).parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = parts[:len(parts) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            out |= {target[0]} if target else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qwenvl."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("qwenvl.")}
    return out


def test_every_unit_has_a_floor():
    units = {p.name.removesuffix(".py") for p in ROOT.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and any(p.glob("*.py")))}
    assert units == set(FLOORS), units ^ set(FLOORS)


def test_imports_only_go_down():
    wrong = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if rel == ("__init__.py",):
            continue  # the package's lazy public names (resolved by name, on first use)
        unit = rel[0].removesuffix(".py")
        for target in imports(path) - {unit}:
            if target not in FLOORS or FLOORS[target] >= FLOORS[unit]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, wrong


def test_the_checker_sees_every_import_form(tmp_path):
    f = tmp_path / "model" / "sub" / "probe.py"
    f.parent.mkdir(parents=True)
    f.write_text("from ...serve import app\nfrom .. import text\nimport qwenvl.engine.driver\n"
                 "def lazy():\n    from qwenvl.cli import main\n")
    assert imports(f, tmp_path) == {"serve", "model", "engine", "cli"}
