"""`llmlens` command line: subcommands for terminal use, the GUI when none is given.

Each subcommand lives in `app/commands/<name>.py` with `add_parser(subparsers)` and `run(args)`.
Expected failures are `LLMLensError`s: they print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.errors import LLMLensError

COMMANDS = ("info", "tokenize", "generate", "logits", "render-template", "bench", "trace", "serve")

# Model names the window accepts besides a path (another engineer's alias `demo-moe` included).
MODEL_ALIASES = ("default", "demo-moe")


def _command_module(name: str):
    return importlib.import_module(f"app.commands.{name.replace('-', '_')}")


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmlens",
        description="See inside a local language model. With no command, opens the window "
                    "(optionally on MODEL.gguf).",
    )
    parser.add_argument("--version", action="store_true",
                        help="print the versions (app, git revision, Python, torch, Qt, kernels) "
                             "and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        _command_module(name).add_parser(sub)
    return parser


def _usage() -> str:
    return ("usage: llmlens [MODEL.gguf | " + " | ".join(MODEL_ALIASES) + "]\n"
            "       llmlens COMMAND ...   (COMMAND: " + ", ".join(COMMANDS) + "; -h for help)")


def _gui_problem(argv: Sequence[str]) -> str | None:
    """Why `argv` must not open the window (a one-line message), or None when it may.

    The window opens for no argument, a model alias or an existing .gguf file; anything else is
    a typo of a command or a path, and opening a window for it would hide the mistake.
    """
    if not argv or argv[0].startswith("-"):
        return None  # Qt's own options (-platform, -style ...) go to the window unchecked
    target = argv[0]
    if target in MODEL_ALIASES:
        return None
    path = Path(target)
    if target.lower().endswith(".gguf") or len(path.parts) > 1 or path.exists():
        if not path.exists():
            return f"llmlens: error: no such file: {target}"
        if not path.is_file() or path.suffix.lower() != ".gguf":
            return f"llmlens: error: not a .gguf file: {target}"
        return None
    guess = difflib.get_close_matches(target, COMMANDS + MODEL_ALIASES, n=1)
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    return f"llmlens: error: unknown command '{target}'{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        from app.version import version_text

        print(version_text())
        return 0
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
        problem = _gui_problem(argv)
        if problem is not None:
            if problem.startswith("llmlens: error: unknown command"):
                print(_usage(), file=sys.stderr)
            print(problem, file=sys.stderr)
            return 2
        # `llmlens` or `llmlens model.gguf`: the desktop app.
        from app.gui import run_gui

        return run_gui(argv)
    # Only the invoked command's module is imported: `llmlens info` never pays for torch.
    commands = COMMANDS if argv[0] in ("-h", "--help") else (argv[0],)
    args = build_parser(commands).parse_args(argv)
    try:
        return int(_command_module(args.command).run(args) or 0)
    except LLMLensError as exc:
        print(f"llmlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
