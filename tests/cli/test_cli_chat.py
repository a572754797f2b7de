"""`qwenvl chat` on a tiny checkpoint: --json, streaming, the interactive session and bad input."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

import qwenvl
from qwenvl.cli.main import main


def test_chat_json_matches_python_api(tiny_ckpt, tmp_path, capsys):
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(path)
    rc = main(["chat", "--model", str(tiny_ckpt), "--dtype", "float32", "--image", str(path), "--json",
               "--temperature", "0", "--max-new-tokens", "6", "What is it?"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"text", "token_ids", "prompt_tokens", "timings"}
    pipe = qwenvl.load(tiny_ckpt)
    ref = pipe.chat([{"role": "user", "content": [{"type": "image", "image": str(path)},
                                                  {"type": "text", "text": "What is it?"}]}],
                    max_new_tokens=6, temperature=0)
    assert out["token_ids"] == ref.token_ids and out["text"] == ref.text
    # streamed: the same text on stdout
    assert main(["chat", "--model", str(tiny_ckpt), "--dtype", "float32", "--image", str(path),
                 "--temperature", "0", "--max-new-tokens", "6", "What is it?"]) == 0
    assert capsys.readouterr().out == ref.text + "\n"


def test_interactive_session(tiny_ckpt, monkeypatch, capsys):
    """Each reply is what Pipeline.chat answers for the conversation so far (earlier turns and replies
    included), printed with a newline after it; the replies go to stdout, the session's notes to stderr."""
    from qwenvl.pipeline import Pipeline

    lines = iter(["hello", "and again", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    seen = []
    real = Pipeline.stream

    def stream(self, messages, *a, **kw):
        seen.append([dict(m) for m in messages])
        return real(self, messages, *a, **kw)

    monkeypatch.setattr(Pipeline, "stream", stream)
    assert main(["chat", "--model", str(tiny_ckpt), "--dtype", "float32", "--max-new-tokens", "4", "--temperature",
                 "0"]) == 0
    out = capsys.readouterr().out
    monkeypatch.setattr(Pipeline, "stream", real)

    pipe = qwenvl.load(tiny_ckpt)
    turn = lambda text: {"role": "user", "content": [{"type": "text", "text": text}]}  # noqa: E731
    first = pipe.chat([turn("hello")], max_new_tokens=4, temperature=0)
    history = [turn("hello"), {"role": "assistant", "content": first.text}, turn("and again")]
    second = pipe.chat(history, max_new_tokens=4, temperature=0)
    assert seen == [[turn("hello")], history]   # the second turn carried the first one and its reply
    assert out == first.text + "\n" + second.text + "\n"


def test_missing_image_is_a_clear_error(tiny_ckpt, tmp_path, capsys):
    rc = main(["chat", "--model", str(tiny_ckpt), "--image", str(tmp_path / "nope.png"), "hi"])
    assert rc == 1
    assert "nope.png" in capsys.readouterr().err


def test_quantize_int8_flag_matches_python_api(tiny_ckpt, capsys):
    rc = main(["chat", "--model", str(tiny_ckpt), "--dtype", "float32", "--quantize", "int8", "--json",
               "--temperature", "0", "--max-new-tokens", "5", "Hello"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    ref = qwenvl.load(tiny_ckpt, quantize="int8").chat([{"role": "user", "content": "Hello"}], max_new_tokens=5,
                                                       temperature=0)
    assert out["token_ids"] == ref.token_ids


def test_compile_flag_reaches_the_pipeline(tiny_ckpt, monkeypatch, capsys):
    seen = {}
    real = qwenvl.load

    def load(*a, **kw):
        seen.update(kw)
        return real(*a, **{**kw, "compile": False})  # what the compiled engine computes is tested in tests/engine
    monkeypatch.setattr(qwenvl, "load", load)
    assert main(["chat", "--model", str(tiny_ckpt), "--compile", "--max-new-tokens", "2", "Hello"]) == 0
    assert seen["compile"] is True
