"""`qwenvl bench --peer llama.cpp`: a clean skip where llama.cpp is not installed, the parsing of llama.cpp's
timing log, the orchestration (convert, quantize, llama-mtmd-cli, ratios) against stand-in tools that follow
llama.cpp's command lines, and, where llama.cpp is installed ($LLAMA_CPP_DIR), the Qwen2 tokenizer rebuilt
from its vocabulary file against llama.cpp's own expected token ids."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from qwenvl.bench.peer import compare, find_llamacpp, parse_mtmd_log, qwen2_tokenizer, run_peer, stage_checkpoint
from qwenvl.cli.main import main
from qwenvl.tiny import write_assets

# The lines llama-mtmd-cli logs (tools/mtmd/mtmd-helper.cpp, llama_perf_context_print), other lines between.
# (llama-mtmd-cli -lv 4 of llama-cpp-python 0.3.36's vendored llama.cpp, other lines left out)
LOG = """0.01.436.920 I encoding mtmd batch, n_chunks = 1 (done = 1, total = 3)
0.05.854.731 I mtmd batch encoding done in 4418 ms
0.05.854.770 I decoding image batch 1/1, n_tokens_batch = 144
0.06.586.708 I image decoded (batch 1/1) in 732 ms
0.07.449.601 I llama_perf_context_print:        load time =     480.69 ms
0.07.449.630 I llama_perf_context_print: prompt eval time =    5301.39 ms /   160 tokens (   33.13 ms per token,    30.18 tokens per second)
0.07.449.652 I llama_perf_context_print:        eval time =     648.46 ms /     8 runs   (   81.06 ms per token,    12.34 tokens per second)
0.07.449.670 I llama_perf_context_print:       total time =    6232.77 ms /   168 tokens
"""


def test_parse_mtmd_log():
    r = parse_mtmd_log(LOG)
    assert r["vision_s"] == pytest.approx(4.418) and r["prompt_eval_s"] == pytest.approx(5.30139)
    # the prompt evaluation spans the encoder: it is the time to first token
    assert r["prompt_tokens"] == 160 and r["ttft_s"] == pytest.approx(5.30139)
    assert r["decode_tok_s"] == pytest.approx(8 / 0.64846)
    # an encoder that ran before any decode (the older helper's line): the two add up
    older = LOG.replace("mtmd batch encoding done in 4418", "image slice encoded in 6000")
    assert parse_mtmd_log(older)["ttft_s"] == pytest.approx(6.0 + 5.30139)
    with pytest.raises(ValueError, match="no image encoding"):
        parse_mtmd_log(LOG.replace("encoding done", "encoding skipped"))


def test_skipped_cleanly_without_llamacpp(monkeypatch, tmp_path, capsys):
    from qwenvl.fast import cpu
    cpu.available()  # built (or not) with the real PATH first: the empty PATH below hides the C compiler
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    tools, why = find_llamacpp()
    assert tools is None and "llama-mtmd-cli" in why and "convert_hf_to_gguf.py" in why
    rc = main(["bench", "--preset", "tiny", "--json", "--skip-reference", "--skip-ceilings", "--skip-load-probe",
               "--image-size", "56x56", "--decode-tokens", "2", "--peer", "llama.cpp"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["peer"] == {"name": "llama.cpp", "skipped": why} and r["summary"]["peer_skipped"] == why


def fake_tools(d):
    """Stand-ins: the converter writes a file (the mmproj at F16), llama-quantize a smaller one,
    llama-mtmd-cli logs an encoder time and a decode speed inversely proportional to the decoder file's size
    (as a bandwidth-bound decoder would), after checking it got the image and the projector."""
    scripts = {
        "convert_hf_to_gguf.py": "import sys\nargs = sys.argv\n"
                                 "assert args[args.index('--outtype') + 1] == ('f16' if '--mmproj' in args else 'bf16')\n"
                                 "open(args[args.index('--outfile') + 1], 'wb').write(b'x' * 1600)\n",
        "llama-quantize": "import sys\nsize = {'Q8_0': 850, 'Q4_0': 450}[sys.argv[3]]\n"
                          "open(sys.argv[2], 'wb').write(b'x' * size)\n",
        "llama-mtmd-cli": "import os, sys\nfrom PIL import Image\na = sys.argv\nm = a[a.index('-m') + 1]\n"
                          "assert 'mmproj' in a[a.index('--mmproj') + 1] and a[a.index('-lv') + 1] == '4'\n"
                          "w, h = Image.open(a[a.index('--image') + 1]).size\nn = int(a[a.index('-n') + 1])\n"
                          "ms = os.path.getsize(m) / 10 * (n - 1)\n"
                          "print('image slice encoded in', w * h // 100, 'ms', file=sys.stderr)\n"
                          "print(f'llama_perf_context_print: prompt eval time = {os.path.getsize(m)}.00 ms /  "
                          "40 tokens (1.00 ms per token, 1.00 tokens per second)', file=sys.stderr)\n"
                          "print(f'llama_perf_context_print:        eval time = {ms:.2f} ms / {n - 1:5d} runs   "
                          "(1.00 ms per token, 1.00 tokens per second)', file=sys.stderr)\n",
    }
    for name, body in scripts.items():
        f = d / name
        f.write_text(f"#!{sys.executable}\n{body}")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)


def test_orchestration_with_stand_in_tools(monkeypatch, tmp_path):
    tools, ckpt = tmp_path / "tools", tmp_path / "ckpt"
    tools.mkdir()
    fake_tools(tools)
    write_assets(ckpt)   # a checkpoint with a tokenizer: converted from where it is
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tools))
    steps = []
    r = run_peer(ckpt, "bfloat16", (200, 100), 16, 2, steps.append)
    assert "skipped" not in r, r
    w = r["widths"]
    assert [round(v["decode_tok_s"], 2) for v in w.values()] == [6.25, 11.76, 22.22]
    assert [v["gguf_bytes"] for v in w.values()] == [1600, 850, 450]
    assert w["bf16"]["vision_s"] == 0.2 and w["bf16"]["ttft_s"] == pytest.approx(1.6)
    assert any("Q4_0" in s for s in steps)
    ours = {"decode_tok_s": 12.5, "vision_s": 0.1, "ttft_s": 0.8,
            "int8": {"decode_tok_s_int8": 11.76}, "int4": {"decode_tok_s_int4": 11.11}}
    ratios = compare(ours, r)
    assert round(ratios["decode_x_llamacpp_bf16"], 2) == 2.0 and round(ratios["decode_x_llamacpp_q4_0"], 2) == 0.5
    assert ratios["vision_x_llamacpp"] == pytest.approx(2.0) and ratios["ttft_x_llamacpp_bf16"] == pytest.approx(2.0)


def test_a_failing_converter_is_reported(monkeypatch, tmp_path):
    fake_tools(tmp_path)
    write_assets(tmp_path / "ckpt")
    (tmp_path / "convert_hf_to_gguf.py").write_text("import sys\nsys.exit('BPE pre-tokenizer was not recognized')\n")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    r = run_peer(tmp_path / "ckpt", "bfloat16", (56, 56), 16, 2, lambda m: None)
    assert "convert_hf_to_gguf.py failed" in r["skipped"] and "pre-tokenizer was not recognized" in r["skipped"]


def test_a_checkpoint_without_tokenizer_needs_the_vocabulary_file(monkeypatch, tmp_path):
    fake_tools(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    r = run_peer(tmp_path / "ckpt", "bfloat16", (56, 56), 16, 2, lambda m: None)
    assert "no tokenizer.json" in r["skipped"] and "ggml-vocab-qwen2.gguf" in r["skipped"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json"]   # nothing written there


LLAMA_CPP = os.environ.get("LLAMA_CPP_DIR")
VOCAB = Path(LLAMA_CPP or ".") / "models" / "ggml-vocab-qwen2.gguf"


@pytest.mark.skipif(not VOCAB.is_file(), reason="llama.cpp's source tree is not at $LLAMA_CPP_DIR")
def test_rebuilt_qwen2_tokenizer_matches_llamacpp_test_ids(tmp_path):
    tok = qwen2_tokenizer(VOCAB)
    texts = VOCAB.with_suffix(".gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
    expected = VOCAB.with_suffix(".gguf.out").read_text().split("\n")
    for text, ids in zip(texts, expected):
        assert tok.encode(text, add_special_tokens=False).ids == [int(i) for i in ids.split()], repr(text)
    assert [tok.token_to_id(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|file_sep|>")] == [151652, 151655,
                                                                                                  151664]
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "ckpt" / "tokenizer_config.json").write_text("{}")   # without its tokenizer.json
    staged = stage_checkpoint(tmp_path / "ckpt", VOCAB, tmp_path / "staged")
    assert (staged / "config.json").resolve() == (tmp_path / "ckpt" / "config.json").resolve()
    assert (tmp_path / "ckpt" / "tokenizer_config.json").read_text() == "{}"   # not written through a link
    assert {"tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"} <= {p.name for p in staged.iterdir()}
