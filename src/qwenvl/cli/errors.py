"""One error path for every subcommand: an exception becomes ONE line on stderr (what failed, which file
or flag, what to do) and a non-zero exit status; `--debug` (or QWENVL_DEBUG=1) shows the traceback.

Only exceptions whose cause is known are given a user message here. Anything else is reported as an
internal error with its type, so a bug is never dressed up as a user mistake (nor hidden).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys


class CLIError(Exception):
    """An expected failure, already phrased for the user: what failed, which file or flag, what to do."""


def one_line(text: str, limit: int = 400) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chain(exc: BaseException):
    """The exception and its explicit causes (`raise X from e`: a library error wrapped by another). Not
    __context__: a bug raised while handling a user error must not be reported as that user error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


def _name(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _model(args) -> str:
    return getattr(args, "model", None) or "the default model"


def describe(exc: BaseException, args=None) -> str | None:
    """The user message for an exception whose cause is known, else None (an internal error)."""
    for e in _chain(exc):
        msg = _describe_one(e, args)
        if msg:
            return msg
    return None


def _describe_one(e: BaseException, args) -> str | None:
    name = _name(e)
    if isinstance(e, CLIError):
        return str(e)
    if name.endswith("SafetensorError"):
        return (f"{_model(args)}: cannot read the checkpoint's .safetensors weights ({one_line(e, 160)}); "
                "the file is probably truncated or corrupt: download or export it again")
    if name.endswith("PdfiumError"):
        return f"cannot open the PDF ({one_line(e, 160)}): is it a complete, unencrypted PDF?"
    if name.startswith("httpx.") and type(e).__name__ in ("ConnectError", "ConnectTimeout"):
        url = getattr(args, "url", None) or "the server"
        return f"cannot connect to {url} ({one_line(e, 120)}): is a server running there? start one with `qwenvl serve`"
    if name.startswith("httpx.") and type(e).__name__ == "HTTPStatusError":
        r = e.response
        return f"{r.request.method} {r.request.url} answered HTTP {r.status_code}: {one_line(r.text, 160)}"
    if name.startswith("httpx.") and "Timeout" in type(e).__name__:
        return f"the server did not answer in time ({type(e).__name__}): raise --timeout or check the server's load"
    if name.startswith("PIL.") and type(e).__name__ == "UnidentifiedImageError":
        return f"not an image Pillow can read: {one_line(e, 200)}"
    if name.startswith("av.") or name.startswith("av.error"):
        file = getattr(e, "filename", None)
        return f"cannot decode the video{f' {file}' if file else ''} ({one_line(e, 160)}): is it a complete video file?"
    if isinstance(e, (MemoryError,)) or type(e).__name__ == "OutOfMemoryError":
        return ("out of memory: use a smaller --max-pixels, fewer video frames (--fps), --dtype bfloat16 or "
                "--quantize int8")
    if isinstance(e, IsADirectoryError):
        return f"{e.filename}: is a directory, expected a file"
    if isinstance(e, PermissionError):
        return f"{e.filename or one_line(e)}: permission denied"
    if isinstance(e, FileNotFoundError):
        # Raised by the project with a message ("x: no such image"), or by the OS with a filename.
        return f"{e.filename}: no such file or directory" if e.filename else one_line(e)
    if isinstance(e, UnicodeDecodeError):
        data = getattr(args, "data", None)
        hint = f"is --data {data} the right file?" if data else "pass the right file"
        return f"a file is not UTF-8 text ({one_line(e, 160)}): {hint}"
    if isinstance(e, OSError) and ("truncated" in str(e).lower() or "image file" in str(e).lower()):
        return f"a corrupt or truncated image ({one_line(e, 120)}): re-export or re-download it"
    if isinstance(e, ValueError):
        # The project's convention: bad input raises ValueError with a message naming the bad item.
        return one_line(e)
    return None


def report(exc: BaseException, args, command: str) -> int:
    """Print the one line for `exc`; return the exit status."""
    if isinstance(exc, KeyboardInterrupt):
        print(f"qwenvl {command}: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, BrokenPipeError):      # `qwenvl ... | head`: the reader left, nothing to say
        import os

        # Python flushes stdout again at exit and would complain about the closed pipe (docs: "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    msg = describe(exc, args)
    if msg is None:
        msg = (f"internal error: {type(exc).__name__}: {one_line(exc, 200)} (a bug; rerun with --debug for the "
               "traceback and report it)")
    print(f"qwenvl {command}: error: {one_line(msg, 600)}", file=sys.stderr)
    return 1


# ------------------------------------------------------------------------------------------ parsing

class Parser(argparse.ArgumentParser):
    """argparse with no abbreviated options (`--imag` is not `--image`) and one-line errors that name a
    close option ("did you mean --image?"). Subparsers inherit the class (argparse uses type(self))."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see '{self.prog} --help')\n")

    def option_names(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]


def explain_extras(parser: Parser, extras: list[str]) -> str:
    """Why arguments were left over: a mistyped option (and what it may have meant) or a stray word."""
    for word in extras:
        if word.startswith("-") and len(word) > 1:
            opt = word.split("=", 1)[0]
            close = difflib.get_close_matches(opt, parser.option_names(), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            return f"unknown option {opt}{hint}"
    quoted = " ".join(repr(w) for w in extras)
    return f"unexpected argument{'s' if len(extras) > 1 else ''} {quoted} (quote a prompt that has spaces)"
