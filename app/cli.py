"""`llmlens` command line: subcommands for terminal use, the GUI when none is given.

Each subcommand lives in `app/commands/<name>.py` with `add_parser(subparsers)` and `run(args)`.
Expected failures are `LLMLensError`s: they print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from engine.errors import LLMLensError

COMMANDS = ("info", "tokenize", "generate", "logits", "render-template", "bench")


def _command_module(name: str):
    return importlib.import_module(f"app.commands.{name.replace('-', '_')}")


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmlens",
        description="See inside a local language model. With no command, opens the window "
                    "(optionally on MODEL.gguf).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        _command_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS + ("-h", "--help"):
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
