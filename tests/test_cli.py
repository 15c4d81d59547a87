"""`llmlens` argument dispatch: which arguments open the window, and which are mistakes.

`app.gui.run_gui` is replaced by a recorder, so no test here opens a window; a mistake must
return 2 with one line on stderr before anything of the GUI is called.
"""

from __future__ import annotations

import pytest

from app import cli


@pytest.fixture()
def gui_calls(monkeypatch) -> list[list[str]]:
    import app.gui

    calls: list[list[str]] = []

    def fake_run_gui(argv, **_kw) -> int:
        calls.append(list(argv))
        return 0

    monkeypatch.setattr(app.gui, "run_gui", fake_run_gui)
    return calls


def _error_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("llmlens: error")]


@pytest.mark.parametrize("typo, meant", [("genrate", "generate"), ("inf", "info"),
                                         ("tokenise", "tokenize"), ("defualt", "default")])
def test_a_mistyped_command_suggests_the_command_and_opens_no_window(gui_calls, capsys, typo,
                                                                     meant):
    assert cli.main([typo, "model.gguf"]) == 2
    err = capsys.readouterr().err
    assert "usage: llmlens" in err
    assert f"unknown command '{typo}' (did you mean '{meant}'?)" in err
    assert gui_calls == []


def test_trace_typo_is_caught_whether_or_not_trace_exists_yet(gui_calls, capsys):
    # The issue's own example; `trace` is added by another change, the suggestion follows it.
    assert cli.main(["trcae", "model.gguf"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trcae'" in err
    assert ("did you mean 'trace'" in err) == ("trace" in cli.COMMANDS)
    assert gui_calls == []


def test_a_word_far_from_every_command_gets_no_suggestion(gui_calls, capsys):
    assert cli.main(["xyzzy"]) == 2
    (line,) = _error_lines(capsys)
    assert line == "llmlens: error: unknown command 'xyzzy'"
    assert gui_calls == []


def test_a_missing_gguf_path_is_a_one_line_error(gui_calls, capsys, tmp_path):
    missing = tmp_path / "nope.gguf"
    assert cli.main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"llmlens: error: no such file: {missing}"
    assert gui_calls == []


def test_an_existing_file_that_is_not_gguf_is_a_one_line_error(gui_calls, capsys, tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert cli.main([str(other)]) == 2
    assert capsys.readouterr().err.strip() == f"llmlens: error: not a .gguf file: {other}"
    folder = tmp_path / "dir.gguf"
    folder.mkdir()
    assert cli.main([str(folder)]) == 2
    assert capsys.readouterr().err.strip() == f"llmlens: error: not a .gguf file: {folder}"
    assert gui_calls == []


@pytest.mark.parametrize("argv", [[], ["default"], ["demo-moe"], ["-platform", "offscreen"]])
def test_no_argument_or_a_model_alias_opens_the_window(gui_calls, argv):
    assert cli.main(argv) == 0
    assert gui_calls == [argv]


def test_an_existing_gguf_file_opens_the_window(gui_calls, tmp_path):
    model = tmp_path / "Model.GGUF"
    model.write_bytes(b"GGUF")  # the window reports a bad file itself; the CLI checks the name
    assert cli.main([str(model)]) == 0
    assert gui_calls == [[str(model)]]


def test_a_known_command_runs_it_and_not_the_window(gui_calls, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["info", "--help"])
    assert exc.value.code == 0
    assert "usage: llmlens info" in capsys.readouterr().out
    assert gui_calls == []
