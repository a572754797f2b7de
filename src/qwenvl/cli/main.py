"""The `qwenvl` console script. Each subcommand lives in its own module under qwenvl.cli and exposes
`register(subparsers)`, which adds its parser and sets `func` (called with the parsed args)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules under qwenvl.cli, each adding one or more subcommands. Imported lazily by name so that a
# subcommand's heavy dependencies (uvicorn, pycocotools, ...) load only when it runs.
COMMAND_MODULES = ("chat", "serve", "tasks", "eval", "train", "bench", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwenvl", description="Qwen2.5-VL: chat, serve, tasks, train, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"qwenvl.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"qwenvl {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
