"""Layering rules of docs/ARCHITECTURE.md, checked on the source itself."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_and_models_never_import_streamlit():
    offenders = [p.name for d in ("core", "models") for p in (ROOT / d).rglob("*.py")
                 if "streamlit" in imported_modules(p) or "st_canvas" in p.read_text()]
    assert offenders == []


def test_only_detect_imports_ultralytics():
    sources = [ROOT / "app.py", *(p for d in ("core", "models", "pages", "ui", "benchmarks") for p in (ROOT / d).rglob("*.py"))]
    importers = sorted(p.relative_to(ROOT).as_posix() for p in sources if "ultralytics" in imported_modules(p))
    assert importers == ["core/detect.py"]
