"""`qwenvl bench --peer llama.cpp`: a clean skip where llama.cpp is not installed, and the orchestration
(convert, quantize, llama-bench, ratios) against stand-in tools that follow llama.cpp's command lines."""

from __future__ import annotations

import json
import os
import stat
import sys

from qwenvl.bench.peer import compare, find_llamacpp, parse_llama_bench, run_peer
from qwenvl.cli.main import main

BENCH_JSON = [{"model_type": "qwen2vl 3B BF16", "n_prompt": 40, "n_gen": 0, "avg_ts": 120.5},
              {"model_type": "qwen2vl 3B BF16", "n_prompt": 0, "n_gen": 16, "avg_ts": 7.25}]


def test_parse_llama_bench_output():
    assert parse_llama_bench(json.dumps(BENCH_JSON)) == {"prompt_tok_s": 120.5, "decode_tok_s": 7.25}


def test_skipped_cleanly_without_llamacpp(monkeypatch, tmp_path, capsys):
    from qwenvl.fast import cpu
    cpu.available()  # built (or not) with the real PATH first: the empty PATH below hides the C compiler
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    tools, why = find_llamacpp()
    assert tools is None and "llama-bench" in why and "convert_hf_to_gguf.py" in why
    rc = main(["bench", "--preset", "tiny", "--json", "--skip-reference", "--skip-ceilings", "--skip-load-probe",
               "--image-size", "56x56", "--decode-tokens", "2", "--peer", "llama.cpp"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["peer"] == {"name": "llama.cpp", "skipped": why} and r["summary"]["peer_skipped"] == why


def fake_tools(d):
    """Stand-ins: the converter writes a file, llama-quantize a smaller one, llama-bench reports a speed
    inversely proportional to the file's size (as a bandwidth-bound decoder would)."""
    scripts = {
        "convert_hf_to_gguf.py": "import sys\nargs = sys.argv\nassert args[2:4] == ['--outtype', 'bf16']\n"
                                 "open(args[args.index('--outfile') + 1], 'wb').write(b'x' * 1600)\n",
        "llama-quantize": "import sys\nsize = {'Q8_0': 850, 'Q4_0': 450}[sys.argv[3]]\n"
                          "open(sys.argv[2], 'wb').write(b'x' * size)\n",
        "llama-bench": "import json, os, sys\na = sys.argv\nm, p, n = a[a.index('-m') + 1], a[a.index('-p') + 1], "
                       "a[a.index('-n') + 1]\nassert a[a.index('-o') + 1] == 'json'\ns = os.path.getsize(m)\n"
                       "print(json.dumps([{'n_prompt': int(p), 'n_gen': 0, 'avg_ts': 1e5 / s},"
                       " {'n_prompt': 0, 'n_gen': int(n), 'avg_ts': 1e4 / s}]))\n",
    }
    for name, body in scripts.items():
        f = d / name
        f.write_text(f"#!{sys.executable}\n{body}")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)


def test_orchestration_with_stand_in_tools(monkeypatch, tmp_path):
    fake_tools(tmp_path)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", os.environ["PATH"])
    steps = []
    r = run_peer(tmp_path, "bfloat16", 40, 16, 2, steps.append)
    assert "skipped" not in r, r
    assert [round(w["decode_tok_s"], 2) for w in r["widths"].values()] == [6.25, 11.76, 22.22]
    assert [w["gguf_bytes"] for w in r["widths"].values()] == [1600, 850, 450]
    assert any("Q4_0" in s for s in steps)
    ours = {"decode_tok_s": 12.5, "int8": {"decode_tok_s_int8": 11.76}, "int4": {"decode_tok_s_int4": 11.11}}
    ratios = compare(ours, r)
    assert round(ratios["decode_x_llamacpp_bf16"], 2) == 2.0 and round(ratios["decode_x_llamacpp_q4_0"], 2) == 0.5


def test_a_failing_converter_is_reported(monkeypatch, tmp_path):
    fake_tools(tmp_path)
    (tmp_path / "convert_hf_to_gguf.py").write_text("import sys\nsys.exit('no tokenizer.json')\n")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path))
    r = run_peer(tmp_path, "bfloat16", 40, 16, 2, lambda m: None)
    assert "convert_hf_to_gguf.py failed" in r["skipped"] and "no tokenizer.json" in r["skipped"]
