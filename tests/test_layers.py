"""The layers of docs/design.md: arrows point down only (recipes -> modalities -> mmflow)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_never_imports_a_modality():
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / "mmflow").rglob("*.py")
        for name in imported_modules(path)
        if name == "modalities" or name.startswith("modalities.")
    ]
    assert not offenders, offenders


def test_no_modality_imports_another():
    packages = [p for p in (ROOT / "modalities").iterdir() if (p / "__init__.py").exists()]
    offenders = []
    for package in packages:
        for path in package.rglob("*.py"):
            for name in imported_modules(path):
                parts = name.split(".")
                if parts[0] == "modalities" and len(parts) > 1 and parts[1] != package.name:
                    offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, offenders


def test_recipes_are_yaml_only():
    recipes = ROOT / "recipes"
    stray = (
        [p for p in recipes.rglob("*") if p.is_file() and p.suffix not in {".yaml", ".yml"}]
        if recipes.exists()
        else []
    )
    assert not stray, stray
