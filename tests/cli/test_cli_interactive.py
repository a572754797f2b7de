"""The interactive `qwenvl chat` session, driven through stdin with a scripted pipeline: commands are never
sent to the model, Ctrl-C stops an answer and keeps the session, /save and /load round-trip."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import qwenvl
from qwenvl.cli.main import main
from qwenvl.pipeline import ChatResult


class ScriptedPipe:
    """stream() answers "answer N" word by word; a user text containing STOP raises KeyboardInterrupt after
    the first word, as Ctrl-C does in the middle of an answer."""

    def __init__(self):
        self.calls = []
        self.prefix_cache = None   # the session turns the real Pipeline's prefix cache on

    def stream(self, messages, on_token=None, **sampling):
        self.calls.append(json.loads(json.dumps(messages)))
        text = f"answer {len(self.calls)}"
        last = messages[-1]["content"][-1]["text"]
        for i, word in enumerate(text.split()):
            if on_token:
                on_token(i + 1)
            yield word if i == 0 else " " + word
            if "STOP" in last:
                raise KeyboardInterrupt
        return ChatResult(text, token_ids=[1, 2], prompt_tokens=3, finish_reason="stop")


def session(monkeypatch, capsys, own_ckpt, lines, *extra):
    pipe = ScriptedPipe()
    monkeypatch.setattr(qwenvl, "load", lambda *a, **k: pipe)
    feed = iter(lines)

    def fake_input(prompt=""):
        item = next(feed, EOFError)
        if isinstance(item, type) and issubclass(item, BaseException):
            raise item
        return item
    monkeypatch.setattr("builtins.input", fake_input)
    rc = main(["chat", "--model", str(own_ckpt), *extra])
    out = capsys.readouterr()
    return rc, pipe, out.out, out.err


def user_texts(messages):
    return [m["content"][-1]["text"] for m in messages if m["role"] == "user"]


def test_commands_interrupt_and_history(monkeypatch, capsys, own_ckpt, tmp_path):
    img = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), "orange").save(img)
    saved = tmp_path / "conv.json"
    rc, pipe, out, err = session(monkeypatch, capsys, own_ckpt, [
        "/help",
        "hello",
        "/image " + str(tmp_path / "missing.png"),      # refused: not attached
        "/image " + str(img),
        "what is this? STOP",                           # Ctrl-C in the middle of the answer
        KeyboardInterrupt,                              # Ctrl-C at the prompt: the session stays
        "/frobnicate",
        "and now?",
        "/save " + str(saved),
        "/quit",
    ])
    assert rc == 0
    # /help, /image, /frobnicate, /save never reached the model: three generations only
    assert [user_texts(c)[-1] for c in pipe.calls] == ["hello", "what is this? STOP", "and now?"]
    assert "/save PATH" in err and "/load PATH" in err                           # the help text
    assert "missing.png: no such file" in err
    assert f"attached image {img}" in err
    assert "answer stopped" in err and "unknown command /frobnicate" in err
    # the interrupted turn is not in the history; its attachment moves to the next message
    third = pipe.calls[2]
    assert user_texts(third) == ["hello", "and now?"]
    assert [m["content"] for m in third if m["role"] == "assistant"] == ["answer 1"]
    assert third[-1]["content"][0] == {"type": "image", "image": str(img)}
    assert "answer 1\n" in out and "answer 3\n" in out
    # /save wrote the conversation as JSON
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "user", "assistant"]
    assert data["messages"][-1]["content"] == "answer 3"


def test_load_continues_a_saved_conversation(monkeypatch, capsys, own_ckpt, tmp_path):
    saved = tmp_path / "conv.json"
    saved.write_text(json.dumps({"messages": [{"role": "user", "content": "earlier question"},
                                              {"role": "assistant", "content": "earlier answer"}]}))
    (tmp_path / "bad.json").write_text('{"messages": [{"role": "wizard"}]}')
    rc, pipe, out, err = session(monkeypatch, capsys, own_ckpt, [
        "/load " + str(tmp_path / "bad.json"),
        "/load " + str(saved),
        "go on",
    ])
    assert rc == 0                                    # EOF (Ctrl-D) ends the session cleanly
    assert "bad.json: message 0" in err and "loaded 2 message(s)" in err
    (call,) = pipe.calls
    assert [m["role"] for m in call] == ["user", "assistant", "user"]
    assert call[0]["content"] == "earlier question" and user_texts(call[2:]) == ["go on"]


def test_reset_keeps_the_system_prompt(monkeypatch, capsys, own_ckpt):
    rc, pipe, _, err = session(monkeypatch, capsys, own_ckpt, ["one", "/reset", "two"], "--system", "Be brief.")
    assert rc == 0 and "conversation cleared" in err
    assert [m["role"] for m in pipe.calls[1]] == ["system", "user"]
    assert pipe.calls[1][0]["content"] == "Be brief."


def test_ctrl_c_in_a_real_generation_keeps_the_session(monkeypatch, capsys, own_ckpt):
    """The real pipeline, interrupted from its token callback (where a signal lands mid-decode)."""
    from qwenvl.cli import progress

    real_generate = progress.generate
    calls = []

    def interrupting(pipe, messages, prog, **kw):
        calls.append(messages)
        if len(calls) == 1:
            def on_token(n):
                if n >= 2:
                    raise KeyboardInterrupt
            gen = pipe.stream(messages, on_token=on_token, max_new_tokens=8, temperature=0)
            for _ in gen:
                pass
        return real_generate(pipe, messages, prog, **kw)

    monkeypatch.setattr("qwenvl.cli.chat.generate", interrupting)
    feed = iter(["first", "second"])

    def fake_input(prompt=""):
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None
    monkeypatch.setattr("builtins.input", fake_input)
    rc = main(["chat", "--model", str(own_ckpt), "--dtype", "float32", "--max-new-tokens", "3",
               "--temperature", "0"])
    err = capsys.readouterr().err
    assert rc == 0 and "answer stopped" in err
    assert user_texts(calls[1]) == ["second"]        # the stopped turn left no trace in the history


@pytest.mark.parametrize("cmd", ["/image", "/video", "/save", "/load"])
def test_commands_need_a_path(monkeypatch, capsys, own_ckpt, cmd):
    rc, pipe, _, err = session(monkeypatch, capsys, own_ckpt, [cmd])
    assert rc == 0 and not pipe.calls and f"usage: {cmd} PATH" in err
