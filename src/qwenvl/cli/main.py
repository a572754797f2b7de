"""The `qwenvl` console script. Each subcommand lives in its own module under qwenvl.cli and exposes
`register(subparsers)`, which adds its parser and sets `func` (called with the parsed args).

Every failure ends in one line on stderr and a non-zero exit (cli/errors.py); `--debug` anywhere on the
command line (or QWENVL_DEBUG=1) lets the traceback through instead. `--quiet` silences progress."""

from __future__ import annotations

import importlib
import os
import sys

from .errors import Parser, explain_extras, report

# Modules under qwenvl.cli, each adding one or more subcommands. Imported lazily by name so that a
# subcommand's heavy dependencies (uvicorn, pycocotools, ...) load only when it runs.
COMMAND_MODULES = ("chat", "serve", "tools", "eval", "train", "bench", "data")

GLOBAL_FLAGS = ("--debug", "--quiet")


def build_parser() -> Parser:
    parser = Parser(prog="qwenvl", description="Qwen2.5-VL: chat, serve, tasks, train, evaluate.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (anywhere on the line)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"qwenvl.cli.{name}").register(sub)
    return parser


def _split_globals(argv: list[str]) -> tuple[list[str], set[str]]:
    """--debug and --quiet may come anywhere before a `--` (users add them at the end of a command)."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = {a for a in argv[:end] if a in GLOBAL_FLAGS}
    return [a for i, a in enumerate(argv) if i >= end or a not in GLOBAL_FLAGS], found


def _subparser(parser: Parser, args) -> Parser:
    """The parser of the command that was given (nested ones too, e.g. `eval run`)."""
    p = parser
    for dest in ("command", "eval_command"):
        action = next((a for a in p._actions if getattr(a, "dest", None) == dest and getattr(a, "choices", None)),
                      None)
        name = getattr(args, dest, None)
        if action is None or name not in action.choices:
            break
        p = action.choices[name]
    return p


def main(argv: list[str] | None = None) -> int:
    argv, flags = _split_globals(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = _subparser(parser, args)
        sub.error(explain_extras(sub, extras))
    args.debug = "--debug" in flags or os.environ.get("QWENVL_DEBUG", "") not in ("", "0")
    args.quiet = "--quiet" in flags
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    command = " ".join(c for c in (args.command, getattr(args, "eval_command", None)) if c)
    try:
        return args.func(args) or 0
    except Exception as e:                 # SystemExit (argparse, --help) passes untouched
        if args.debug:
            raise
        return report(e, args, command)
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        return report(e, args, command)


if __name__ == "__main__":
    sys.exit(main())
