"""Smoke test of `qwenvl bench` (no timing assertions) and of its FLOP/shape helpers."""

from __future__ import annotations

import json

import pytest

import torch

from qwenvl.fast import cpu
from qwenvl.bench.inference import make_request, preset_config, smart_grid, vision_flops
from qwenvl.cli.main import main


def test_bench_tiny_json(capsys):
    rc = main(["bench", "--preset", "tiny", "--json", "--skip-reference", "--image-size", "112x84",
               "--decode-tokens", "3", "--quantize", "int8", "--video-frames", "2,4", "--video-size", "56x56"])
    assert rc == 0
    captured = capsys.readouterr()
    r = json.loads(captured.out)
    assert "[bench" in captured.err  # the progress display
    assert r["grid"] == [1, 6, 8] and "transformers" not in r
    assert r["native_kernels"] == cpu.available()  # which decode products the figures come from
    ours = r["ours"]
    for key in ("vision_s", "ttft_s", "decode_tok_s", "peak_rss"):
        assert ours[key] > 0
    assert len(ours["tokens"]) == 4
    assert [v["frames"] for v in ours["video"]] == [2, 4]
    ceil = r["ceilings"]
    assert set(ceil) >= {"memory_read_gbs", "bf16_matmul_gflops", "fp32_matmul_gflops", "bf16_matvec_gbs"}
    # the physical ceilings bound every kernel measured beside them (with room for a shared machine's drift
    # between the measurements): no GEMM beats the cores' FMA peak, no matrix-vector product the memory
    if cpu.available():
        assert ceil["fma_peak_gflops"] > 0 and ceil["fma_peak_probe"] in cpu.peak_kinds()
        peaks = {"fp32": ceil["fma_peak_gflops"], "bf16": ceil.get("bf16_peak_gflops")}
        assert peaks["bf16"] is None or peaks["bf16"] >= 0.8 * peaks["fp32"]  # bf16 may always run as float32
        for fmt in ("bf16", "fp32"):
            for product in ("aten", "engine"):
                if peaks[fmt] is not None:
                    assert 0 < ceil[f"{fmt}_matmul_gflops_{product}"] < 1.5 * peaks[fmt]
        # the share of the run's format peak, where one bounds it (none for bf16 on AMX tiles)
        run_peak = peaks["bf16" if r["dtype"] == "bfloat16" else "fp32"]
        assert ("vision_pct_of_fma_peak" in s_of(r)) == (run_peak is not None)
        if run_peak is not None:
            assert 0 < s_of(r)["vision_pct_of_fma_peak"] < 150
        assert 0 < s_of(r)["decode_pct_of_memory_read"] < 150
    for fmt in ("bf16", "fp32"):
        assert 0 < ceil[f"{fmt}_matvec_gbs_engine"] < 1.5 * ceil["memory_read_gbs"]
    q = ours["int8"]
    assert 0 <= q["top1_agreement"] <= 1 and q["logits_rel_err"] < 0.1
    assert len(q["rounds"]) == 3 and q["speedup"] in [r["speedup"] for r in q["rounds"]]  # the median round
    assert r["load"]["weight_bytes"] == r["weight_bytes"]
    s = r["summary"]
    assert "vision_pct_of_bf16_matmul" in s
    # per window, the sustained ceiling (all sweeps together) is at most the best sweep's: a larger share
    assert all(w["matvec_gbs_sustained"] <= w["matvec_gbs"] for w in ours["decode_windows"])
    assert s["decode_pct_of_matvec_sustained"] >= s["decode_pct_of_matvec_interleaved"] > 0


def s_of(r: dict) -> dict:
    return r["summary"]


def test_fma_peak_is_measured_not_defined():
    """Each probe does the work it reports, and its rate is a rate of that work: the FLOP count scales with the
    iterations and the threads, and one thread's peak is at most about all threads' peak."""
    from qwenvl.bench.ceilings import fma_peak_gflops, peak_probe
    if not cpu.available():
        assert fma_peak_gflops(torch.device("cpu")) is None
        return
    threads = torch.get_num_threads()
    kinds = cpu.peak_kinds()
    assert kinds[0] == "avx2_fma"  # the native kernels need AVX2, so its probe always runs
    per_lane = {"avx2_fma": 8 * 2, "avx512_fma": 16 * 2, "avx512_bf16_dot": 16 * 4}
    for kind in kinds:
        assert cpu.fma_flops(1 << 12, kind) == pytest.approx(threads * (1 << 12) * 12 * per_lane[kind], rel=1e-6)
        assert cpu.fma_flops(1 << 14, kind) == pytest.approx(4 * cpu.fma_flops(1 << 12, kind), rel=1e-6)
        assert cpu.fma_rate(1 << 14, kind) > 0
    for kind in set(cpu.PEAK_KINDS) - set(kinds):
        with pytest.raises(ValueError, match=kind):
            cpu.fma_flops(1 << 12, kind)
    with pytest.raises(ValueError, match="sse"):
        cpu.fma_rate(1, "sse")
    assert peak_probe(torch.device("cpu"), "fp32") in kinds
    peak = fma_peak_gflops(torch.device("cpu"), seconds=0.05)
    try:
        torch.set_num_threads(1)
        one = fma_peak_gflops(torch.device("cpu"), seconds=0.05)
    finally:
        torch.set_num_threads(threads)
    assert 1 < one <= 1.2 * peak  # an AVX2 core does far more than 1 GFLOP/s
    assert fma_peak_gflops(torch.device("meta")) is None
    with pytest.raises(ValueError, match="fp8"):
        fma_peak_gflops(torch.device("cpu"), "fp8")


@pytest.mark.skipif(not cpu.available(), reason="the native kernels are not built here")
@pytest.mark.parametrize("n", [0, 7, 64, 1000003])
def test_read_probe_reads_every_element(n):
    """The streaming-read probe sums every element once, whatever the split between threads and streams (the
    tail past the last whole vector included), and takes only contiguous float32."""
    x = torch.randn(n, generator=torch.Generator().manual_seed(n), dtype=torch.float32)
    assert cpu.read_sum(x) == pytest.approx(x.double().sum().item(), abs=1e-3 * max(1, n) ** 0.5)
    with pytest.raises(ValueError, match="dtype"):
        cpu.read_sum(x.double())
    with pytest.raises(ValueError, match="contiguous"):
        cpu.read_sum(torch.ones(64, 2)[:, 0])


def test_grid_and_request():
    assert smart_grid(1280, 720) == (52, 92)  # the 1x52x92, 1196 LLM tokens
    cfg = preset_config("3b")
    req = make_request(cfg, (1, 52, 92))
    assert req.prompt_ids.count(cfg.image_token_id) == 1196
    assert req.pixel_values.shape == (4784, 1176)
    assert 5.5e12 < vision_flops(cfg, (1, 52, 92)) < 7e12  # "~6 TFLOP"


def test_truncated_preset_keeps_a_full_attention_block():
    cfg = preset_config("3b", vision_depth=4, text_layers=2)
    assert cfg.vision.depth == 4 and cfg.vision.fullatt_block_indexes == (3,)
    assert cfg.text.num_hidden_layers == 2


def test_greedy_verdict_says_what_is_expected():
    from qwenvl.bench.inference import greedy_verdict

    def report(first, dtype="bfloat16", compute="bfloat16", random=True):
        return {"summary": {"greedy_first_difference": first, "greedy_tokens_equal": "10/17"}, "dtype": dtype,
                "compute_dtype": compute, "random_weights": random}
    assert "identical" in greedy_verdict(report(None))
    v = greedy_verdict(report(10))
    assert "expected" in v and "random weights" in v and "bfloat16" in v and "token 10" in v
    assert "A real problem" in v
    # float32 weights and compute, a real checkpoint, a difference at the first token: a bug to report
    v = greedy_verdict(report(0, "float32", "float32", random=False))
    assert "NOT expected" in v and "report it" in v
