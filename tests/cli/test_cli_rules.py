"""--qwen-vl-utils-rules on chat, serve and eval run: parsed, defaulted to 0.0.11, and set on the
loaded pipeline's processor."""

from __future__ import annotations

import argparse

import pytest

import qwenvl
from qwenvl.cli import chat, eval as eval_cli, serve
from qwenvl.cli.main import main


def parse(register, argv):
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    return p.parse_args(argv)


def test_flag_on_each_command():
    assert parse(chat.register, ["chat", "hi"]).qwen_vl_utils_rules == "0.0.11"
    assert parse(chat.register, ["chat", "--qwen-vl-utils-rules", "0.0.14", "hi"]).qwen_vl_utils_rules == "0.0.14"
    assert parse(serve.register, ["serve", "--model", "m", "--qwen-vl-utils-rules", "0.0.14"]).qwen_vl_utils_rules == "0.0.14"
    args = parse(eval_cli.register, ["eval", "run", "--task", "t", "--data", "d", "--model", "m", "--out", "o",
                                     "--qwen-vl-utils-rules", "0.0.14"])
    assert args.qwen_vl_utils_rules == "0.0.14"
    with pytest.raises(SystemExit):
        parse(chat.register, ["chat", "--qwen-vl-utils-rules", "0.0.12", "hi"])


def test_chat_sets_the_rules_on_the_processor(own_ckpt, monkeypatch, capsys):
    seen = []
    real = qwenvl.load

    def load(*a, **kw):
        pipe = real(*a, **kw)
        seen.append(pipe)
        return pipe
    monkeypatch.setattr(qwenvl, "load", load)
    assert main(["chat", "--model", str(own_ckpt), "--dtype", "float32", "--max-new-tokens", "1",
                 "--qwen-vl-utils-rules", "0.0.14", "Hello"]) == 0
    assert seen[0].processor.settings.rules == "0.0.14"
    assert main(["chat", "--model", str(own_ckpt), "--dtype", "float32", "--max-new-tokens", "1", "Hello"]) == 0
    assert seen[1].processor.settings.rules == "0.0.11"


def test_cli_rule_names_match_processing():
    """The CLI spells the choices out (no torch import for --help); they must be processing's."""
    from qwenvl.cli import chat
    from qwenvl.processing import image
    assert chat.RULES == image.RULES and chat.DEFAULT_RULES == image.DEFAULT_RULES
