"""The layering rule, enforced: `engine/` never imports Qt (nor `app`/`ui`), `ui/` never imports
`engine` or `app`; only `app/` joins them (docs/CONTRACTS.md, ../shared/STYLE.md).

Two checks for the engine: a static one (every import statement, also inside functions, read
with `ast`) and a dynamic one (import every engine module in a fresh interpreter and look for Qt
in `sys.modules`), which also catches Qt pulled in through a third-party package.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QT_PACKAGES = ("PySide6", "PySide2", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "superqt",
               "qtpy")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file; relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return sorted(found)


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return [f"{f.relative_to(ROOT)}:{line}: imports {name}"
            for f in files for line, name in _imports(f)
            if name.split(".")[0] in forbidden]


def test_the_import_scanner_sees_every_kind_of_import(tmp_path, monkeypatch):
    # The rule tests are only as good as the scanner: feed it each form of import.
    pkg = tmp_path / "engine" / "sub"
    pkg.mkdir(parents=True)
    src = pkg / "mod.py"
    src.write_text("import os\nimport PySide6.QtCore as qc\nfrom pyqtgraph import ImageItem\n"
                   "def f():\n    from superqt import QLabeledSlider\n"
                   "from .. import ui_bits\nfrom ..other import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = [name for _, name in _imports(src)]
    assert names == ["os", "PySide6.QtCore", "pyqtgraph", "superqt", "engine", "engine.other"]
    assert len(_violations("engine", QT_PACKAGES)) == 3


def test_engine_source_never_imports_qt_app_or_ui():
    assert _violations("engine", QT_PACKAGES + ("app", "ui")) == []


def test_ui_source_never_imports_engine_or_app():
    assert _violations("ui", ("engine", "app")) == []


def test_importing_every_engine_module_loads_no_qt():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "engine").rglob("*.py"))
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {QT_PACKAGES!r})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"importing the engine modules failed:\n{proc.stderr[-3000:]}")
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(modules) > 10
    assert loaded == []
