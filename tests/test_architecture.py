"""Layering rules of docs/ARCHITECTURE.md, checked on the source itself.

Every import counts, including those inside functions: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# core's layers, lowest first: a module may import its own layer and the ones below, never one above.
LAYERS = (
    ("settings", ("core.settings",)),
    ("data", ("core.data",)),
    ("evaluation", ("core.evaluation",)),
    ("runs", ("core.runs",)),
    ("engine", ("core.engine",)),
    ("training", ("core.training",)),
    ("inference", ("core.inference",)),
    ("app", ("core.demo",)),
    # the command line on top: it may import every layer, and nothing in core imports it but the dispatcher
    ("commands", ("core.commands", "core.cli", "core.__main__")),
)
PROJECT_PACKAGES = ("core", "models", "ui", "pages")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PROJECT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            found[module_name(path)] = path
    found["app"] = ROOT / "app.py"
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules a file imports anywhere in it (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from core.runs import layout` imports the module core.runs.layout
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    resolved = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            resolved.add(name)
    return resolved


def third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def layer_of(module: str) -> int | None:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(path, known) - {name} for name, path in modules.items()}


def test_every_core_module_sits_in_a_layer(graph):
    loose = sorted(m for m in graph if m.startswith("core.") and layer_of(m) is None
                   and m not in ("core",) and not any(m == p for _, ps in LAYERS for p in ps))
    assert loose == [], f"modules outside the layers of {[name for name, _ in LAYERS]}: {loose}"


def test_core_imports_only_its_own_layer_or_lower(graph):
    upward = []
    for module, targets in graph.items():
        source = layer_of(module)
        if source is None:
            continue
        for target in targets:
            if target.startswith(("ui", "pages")) or target == "app":
                upward.append(f"{module} -> {target} (the UI)")
            level = layer_of(target)
            if level is not None and level > source:
                upward.append(f"{module} ({LAYERS[source][0]}) -> {target} ({LAYERS[level][0]})")
    assert upward == []


def test_pages_and_ui_call_the_engine_not_the_commands(graph):
    offenders = [f"{m} -> {t}" for m, targets in graph.items() if m.startswith(("ui", "pages")) or m == "app"
                 for t in targets if layer_of(t) == len(LAYERS) - 1]
    assert offenders == []


def test_models_never_import_core_or_the_ui(graph):
    offenders = [f"{m} -> {t}" for m, targets in graph.items() if m.startswith("models")
                 for t in targets if not t.startswith("models")]
    assert offenders == []


def test_no_import_loops(graph):
    """Tarjan's strongly connected components: any component of two or more modules is a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert loops == []


def test_the_checker_sees_function_local_and_upward_imports(tmp_path):
    """The rules above would pass vacuously if the parser missed imports: check it on a known file."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from core.inference import pipeline\n    import core.runs.layout\n")
    found = imports_of(source, {"core.inference.pipeline", "core.runs.layout", "core.runs", "core"})
    assert {"core.inference.pipeline", "core.runs.layout"} <= found
    assert layer_of("core.inference.pipeline") > layer_of("core.runs.layout")


def test_core_and_models_never_import_streamlit():
    offenders = [p.name for d in ("core", "models") for p in (ROOT / d).rglob("*.py")
                 if "streamlit" in third_party_imports(p) or "st_canvas" in p.read_text()]
    assert offenders == []


def test_only_detect_imports_ultralytics():
    sources = [ROOT / "app.py", *(p for d in ("core", "models", "pages", "ui", "benchmarks") for p in (ROOT / d).rglob("*.py"))]
    importers = sorted(p.relative_to(ROOT).as_posix() for p in sources if "ultralytics" in third_party_imports(p))
    # the package core/training/detect/ (sandbox, checkpoint, predict, train ...): nothing else
    assert importers and all(p.startswith("core/training/detect/") for p in importers), importers


def test_phantom_and_measure_start_without_torch(tmp_path):
    """The dispatcher imports only the chosen command's module, and these two need no model: torch stays out."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from core.cli import main\n"
        f"out = Path({str(tmp_path / 'set')!r})\n"
        "assert main(['phantom', '--out', str(out), '--patients', '1', '--size', '256', '--format', 'csxa']) == 0\n"
        "assert main(['measure', *map(str, out.glob('csxa/datasets-PNG/*.json'))]) == 0\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'ultralytics') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CERVICURVE_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------------ the tests themselves
def test_no_test_file_imports_another_and_none_sleeps_a_fixed_time():
    """Shared builders live in tests/helpers and fixtures in tests/conftest.py, so a test file can be read, moved or
    deleted alone; a test waits on its condition (tests.helpers.wait.wait_for), never for a guessed time. Only
    tests/helpers/wait.py sleeps: between the polls of a condition."""
    test_files = sorted((ROOT / "tests").glob("test_*.py"))
    siblings = {path.stem for path in test_files}
    imports, sleeps = [], []
    for path in [*test_files, *sorted((ROOT / "tests" / "helpers").glob("*.py")), ROOT / "tests" / "conftest.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in siblings:
                imports.append(f"{path.name}: from {node.module}")
            elif isinstance(node, ast.Import):
                imports += [f"{path.name}: import {a.name}" for a in node.names if a.name.split(".")[0] in siblings]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "sleep"
                  and path.name != "wait.py"):
                sleeps.append(f"{path.name}:{node.lineno}")
        # a sleep inside a child process's script (a string) counts too
        sleeps += [f"{path.name}: in a script" for text in (n.value for n in ast.walk(tree)
                                                              if isinstance(n, ast.Constant) and isinstance(n.value, str))
                   if re.search(r"time\.sleep\(\s*[\d.]", text)]
    assert imports == [] and sleeps == [], (imports, sleeps)
