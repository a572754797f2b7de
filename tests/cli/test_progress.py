"""Progress on stderr: shown on a terminal (loading, prefill, a live token count for JSON output), silent
with --quiet or when stderr is not a terminal."""

from __future__ import annotations

import io
import json
import sys

from qwenvl.cli.main import main


class Terminal(io.StringIO):
    def isatty(self):
        return True


def terminal(monkeypatch) -> Terminal:
    """stderr as a terminal; set inside the test, since pytest swaps sys.stderr again after fixture setup."""
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    return term


def test_json_chat_shows_loading_prefill_and_tokens(own_ckpt, capsys, monkeypatch):
    tty_stderr = terminal(monkeypatch)
    assert main(["chat", "--model", str(own_ckpt), "--json", "--max-new-tokens", "5", "--temperature", "0",
                 "hi"]) == 0
    shown = tty_stderr.getvalue()
    assert "loading" in shown and "vision tower, prefill" in shown and "generating" in shown and "tok" in shown
    assert json.loads(capsys.readouterr().out)["token_ids"]     # stdout holds only the JSON


def test_quiet_and_not_a_terminal_are_silent(own_ckpt, capsys, monkeypatch):
    tty_stderr = terminal(monkeypatch)
    argv = ["chat", "--model", str(own_ckpt), "--json", "--max-new-tokens", "3", "hi"]
    assert main(argv + ["--quiet"]) == 0
    assert tty_stderr.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", io.StringIO())            # a log file or a pipe
    assert main(argv) == 0
    assert sys.stderr.getvalue() == ""


def test_on_token_counts_every_token(own_ckpt):
    import qwenvl

    pipe = qwenvl.load(own_ckpt)
    seen = []
    gen = pipe.stream([{"role": "user", "content": "hi"}], on_token=seen.append, max_new_tokens=6, temperature=0)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        result = stop.value
    assert seen == list(range(1, len(result.token_ids) + 1))
