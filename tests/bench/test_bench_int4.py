"""`qwenvl bench --quantize int8,int4`: both quantized copies measured in the same alternating rounds."""

from __future__ import annotations

import json

import pytest

from qwenvl.bench.inference import quant_kinds
from qwenvl.cli.main import main


def test_bench_int8_and_int4(capsys):
    rc = main(["bench", "--preset", "tiny", "--json", "--skip-reference", "--skip-ceilings", "--skip-load-probe",
               "--image-size", "56x56", "--decode-tokens", "3", "--quantize", "int8,int4"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    q4, q8 = r["ours"]["int4"], r["ours"]["int8"]
    assert len(q4["rounds"]) == len(q8["rounds"]) == 3
    assert q4["speedup"] in [x["speedup"] for x in q4["rounds"]]
    assert q4["speedup_vs_int8"] in q4["rounds_vs_int8"]
    assert 0 <= q4["top1_agreement"] <= 1 and q8["logits_rel_err"] < q4["logits_rel_err"] < 0.5
    assert q4["decode_bytes_per_token_int4"] < q8["decode_bytes_per_token_int8"]
    s = r["summary"]
    assert s["int4_decode_x_int8"] == round(q4["speedup_vs_int8"], 3) and "int4_top1_agreement" in s


def test_quantize_values():
    assert quant_kinds("int8,int4") == ["int8", "int4"] and quant_kinds("int4") == ["int4"]
    with pytest.raises(ValueError, match="int8, int4"):
        quant_kinds("int2")
