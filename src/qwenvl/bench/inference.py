"""Inference benchmark: this project and transformers side by side on the same weights and inputs.

One request = a prompt with one image (random pixels of the requested size, its grid as the processor
would compute it). Measured for each implementation, one after the other in this process (the first is
freed before the second loads):
- vision tower time (ours: the engine's timing of the tower inside the request; transformers: a forward
  hook on `model.visual` during `generate`), and per video size/frame count when asked;
- time to first token (tower + prefill + first token), decode tokens/s (greedy, EOS ignored);
- peak RSS while the implementation was loaded and ran.
Also: peak RSS of loading alone (a subprocess), the machine's ceilings, and for `--quantize int8` / `int4`
(or both: `--quantize int8,int4`) the quantized decode speed, top-1 agreement and logits error against the
floating-point model, in alternating rounds (int4 also against int8 when both run).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

from ..fast import cpu
from ..config import PRESETS, QwenVLConfig
from ..fast.int8 import weight_bytes
from ..model.layers import compute_dtype
from ..processing.image import smart_resize
from . import ceilings
from .ceilings import sync
from ..dtypes import DTYPES


# ------------------------------------------------------------------------------------------ helpers

class PeakRSS:
    """Samples this process's RSS in a thread; `peak` since the last reset."""

    def __init__(self, interval: float = 0.02):
        import psutil
        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return self.proc.memory_info().rss

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.now())

    def reset(self) -> None:
        """Start a new measurement: first hand memory freed by the previous one back to the OS (glibc keeps
        freed heap otherwise, and it would count in the next one's RSS)."""
        gc.collect()
        try:
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.peak = self.now()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def smart_grid(width: int, height: int, patch: int = 14) -> tuple[int, int]:
    """(grid_h, grid_w) in patches for an image resized like the Qwen processor."""
    h, w = smart_resize(height, width, factor=2 * patch)
    return h // patch, w // patch


def parse_size(s: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {s!r} is not WIDTHxHEIGHT (e.g. 1280x720)") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"size {s!r} must be positive")
    return w, h


def tiny_preset() -> QwenVLConfig:
    from ..tiny import build_tokenizer, tiny_config, token_ids
    tok = build_tokenizer()
    return tiny_config(token_ids(tok), vocab_size=tok.get_vocab_size() + 6)


def preset_config(name: str, vision_depth: int | None = None, text_layers: int | None = None) -> QwenVLConfig:
    if name == "tiny":
        cfg = tiny_preset()
    elif name in PRESETS:
        cfg = PRESETS[name]
    else:
        raise ValueError(f"unknown preset {name!r}: choose from tiny, {', '.join(PRESETS)}")
    return truncate(cfg, vision_depth, text_layers)


def truncate(cfg: QwenVLConfig, vision_depth: int | None, text_layers: int | None) -> QwenVLConfig:
    """Fewer layers of the same shapes (for quick iterations); keeps at least one full-attention block."""
    v, t = cfg.vision, cfg.text
    if vision_depth:
        full = tuple(i for i in v.fullatt_block_indexes if i < vision_depth) or (vision_depth - 1,)
        v = dataclasses.replace(v, depth=vision_depth, fullatt_block_indexes=full)
    if text_layers:
        t = dataclasses.replace(t, num_hidden_layers=text_layers)
    return dataclasses.replace(cfg, vision=v, text=t)


def vision_flops(cfg: QwenVLConfig, grid: tuple[int, int, int]) -> float:
    """Multiply-adds x 2 of the tower for one item: linear layers plus window / full attention."""
    from ..model.vision import vision_layout
    v = cfg.vision
    E, I, n = v.hidden_size, v.intermediate_size, grid[0] * grid[1] * grid[2]
    linear = 2 * n * (v.patch_dim * E
                      + v.depth * (3 * E * E + E * E + 3 * E * I))
    linear += 2 * (n // v.merge_unit) * (v.merge_unit * E) * (v.merge_unit * E + v.out_hidden_size)
    layout = vision_layout((tuple(grid),), v.spatial_merge_size, v.window_size // v.spatial_merge_size // v.patch_size)
    win = sum(g.shape[0] * g.shape[1] ** 2 for g in layout.windows.groups)
    full = sum(g.shape[0] * g.shape[1] ** 2 for g in layout.frames.groups)
    n_full = len(v.fullatt_block_indexes)
    attn = 4 * E * ((v.depth - n_full) * win + n_full * full)
    return float(linear + attn)


def prefill_flops(cfg: QwenVLConfig, L: int) -> float:
    t = cfg.text
    E, D = t.hidden_size, t.head_dim
    per_layer = E * t.num_attention_heads * D * 2 + 2 * E * t.num_key_value_heads * D + 3 * E * t.intermediate_size
    return float(2 * L * t.num_hidden_layers * per_layer + 2 * t.num_hidden_layers * L * L * t.num_attention_heads * D
                 + 2 * E * t.vocab_size)


def decode_bytes(model: nn.Module) -> int:
    """Bytes read per decoded token: the decoder's and the LM head's weights (not the embedding table)."""
    total, seen = 0, set()
    for mod in (model.language_model.layers, model.language_model.norm, model.lm_head):
        for t in list(mod.parameters()) + list(mod.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------------------------------ inputs

@dataclasses.dataclass
class Request:
    prompt_ids: list[int]
    pixel_values: torch.Tensor
    grid: torch.Tensor  # [1, 3]


def make_request(cfg: QwenVLConfig, grid: tuple[int, int, int], seed: int = 0, n_text: int = 16) -> Request:
    g = torch.Generator().manual_seed(seed)
    v = cfg.vision
    n = grid[0] * grid[1] * grid[2]
    pixels = torch.randn(n, v.patch_dim, generator=g)
    text_vocab = min(cfg.text.vocab_size, 151643, min(cfg.vision_start_token_id, cfg.image_token_id))
    words = torch.randint(0, text_vocab, (n_text,), generator=g).tolist()
    half = n_text // 2
    ids = (words[:half] + [cfg.vision_start_token_id] + [cfg.image_token_id] * (n // v.merge_unit)
           + [cfg.vision_end_token_id] + words[half:])
    return Request(ids, pixels, torch.tensor([list(grid)]))


# ------------------------------------------------------------------------------------------ ours

# Decode is timed in windows of this many steps, the matrix-vector ceiling re-measured between them.
DECODE_WINDOW = 4


def timed_generate(engine, seq, device: torch.device, probe=None) -> tuple[float, int, float, list[dict]]:
    """Run `seq` to the end on `engine`: (time to first token, decode steps, decode seconds, windows).
    Decode runs in windows of DECODE_WINDOW steps; with a `probe` (ceilings.MatvecProbe) the matrix-vector
    ceiling is re-measured after each window, so each window's share of it compares like with like."""
    t0 = time.perf_counter()
    engine.add(seq)
    sync(device)
    ttft = time.perf_counter() - t0
    steps, dt, windows = 0, 0.0, []
    while not seq.finished:
        t1, n = time.perf_counter(), 0
        while not seq.finished and n < DECODE_WINDOW:
            engine.step()
            n += 1
        sync(device)
        w = time.perf_counter() - t1
        steps, dt = steps + n, dt + w
        if probe is not None:
            times = probe.sweep_times(repeats=5, min_time=0.1)
            # the ceiling as the best sweep (a peak), and as all sweeps together (sustained, like the window)
            windows.append({"steps": n, "s": w, "matvec_gbs": max(probe.nbytes / min(t) / 1e9 for t in times.values()),
                            "matvec_gbs_sustained": max(probe.nbytes * len(t) / sum(t) / 1e9
                                                        for t in times.values())})
    engine.release(seq)
    return ttft, steps, dt, windows


def run_ours(model, cfg: QwenVLConfig, req: Request, args, device: torch.device, progress) -> dict:
    from ..engine.engine import Engine, Sequence
    from ..engine.sampling import SamplingParams

    out: dict = {}
    L = len(req.prompt_ids)
    warm = make_request(cfg, (1, 8, 8), seed=1)
    engine = Engine(model, max_batch=1, max_len=max(L, len(warm.prompt_ids)) + args.decode_tokens + 8,
                    compile=args.compile)

    probe = ceilings.MatvecProbe(model.language_model.embed_tokens.weight.dtype, device)
    out["probe_bytes"] = probe.nbytes

    def sequence(r: Request, n_new: int) -> Sequence:
        return Sequence(prompt_ids=r.prompt_ids,
                        params=SamplingParams(max_new_tokens=n_new, temperature=0, ignore_eos=True),
                        media={"pixel_values": r.pixel_values.to(device), "image_grid_thw": r.grid})

    progress("ours: warm-up")
    timed_generate(engine, sequence(warm, 3), device)
    progress(f"ours: one request ({L} prompt tokens, grid {req.grid[0].tolist()}), then {args.decode_tokens} tokens")
    seq = sequence(req, args.decode_tokens + 1)
    ttft, steps, dt, windows = timed_generate(engine, seq, device, probe)
    out["vision_s"] = seq.timings["vision_s"]
    out["ttft_s"] = ttft
    out["decode_tok_s"] = steps / dt if steps else None
    out["decode_windows"] = windows
    out["tokens"] = seq.output_ids
    return out


def time_tower(visual, pixels: torch.Tensor, grid: torch.Tensor, device: torch.device) -> float:
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        visual(pixels, grid)
        sync(device)
        return time.perf_counter() - t0


def video_times(visual, cfg: QwenVLConfig, frames: list[int], size: tuple[int, int], device, dtype, progress,
                label: str) -> list[dict]:
    gh, gw = smart_grid(*size)
    rows = []
    for n in frames:
        t = max(1, n // cfg.vision.temporal_patch_size)
        grid = (t, gh, gw)
        g = torch.Generator().manual_seed(n)
        pixels = torch.randn(t * gh * gw, cfg.vision.patch_dim, generator=g).to(device, dtype)
        progress(f"{label}: video tower, {n} frames of {size[0]}x{size[1]} (grid {grid}), twice")
        # the first call for a new grid also builds its window layout (cached): time the second one too
        first = time_tower(visual, pixels, torch.tensor([list(grid)]), device)
        s = time_tower(visual, pixels, torch.tensor([list(grid)]), device)
        rows.append({"frames": n, "grid": list(grid), "s": s, "s_per_frame": s / n, "first_call_s": first})
    return rows


# the floating-point and quantized models decode in turn for this many rounds; each speedup is the median round's.
INT8_ROUNDS = 3


def quant_kinds(value: str | list | tuple) -> list[str]:
    """`--quantize` value ("int8", "int4", "int8,int4") -> the kinds, checked."""
    kinds = [k.strip() for k in value.split(",")] if isinstance(value, str) else list(value)
    bad = [k for k in kinds if k not in ("int8", "int4")]
    if bad or not kinds:
        raise ValueError(f"--quantize takes int8, int4 or int8,int4; got {value!r}")
    return kinds


def quantizers() -> dict:
    """--quantize choice -> a function making a quantized copy of a model that shares its other tensors."""
    from ..fast.int4 import quantized_copy_int4
    from ..fast.int8 import quantized_copy
    from ..fast.native import use_native_kernels
    return {"int8": lambda m, **kw: use_native_kernels(quantized_copy(m, **kw)),
            "int4": lambda m, **kw: use_native_kernels(quantized_copy_int4(m, **kw))}


def quant_eval(model, cfg: QwenVLConfig, args, device, progress, kinds=("int8",)) -> dict:
    """Decode speed of the floating-point model and of quantized copies of it (`kinds`: int8, int4; each
    sharing every other tensor) on one short text prompt, and each copy's logits against the floating-point
    ones, teacher-forced on the float model's greedy tokens. The models decode in turn, INT8_ROUNDS times: on
    a shared machine bandwidth drifts by tens of percent within minutes, and a ratio of two runs minutes apart
    would measure the drift. Returns {kind: figures}; with int8 and int4 both, int4's figures also hold its
    speed over int8's (`speedup_vs_int8`, the median round's)."""
    from ..engine.engine import Engine, Sequence
    from ..engine.sampling import SamplingParams

    g = torch.Generator().manual_seed(7)
    text_vocab = min(cfg.text.vocab_size, 151643)
    prompt = torch.randint(0, text_vocab, (32,), generator=g).tolist()
    n = args.decode_tokens
    include = ("language_model", "lm_head") + (("visual",) if args.quantize_vision else ())
    copies = {k: quantizers()[k](model, include=include) for k in kinds}

    def decode(m, label):
        engine = Engine(m, max_batch=1, max_len=len(prompt) + n + 8, compile=args.compile)
        seq = Sequence(prompt_ids=prompt, params=SamplingParams(max_new_tokens=n + 1, temperature=0, ignore_eos=True))
        progress(f"{label} decode, {n} tokens")
        _, steps, dt, _ = timed_generate(engine, seq, device)
        return seq.output_ids, steps / dt

    def logits(m, ids):
        with torch.inference_mode():
            return m(torch.tensor([ids], device=device)).logits[0].float()

    rounds, tokens = [], {}
    for i in range(INT8_ROUNDS):
        speeds = {}
        ref_tokens, speeds["float"] = decode(model, f"round {i + 1}/{INT8_ROUNDS}: floating-point")
        for k, m in copies.items():
            tokens[k], speeds[k] = decode(m, f"round {i + 1}/{INT8_ROUNDS}: {k}")
        rounds.append(speeds)
    ids = prompt + ref_tokens[:-1]
    ref = logits(model, ids)
    span = slice(len(prompt) - 1, None)  # the positions that predicted the generated tokens
    out = {}
    for k, m in copies.items():
        per = [{"decode_tok_s_float": r["float"], f"decode_tok_s_{k}": r[k], "speedup": r[k] / r["float"]}
               for r in rounds]
        q = logits(m, ids)
        out[k] = {
            **sorted(per, key=lambda r: r["speedup"])[len(per) // 2],
            "rounds": per,
            "top1_agreement": float((q[span].argmax(-1) == ref[span].argmax(-1)).float().mean()),
            "logits_rel_err": float((q - ref).norm() / ref.norm()),
            "logits_max_abs_err": float((q - ref).abs().max()),
            "greedy_tokens_equal": sum(a == b for a, b in zip(tokens[k], ref_tokens)),
            f"weight_bytes_{k}": weight_bytes(m),
            f"decode_bytes_per_token_{k}": decode_bytes(m),
        }
    if "int8" in out and "int4" in out:
        ratios = sorted(r["int4"] / r["int8"] for r in rounds)
        out["int4"]["speedup_vs_int8"] = ratios[len(ratios) // 2]
        out["int4"]["rounds_vs_int8"] = [r["int4"] / r["int8"] for r in rounds]
    return out


# ------------------------------------------------------------------------------------------ transformers

def run_reference(path: Path, cfg: QwenVLConfig, req: Request, args, dtype, device, progress) -> dict:
    import transformers

    progress("transformers: loading")
    model_class = (transformers.Qwen2VLForConditionalGeneration if cfg.model_type == "qwen2_vl"
                   else transformers.Qwen2_5_VLForConditionalGeneration)
    hf = model_class.from_pretrained(
        path, torch_dtype=dtype, attn_implementation="sdpa").to(device).eval()
    out: dict = {}
    tower = {}

    def pre(_m, _a):
        sync(device)
        tower["t0"] = time.perf_counter()

    def post(_m, _a, _o):
        sync(device)
        tower["s"] = time.perf_counter() - tower["t0"]

    h1 = hf.visual.register_forward_pre_hook(pre)
    h2 = hf.visual.register_forward_hook(post)

    class Stamps(transformers.LogitsProcessor):
        def __init__(self):
            self.t = []

        def __call__(self, input_ids, scores):
            sync(device)
            self.t.append(time.perf_counter())
            return scores

    def generate(r: Request, n_new: int):
        ids = torch.tensor([r.prompt_ids], device=device)
        stamps = Stamps()
        t0 = time.perf_counter()
        with torch.inference_mode():
            seq = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              pixel_values=r.pixel_values.to(device, dtype), image_grid_thw=r.grid.to(device),
                              max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                              logits_processor=transformers.LogitsProcessorList([stamps]),
                              pad_token_id=0, eos_token_id=None)
        return seq[0, ids.shape[1]:].tolist(), t0, stamps.t

    progress("transformers: warm-up")
    generate(make_request(cfg, (1, 8, 8), seed=1), 3)
    progress(f"transformers: one request ({len(req.prompt_ids)} prompt tokens), then {args.decode_tokens} tokens "
             "(this is the slow part)")
    tokens, t0, stamps = generate(req, args.decode_tokens + 1)
    out["vision_s"] = tower["s"]
    out["ttft_s"] = stamps[0] - t0
    out["decode_tok_s"] = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None
    out["tokens"] = tokens
    if args.video_frames:
        out["video"] = video_times(hf.visual, cfg, args.video_frames, parse_size(args.video_size), device, dtype,
                                   progress, "transformers")
    h1.remove()
    h2.remove()
    del hf
    gc.collect()
    return out


# ------------------------------------------------------------------------------------------ loading

LOAD_PROBE = r"""
import json, sys, torch
from qwenvl.bench.inference import PeakRSS
from qwenvl.model.weights import load_model
from qwenvl.fast.int8 import weight_bytes
rss = PeakRSS(0.005)
base = rss.now()
m = load_model(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
after = rss.now()
with torch.no_grad():  # fault every (memory-mapped) weight page in, as the first forward would
    for p in m.parameters():
        p.sum()
touched = rss.now()
rss.stop()
print(json.dumps({"base_rss": base, "rss_after_load": after, "rss_after_touch": touched,
                  "peak_rss": max(rss.peak, touched), "weight_bytes": weight_bytes(m)}))
"""


def load_probe(path: Path, dtype: torch.dtype) -> dict:
    """Peak RSS of `load_model` alone, in a fresh process (CPU), sampled (ru_maxrss would include the
    parent's memory at fork), including faulting every memory-mapped weight in. Ratios are over the
    weights' bytes, above the process's RSS before loading."""
    name = str(dtype).removeprefix("torch.")
    r = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(path), name], capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    d = json.loads(r.stdout.strip().splitlines()[-1])
    d["peak_over_weights"] = (d["peak_rss"] - d["base_rss"]) / d["weight_bytes"]
    d["rss_after_over_weights"] = (d["rss_after_load"] - d["base_rss"]) / d["weight_bytes"]
    d["rss_touched_over_weights"] = (d["rss_after_touch"] - d["base_rss"]) / d["weight_bytes"]
    return d


# ------------------------------------------------------------------------------------------ the run

def have_transformers() -> bool:
    try:
        import transformers  # noqa: F401
        return True
    except ImportError:
        return False


def ratio(a, b):
    return None if not a or not b else a / b


def run(args, progress=lambda msg: None) -> dict:
    from ..fast import load_checkpoint, prepare
    from ..model.weights import random_model, save_model

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = parse_size(args.image_size)
    gh, gw = smart_grid(width, height)
    grid = (1, gh, gw)
    rss = PeakRSS()
    result: dict = {"command": "qwenvl bench " + " ".join(getattr(args, "argv", []) or []),
                    "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                    "compute_dtype": str(compute_dtype(dtype, device)).removeprefix("torch."),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "native_kernels": device.type == "cpu" and cpu.available(),
                    "image_size": [width, height], "grid": list(grid), "decode_tokens": args.decode_tokens}
    want_ref = not args.skip_reference and have_transformers()
    if not args.skip_reference and not want_ref:
        result["reference_skipped"] = "transformers is not installed"

    if not args.skip_ceilings:
        result["ceilings"] = ceilings.measure(device, progress)

    tmp = None
    try:
        if args.model:
            path = Path(args.model)
            cfg = truncate(QwenVLConfig.from_file(path), args.vision_depth, args.text_layers)
            if args.vision_depth or args.text_layers:
                raise ValueError("--vision-depth/--text-layers apply to --preset only")
        else:
            cfg = preset_config(args.preset, args.vision_depth, args.text_layers)
            tmp = tempfile.TemporaryDirectory(prefix="qwenvl-bench-", dir=args.tmp_dir)
            path = Path(tmp.name)
            progress(f"random {args.preset} weights -> {path}")
            m = random_model(cfg, dtype)
            save_model(m, path)
            del m
            gc.collect()
        result["model"] = args.model or args.preset
        result["random_weights"] = not args.model
        result["config"] = {"vision_depth": cfg.vision.depth, "text_layers": cfg.text.num_hidden_layers,
                            "text_hidden": cfg.text.hidden_size}
        req = make_request(cfg, grid)
        result["prompt_tokens"] = len(req.prompt_ids)
        flops_v = vision_flops(cfg, grid)
        flops_p = prefill_flops(cfg, len(req.prompt_ids))
        result["vision_tflop"] = flops_v / 1e12
        result["prefill_tflop"] = flops_p / 1e12

        if device.type == "cpu" and not args.skip_load_probe:
            progress("peak RSS of loading (subprocess)")
            result["load"] = load_probe(path, dtype)

        # ---- ours
        progress("ours: loading")
        rss.reset()
        model = prepare(load_checkpoint(path, dtype=dtype, device=device))
        result["weight_bytes"] = weight_bytes(model)
        ours = run_ours(model, cfg, req, args, device, progress)
        ours["decode_bytes_per_token"] = decode_bytes(model)
        if args.video_frames:
            ours["video"] = video_times(model.visual, cfg, args.video_frames, parse_size(args.video_size), device,
                                        dtype, progress, "ours")
        # before the int8 copy below, which is a measurement of its own; without the bench's own probe matrices
        ours["peak_rss"] = rss.peak - ours.pop("probe_bytes")
        if args.quantize:
            ours.update(quant_eval(model, cfg, args, device, progress, quant_kinds(args.quantize)))
        del model
        gc.collect()
        result["ours"] = ours

        # ---- transformers
        if want_ref:
            rss.reset()
            ref = run_reference(path, cfg, req, args, dtype, device, progress)
            ref["peak_rss"] = rss.peak
            result["transformers"] = ref
        if getattr(args, "peer", None) == "llama.cpp":
            from .peer import run_peer
            result["peer"] = run_peer(path, str(dtype).removeprefix("torch."), (width, height), args.decode_tokens,
                                      torch.get_num_threads(), progress, args.tmp_dir)
    finally:
        rss.stop()
        if tmp is not None:
            tmp.cleanup()

    summarize(result, flops_v, flops_p)
    return result


def summarize(r: dict, flops_v: float, flops_p: float) -> None:
    """Ratios: x faster than transformers, % of the machine's ceilings."""
    ours, ref, ceil = r["ours"], r.get("transformers"), r.get("ceilings", {})
    s: dict = {}
    s["vision_tflops_per_s"] = flops_v / ours["vision_s"] / 1e12
    s["ttft_tflops_per_s"] = (flops_v + flops_p) / ours["ttft_s"] / 1e12
    if ours.get("decode_tok_s"):
        s["decode_gb_s"] = ours["decode_bytes_per_token"] * ours["decode_tok_s"] / 1e9
    if ceil:
        bf16 = ceil["bf16_matmul_gflops"] * 1e9
        best = max(bf16, ceil["fp32_matmul_gflops"] * 1e9)
        s["vision_pct_of_bf16_matmul"] = 100 * flops_v / ours["vision_s"] / bf16
        s["vision_pct_of_best_matmul"] = 100 * flops_v / ours["vision_s"] / best
        s["ttft_pct_of_best_matmul"] = 100 * (flops_v + flops_p) / ours["ttft_s"] / best
        if "decode_gb_s" in s:
            key = {"bfloat16": "bf16_matvec_gbs", "float16": "bf16_matvec_gbs"}.get(r["dtype"], "fp32_matvec_gbs")
            s["decode_pct_of_matvec"] = 100 * s["decode_gb_s"] / ceil[key]
        # against the physical ceilings: the machine's limits, which no kernel of ours moves
        # the peak for the run's format: bf16 weights may run on bf16 dot-product instructions, far above float32
        peak_key = "bf16_peak_gflops" if r["dtype"] == "bfloat16" else "fma_peak_gflops"
        if ceil.get(peak_key):
            peak = ceil[peak_key] * 1e9
            s["vision_pct_of_fma_peak"] = 100 * flops_v / ours["vision_s"] / peak
            s["ttft_pct_of_fma_peak"] = 100 * (flops_v + flops_p) / ours["ttft_s"] / peak
        if "decode_gb_s" in s and ceil.get("memory_read_gbs"):
            s["decode_pct_of_memory_read"] = 100 * s["decode_gb_s"] / ceil["memory_read_gbs"]
    if ours.get("decode_windows"):
        # each window's bandwidth over the ceiling measured right after it; the median of those
        for suffix, key in (("interleaved", "matvec_gbs"), ("sustained", "matvec_gbs_sustained")):
            shares = sorted(ours["decode_bytes_per_token"] * w["steps"] / w["s"] / 1e9 / w[key]
                            for w in ours["decode_windows"])
            s[f"decode_pct_of_matvec_{suffix}"] = 100 * shares[len(shares) // 2]
    if ref:
        s["vision_x_faster"] = ratio(ref["vision_s"], ours["vision_s"])
        s["ttft_x_faster"] = ratio(ref["ttft_s"], ours["ttft_s"])
        s["decode_x_faster"] = ratio(ours.get("decode_tok_s"), ref.get("decode_tok_s"))
        s["peak_rss_ratio"] = ratio(ours["peak_rss"], ref["peak_rss"])
        n = min(len(ours["tokens"]), len(ref["tokens"]))
        s["greedy_tokens_equal"] = f"{sum(a == b for a, b in zip(ours['tokens'], ref['tokens']))}/{n}"
        # After the first different token the two continue from different text: only that position matters.
        s["greedy_first_difference"] = next((i for i, (a, b) in enumerate(zip(ours["tokens"], ref["tokens"]))
                                             if a != b), None)
        if ours.get("video") and ref.get("video"):
            s["video_x_faster"] = [ratio(b["s"], a["s"]) for a, b in zip(ours["video"], ref["video"])]
    if ours.get("video"):
        per = [v["s_per_frame"] for v in ours["video"]]
        s["video_per_frame_spread"] = max(per) / min(per)
    if "int4" in ours:
        s["int4_decode_x_float"] = ours["int4"]["speedup"]
        if "speedup_vs_int8" in ours["int4"]:
            s["int4_decode_x_int8"] = ours["int4"]["speedup_vs_int8"]
        s["int4_top1_agreement"] = ours["int4"]["top1_agreement"]
    if "int8" in ours:
        s["int8_decode_x_float"] = ours["int8"]["speedup"]
        if ceil and ceil.get("int8_matvec_gbs"):
            s["int8_decode_pct_of_int8_matvec"] = (100 * ours["int8"]["decode_bytes_per_token_int8"]
                                                   * ours["int8"]["decode_tok_s_int8"] / 1e9 / ceil["int8_matvec_gbs"])
    if r.get("peer"):
        from .peer import compare
        s.update(compare(ours, r["peer"]))
        if "skipped" in r["peer"]:
            s["peer_skipped"] = r["peer"]["skipped"]
    load = r.get("load")
    if load and "peak_over_weights" in load:
        s["load_peak_rss_over_weights"] = load["peak_over_weights"]
    r["summary"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}


def _fmt_bytes(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


MEANINGS = {
    "vision_pct_of_fma_peak": "tower FLOP/s as % of the cores' measured peak for the run's format (physical)",
    "ttft_pct_of_fma_peak": "tower + prefill FLOP/s against that peak",
    "decode_gb_s": "weight bytes read per second while decoding (bytes per token x tokens/s)",
    "decode_pct_of_memory_read": "that, as % of a plain streaming read's bandwidth (physical: decoding is "
                                 "memory-bound)",
    "vision_pct_of_bf16_matmul": "tower FLOP/s as % of the best bf16-weight GEMM measured here (a kernel, not a limit)",
    "vision_pct_of_best_matmul": "the same against the faster of the bf16 and fp32 GEMMs",
    "ttft_pct_of_best_matmul": "tower + prefill FLOP/s against that GEMM",
    "decode_pct_of_matvec": "decode bandwidth as % of the best matrix-vector product measured here (a kernel)",
    "decode_pct_of_matvec_interleaved": "median over decode windows, each against that product measured right "
                                        "after it",
    "decode_pct_of_matvec_sustained": "the same against the product's sustained (long-run) bandwidth",
    "load_peak_rss_over_weights": "peak memory while loading / weight bytes; 1.0 = no second copy",
    "greedy_tokens_equal": "greedy tokens identical to transformers', position by position",
    "greedy_first_difference": "index of the first token that differs (None: none differs)",
    "video_per_frame_spread": "slowest / fastest tower time per frame over the video lengths; 1.0 = linear",
    "int8_decode_x_float": "int8 decode speed / float decode speed",
    "int8_decode_pct_of_int8_matvec": "int8 decode bandwidth as % of the int8 matvec ceiling",
    "decode_x_llamacpp_bf16": "our bf16 decode tokens/s over llama.cpp's BF16 (F16 for float16 weights)",
    "decode_x_llamacpp_q8_0": "our int8 decode over llama.cpp's Q8_0",
    "decode_x_llamacpp_q4_0": "our int4 decode over llama.cpp's Q4_0",
    "vision_x_llamacpp": "llama.cpp's image encoder time (F16 mmproj) over our tower's",
    "ttft_x_llamacpp_bf16": "llama.cpp's time to first token (BF16) over ours",
    "ttft_x_llamacpp_q4_0": "llama.cpp's time to first token with Q4_0 over ours (bf16)",
}


def greedy_verdict(r: dict) -> str:
    """What the greedy comparison says: which differences are expected, and which would be a bug."""
    s = r["summary"]
    first = s.get("greedy_first_difference")
    if first is None:
        return "greedy tokens: identical to transformers."
    low = r["dtype"] != "float32" or r["compute_dtype"] != "float32"
    why = []
    if r.get("random_weights"):
        why.append("random weights give near-tied logits, so tiny numeric differences pick another token")
    if low:
        why.append(f"{r['dtype']} weights with {r['compute_dtype']} compute round differently from transformers' "
                   "kernels (and order sums differently)")
    after = f"they first differ at token {first}; after that the two continue from different text, so the count " \
            "of equal tokens past it means nothing"
    if why and (r.get("random_weights") or first > 0):
        return (f"greedy tokens: expected to differ here: {'; '.join(why)}. {after}. A real problem would be a "
                "difference in float32 (--dtype float32) at token 0 on real weights, or logits that disagree "
                "beyond rounding (tests/model check them against transformers).")
    return (f"greedy tokens: {after}. With float32 weights, or at token 0 on a real checkpoint, this is NOT "
            "expected: check the logits against transformers (tests/model) and report it.")


def format_table(r: dict) -> str:
    """Human-readable report."""
    s, ours, ref, ceil = r["summary"], r["ours"], r.get("transformers"), r.get("ceilings", {})
    lines = [f"qwenvl bench: {r['model']} ({r['config']['vision_depth']} vision / {r['config']['text_layers']} text "
             f"layers), {r['dtype']} weights, {r['compute_dtype']} compute, {r['device']}, {r['threads']} threads"
             + (", native CPU kernels" if r.get("native_kernels") else ""),
             f"image {r['image_size'][0]}x{r['image_size'][1]} -> grid {r['grid']}, {r['prompt_tokens']} prompt tokens; "
             f"tower {r['vision_tflop']:.2f} TFLOP, prefill {r['prefill_tflop']:.2f} TFLOP", ""]
    if ceil:
        lines.append("ceilings: " + ", ".join(f"{k} {v}" for k, v in ceil.items()))
    lines.append(f"{'':24}{'ours':>12}{'transformers':>14}{'x faster':>10}")

    def row(name, a, b, x, unit, fmt="{:.2f}"):
        bs = (fmt.format(b) + unit) if b is not None else "-"
        xs = f"{x:.2f}x" if x else "-"
        lines.append(f"{name:24}{fmt.format(a) + unit:>12}{bs:>14}{xs:>10}")

    row("vision tower", ours["vision_s"], ref and ref["vision_s"], s.get("vision_x_faster"), " s")
    row("time to first token", ours["ttft_s"], ref and ref["ttft_s"], s.get("ttft_x_faster"), " s")
    if ours.get("decode_tok_s"):
        row("decode", ours["decode_tok_s"], ref and ref.get("decode_tok_s"), s.get("decode_x_faster"), " t/s")
    lines.append(f"{'peak RSS':24}{_fmt_bytes(ours['peak_rss']):>12}"
                 f"{_fmt_bytes(ref['peak_rss']) if ref else '-':>14}")
    for k in ("vision_pct_of_bf16_matmul", "vision_pct_of_best_matmul", "ttft_pct_of_best_matmul",
              "decode_gb_s", "decode_pct_of_matvec", "decode_pct_of_matvec_interleaved",
              "decode_pct_of_matvec_sustained", "load_peak_rss_over_weights",
              "greedy_tokens_equal", "greedy_first_difference",
              "video_per_frame_spread", "int8_decode_x_float", "int8_decode_pct_of_int8_matvec",
              "int4_decode_x_float", "int4_decode_x_int8", "int4_top1_agreement",
              "decode_x_llamacpp_bf16", "decode_x_llamacpp_q8_0", "decode_x_llamacpp_q4_0", "vision_x_llamacpp",
              "ttft_x_llamacpp_bf16", "ttft_x_llamacpp_q4_0", "peer_skipped"):
        if k in s:
            value = f"{s[k]:.2f}" if isinstance(s[k], float) else str(s[k])
            lines.append(f"  {k}: {value}" + (f"   ({MEANINGS[k]})" if k in MEANINGS else ""))
    if "greedy_tokens_equal" in s:
        lines.append("  " + greedy_verdict(r))
    for v in ours.get("video", []):
        lines.append(f"  video ours {v['frames']} frames: {v['s']:.2f} s ({v['s_per_frame'] * 1e3:.1f} ms/frame)")
    for label, p in (r.get("peer") or {}).get("widths", {}).items():
        lines.append(f"  llama.cpp {label}: encoder {p['vision_s']:.2f} s, first token {p['ttft_s']:.2f} s "
                     f"({p['prompt_tokens']} prompt tokens), decode "
                     + (f"{p['decode_tok_s']:.2f} t/s" if p.get("decode_tok_s") else "-"))
    for kind in ("int8", "int4"):
        if kind in ours:
            q = ours[kind]
            lines.append(f"  {kind}: {q[f'decode_tok_s_{kind}']:.2f} t/s vs {q['decode_tok_s_float']:.2f} t/s float "
                         f"({q['speedup']:.2f}x), top-1 agreement {q['top1_agreement']:.3f}, "
                         f"logits rel err {q['logits_rel_err']:.4f}")
    return "\n".join(lines)
