"""Everyday mistakes through every subcommand: ONE line on stderr naming the file or flag, a non-zero exit,
never a traceback (cli/errors.py); --debug lets the traceback through."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qwenvl
from qwenvl.cli.main import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def fails(capsys, argv, *expect, rc=None):
    """Run the CLI; assert a non-zero exit and exactly one line on stderr containing `expect`."""
    try:
        code = main(argv)
    except SystemExit as e:          # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), err
    if rc is not None:
        assert code == rc
    assert "Traceback" not in err
    assert len(lines) == 1, err
    for e in expect:
        assert e in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mistakes")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))
    img.save(d / "good.png")
    img.save(d / "good.jpg", quality=90)
    for name in ("good.jpg", "good.png"):                   # cut short, as an interrupted copy leaves them
        data = (d / name).read_bytes()
        (d / name.replace("good", "truncated")).write_bytes(data[: len(data) // 2])
    (d / "notes.png").write_text("this is text, not a picture")
    (d / "bad.pdf").write_bytes(b"%PDF-1.4\n this is not really a pdf\n")
    (d / "bad.mp4").write_bytes(b"\x00\x01 not a video at all" * 10)
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x81garbage\n")
    (d / "wrong.jsonl").write_text(json.dumps({"image": "good.png", "answer": "x"}) + "\n")
    return d


@pytest.fixture(scope="module")
def broken_ckpt(own_ckpt, tmp_path_factory):
    """The tiny checkpoint with its weights cut short (an interrupted download)."""
    d = tmp_path_factory.mktemp("broken") / "ckpt"
    shutil.copytree(own_ckpt, d)
    for f in d.glob("*.safetensors"):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    return d


@pytest.fixture
def no_load(monkeypatch):
    """A model load during these tests is a failure: every mistake must be caught before it."""
    def load(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")
    monkeypatch.setattr(qwenvl, "load", load)


# ------------------------------------------------------------------------------------------ broken inputs

@pytest.mark.parametrize("name", ["truncated.jpg", "truncated.png", "notes.png"])
def test_corrupt_image(files, own_ckpt, capsys, no_load, name):
    path = str(files / name)
    m = str(own_ckpt)
    fails(capsys, ["ground", path, "the dog", "--model", m], name, "not a readable image")
    fails(capsys, ["parse-doc", path, "--model", m], name, "not a readable image")
    fails(capsys, ["chat", "--model", m, "--image", path, "what is it?"], "--image", name, "not a readable image")


def test_bad_pdf(files, own_ckpt, capsys, no_load):
    pytest.importorskip("pypdfium2")
    fails(capsys, ["parse-doc", str(files / "bad.pdf"), "--model", str(own_ckpt)], "bad.pdf", "not a readable PDF")


def test_truncated_safetensors(files, broken_ckpt, capsys, no_load):
    line = fails(capsys, ["chat", "--model", str(broken_ckpt), "hi"], "--model", ".safetensors", "again")
    assert "model.safetensors" in line or "unreadable" in line
    fails(capsys, ["ground", str(files / "good.png"), "x", "--model", str(broken_ckpt)], "unreadable")


def test_truncated_safetensors_past_the_checks(broken_ckpt, capsys, monkeypatch):
    """The same failure raised by the loader itself (the check skipped) is still one line."""
    monkeypatch.setattr("qwenvl.cli.chat.check_model", lambda m: m)
    fails(capsys, ["chat", "--model", str(broken_ckpt), "--dtype", "float32", "hi"], ".safetensors", "truncated")


def test_missing_model(files, tmp_path, capsys, no_load):
    nope = str(tmp_path / "no-such-model")
    for argv in (["chat", "--model", nope, "hi"], ["ground", str(files / "good.png"), "x", "--model", nope],
                 ["parse-doc", str(files / "good.png"), "--model", nope],
                 ["serve", "--model", nope], ["bench", "--model", nope, "--skip-reference"]):
        fails(capsys, argv, "no-such-model", "no such checkpoint directory")
    (tmp_path / "empty").mkdir()
    fails(capsys, ["chat", "--model", str(tmp_path / "empty"), "hi"], "no config.json")
    fails(capsys, ["chat", "--model", str(files / "good.png"), "hi"], "not a directory")


def test_missing_files(files, own_ckpt, tmp_path, capsys, no_load):
    m = str(own_ckpt)
    fails(capsys, ["ground", str(tmp_path / "nope.png"), "x", "--model", m], "nope.png", "no such file")
    fails(capsys, ["parse-doc", str(tmp_path / "nope.pdf"), "--model", m], "nope.pdf", "no such file")
    fails(capsys, ["chat", "--model", m, "--image", str(tmp_path / "nope.jpg"), "hi"], "nope.jpg", "no such file")
    fails(capsys, ["locate", str(tmp_path / "nope.mp4"), "x", "--model", m], "nope.mp4", "no such file")
    fails(capsys, ["chat", "--model", m, "--video", str(tmp_path / "nope.mp4"), "hi"], "--video", "nope.mp4")
    fails(capsys, ["ground", str(files), "x", "--model", m], "is a directory")
    fails(capsys, ["ground", str(files / "good.png"), "x", "--model", m, "--save", str(tmp_path / "no/dir/o.png")],
          "--save", "does not exist")


def test_corrupt_video(files, own_ckpt, capsys, no_load):
    pytest.importorskip("av")
    fails(capsys, ["locate", str(files / "bad.mp4"), "x", "--model", str(own_ckpt)], "bad.mp4", "not a readable video")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(files, own_ckpt, capsys, no_load):
    m = str(own_ckpt)
    for argv in (["chat", "--model", m, "--device", "cuda", "hi"],
                 ["ground", str(files / "good.png"), "x", "--model", m, "--device", "cuda:0"],
                 ["serve", "--model", m, "--device", "cuda"],
                 ["bench", "--preset", "tiny", "--device", "cuda"]):
        fails(capsys, argv, "--device cuda", "CUDA is not available", "--device cpu")
    fails(capsys, ["chat", "--model", m, "--device", "gpu", "hi"], "--device gpu", "not a device")


# ------------------------------------------------------------------------------------------ eval

def test_eval_wrong_annotation_file(files, own_ckpt, tmp_path, capsys, no_load):
    base = ["eval", "run", "--model", str(own_ckpt), "--out", str(tmp_path / "out")]
    line = fails(capsys, base + ["--task", "docvqa", "--data", str(files / "wrong.jsonl")],
                 "wrong.jsonl", "'question'", "docvqa")
    assert line.startswith("qwenvl eval run: error:")
    fails(capsys, base + ["--task", "docvqa", "--data", str(files / "binary.jsonl")], "binary.jsonl", "cannot read")
    fails(capsys, base + ["--task", "docvqa", "--data", str(tmp_path / "nope.jsonl")], "nope.jsonl", "no such file")
    fails(capsys, base + ["--task", "nosuchtask", "--data", str(files / "wrong.jsonl")], "unknown task")
    fails(capsys, ["eval", "score", "--task", "docvqa", "--data", str(files / "wrong.jsonl"),
                   "--predictions", str(tmp_path / "p.jsonl")], "p.jsonl", "no such predictions file")


# ------------------------------------------------------------------------------------------ train

def test_train_mistakes(files, own_ckpt, tmp_path, capsys):
    out = str(tmp_path / "run")
    fails(capsys, ["train", "--model", str(tmp_path / "nope"), "--data", str(files / "wrong.jsonl"), "--out", out],
          "nope")
    fails(capsys, ["train", "--model", str(own_ckpt), "--data", str(tmp_path / "nope.jsonl"), "--out", out],
          "nope.jsonl", "no such file")
    if not __import__("torch").cuda.is_available():
        fails(capsys, ["train", "--model", str(own_ckpt), "--data", str(files / "wrong.jsonl"), "--out", out,
                       "--device", "cuda"], "--device cuda", "CUDA is not available")
    fails(capsys, ["train", "--model", str(own_ckpt), "--data", str(files / "wrong.jsonl"), "--out", out,
                   "--max-step", "3"], "unknown option --max-step", "--max-steps", rc=2)


# ------------------------------------------------------------------------------------------ bench-serve

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("suffix", ["", "/v1"])
def test_bench_serve_without_a_server(capsys, suffix):
    pytest.importorskip("httpx")
    url = f"http://127.0.0.1:{_free_port()}{suffix}"
    fails(capsys, ["bench-serve", "--url", url, "--requests", "1", "--concurrency", "1"],
          "cannot connect", "127.0.0.1", "qwenvl serve")


def test_bench_serve_flags(capsys, files):
    fails(capsys, ["bench-serve", "--url", "localhost:8000"], "--url", "http://")
    fails(capsys, ["bench-serve", "--concurrency", "1,x"], "--concurrency")
    fails(capsys, ["bench-serve", "--concurrency", "0"], "--concurrency")
    fails(capsys, ["bench-serve", "--image", str(files / "notes.png")], "notes.png", "not a readable image")


def test_base_url():
    from qwenvl.cli.serve import base_url

    assert base_url("http://h:8000/v1") == base_url("http://h:8000/v1/") == "http://h:8000"
    assert base_url("http://h:8000/v1/chat/completions") == "http://h:8000"
    assert base_url("https://x.org/api") == "https://x.org/api"


# ------------------------------------------------------------------------------------------ parsing

def test_typo_is_not_a_prompt(files, own_ckpt, capsys, no_load):
    photo = str(files / "good.jpg")
    line = fails(capsys, ["chat", "--imge", photo, "hi"], "unknown option --imge", "did you mean --image?", rc=2)
    assert line.startswith("qwenvl chat: error:")
    fails(capsys, ["chat", "--imag", photo, "hi"], "--imag", "--image", rc=2)       # no abbreviations
    fails(capsys, ["chat", "--model", str(own_ckpt), photo], "is a file", f"--image {photo}")
    fails(capsys, ["chat", "what", "is", "this"], "unexpected arguments", "quote", rc=2)
    fails(capsys, ["ground", photo], "required", rc=2)
    fails(capsys, ["eval", "run", "--task", "docvqa", "--dat", "x"], "--dat", rc=2)


@pytest.mark.parametrize("argv, flag", [
    (["chat", "--max-new-tokens", "0", "hi"], "--max-new-tokens"),
    (["chat", "--top-p", "1.5", "hi"], "--top-p"),
    (["chat", "--temperature", "-1", "hi"], "--temperature"),
    (["chat", "--fps", "zero", "hi"], "--fps"),
    (["locate", "v.mp4", "x", "--fps", "0"], "--fps"),
    (["parse-doc", "p.pdf", "--dpi", "-72"], "--dpi"),
    (["ground", "a.png", "x", "--max-pixels", "0"], "--max-pixels"),
    (["eval", "run", "--task", "t", "--data", "d", "--model", "m", "--out", "o", "--limit", "0"], "--limit"),
])
def test_numbers_out_of_range(capsys, argv, flag):
    fails(capsys, argv, flag, rc=2)


def test_min_over_max_pixels(files, own_ckpt, capsys, no_load):
    fails(capsys, ["ground", str(files / "good.png"), "x", "--model", str(own_ckpt), "--min-pixels", "5000",
                   "--max-pixels", "1000"], "--min-pixels", "--max-pixels")


# ------------------------------------------------------------------------------------------ unknown failures

def test_internal_error_is_one_line_and_debug_shows_it(files, own_ckpt, capsys, monkeypatch):
    def load(*a, **k):
        raise TypeError("boom")
    monkeypatch.setattr(qwenvl, "load", load)
    argv = ["chat", "--model", str(own_ckpt), "hi"]
    fails(capsys, argv, "internal error", "TypeError", "boom", "--debug")
    with pytest.raises(TypeError):
        main(argv + ["--debug"])
    with pytest.raises(TypeError):
        main(["--debug"] + argv)


def test_interrupt(own_ckpt, capsys, monkeypatch):
    def load(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(qwenvl, "load", load)
    fails(capsys, ["chat", "--model", str(own_ckpt), "hi"], "interrupted", rc=130)


def test_as_a_process(files):
    """What a user sees from the console script: one line, exit 1, no traceback."""
    r = subprocess.run([sys.executable, "-m", "qwenvl.cli.main", "ground", str(files / "truncated.jpg"), "x"],
                       capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "truncated.jpg" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------ --help

def test_help_does_not_import_torch():
    code = ("import sys; from qwenvl.cli.main import build_parser; p = build_parser(); "
            "p.format_help(); [a.choices[c].format_help() for a in p._actions if getattr(a, 'choices', None) "
            "for c in a.choices]; import qwenvl; qwenvl.DEFAULT_MODEL; print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC},
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


@pytest.mark.parametrize("argv", [["--help"], ["chat", "--help"], ["eval", "run", "--help"], ["train", "--help"]])
def test_help_is_fast(argv):
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "qwenvl.cli.main", *argv], capture_output=True,
                       text=True, env={"PYTHONPATH": SRC}, timeout=60)
    assert r.returncode == 0 and "usage: qwenvl" in r.stdout
    rows = [line.split("|") for line in r.stderr.splitlines()
            if line.startswith("import time:") and line.split("|")[1].strip().isdigit()]
    imported = {row[2].strip() for row in rows}
    assert "torch" not in imported and "numpy" not in imported
    # import time of everything, in microseconds (the cumulative column of the top-level modules)
    total = sum(int(row[1]) for row in rows if not row[2].startswith("  "))
    assert total < 800_000, total


def test_train_stage_names_match():
    from qwenvl.cli.train import STAGES
    from qwenvl.train.setup import STAGES as REAL

    assert tuple(STAGES) == tuple(REAL)


def test_lazy_package_attributes():
    assert callable(qwenvl.load) and qwenvl.SamplingParams is not None and "3b" in qwenvl.PRESETS
    assert "load" in dir(qwenvl)
    with pytest.raises(AttributeError):
        qwenvl.no_such_name


def test_a_bug_while_handling_a_user_error_is_still_a_bug():
    from qwenvl.cli.errors import describe

    try:
        try:
            raise ValueError("bad input")
        except ValueError:
            raise TypeError("a bug in the handler")
    except TypeError as e:
        assert describe(e) is None                      # reported as an internal error, not as "bad input"
    try:
        try:
            raise OSError("image file is truncated")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as e:
        assert "truncated" in describe(e)               # an explicit cause is followed
