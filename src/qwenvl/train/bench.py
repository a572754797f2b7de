"""Training-step throughput, ours against transformers 4.51.3, on the same small model and batch.

    python -m qwenvl.train.bench [--steps 5] [--batch 16] [--no-reference]

A ~6M-parameter model of this architecture (vision 4 x 192, text 4 x 256, the tiny tokenizer) with
random weights, saved once by transformers and loaded by both. The batch: images of 112-336 px, a
short question and ~40 answer tokens each. One step = forward, backward and AdamW on the whole batch
(all parameters train). Ours is timed unpacked (padded rows) and packed (--max-len rows); transformers
gets the padded batch with the same labels, so the first-step losses must agree.

transformers is imported only for the reference timing (it is a test extra, never a runtime need).
"""

from __future__ import annotations

import argparse
import sys
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import TextConfig, VisionConfig
from ..model.weights import load_model, random_model, save_model
from ..tiny import tiny_config, write_assets
from .data import encode
from .pack import IGNORE, collate, plan_rows
from .step import Policy, run

WORDS = "the quick brown fox jumps over the lazy dog a red square on a white background two birds".split()


def bench_config(ids, vocab):
    """tiny_config's token ids and layout, at the benchmark's size."""
    import dataclasses
    cfg = tiny_config(ids, vocab_size=vocab)
    vision = VisionConfig(depth=4, hidden_size=192, intermediate_size=512, num_heads=3, out_hidden_size=256,
                          window_size=112, tokens_per_second=2, fullatt_block_indexes=(1, 3))
    text = TextConfig(vocab_size=vocab, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, mrope_section=(8, 12, 12))
    return dataclasses.replace(cfg, vision=vision, text=text)


def conversations(n: int, folder: Path, seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = rng.randrange(112, 337, 28), rng.randrange(112, 337, 28)
        path = folder / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        answer = " ".join(rng.choice(WORDS) for _ in range(30))
        out.append([{"role": "user", "content": [{"type": "image", "image": str(path)},
                                                 {"type": "text", "text": "Describe the image."}]},
                    {"role": "assistant", "content": answer}])
    return out


def time_steps(step, n: int) -> tuple[float, float]:
    """(median seconds per step over n timed steps, the warm-up step's loss). The median, because the
    machine may be shared."""
    first = step()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), first


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--no-reference", action="store_true", help="skip transformers")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    def say(msg: str) -> None:   # progress on stderr; stdout holds only the JSON result
        if not args.quiet:
            print(f"train bench: {msg}", file=sys.stderr, flush=True)

    say("building a random checkpoint and encoding the samples")

    from ..processing import Processor

    tmp = Path(tempfile.mkdtemp(prefix="qwenvl-train-bench-"))
    ids, vocab = write_assets(tmp)
    cfg = bench_config(ids, vocab + 6)
    save_model(random_model(cfg), tmp)
    model = load_model(tmp).train()
    n_params = sum(p.numel() for p in model.parameters())
    proc = Processor.from_pretrained(tmp)
    samples = [encode(proc, c, cfg) for c in conversations(args.batch, tmp)]
    tokens = sum(len(s) for s in samples)
    answer = sum(s.n_supervised for s in samples) / len(samples)
    policy = Policy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def ours(rows):
        batch = collate(rows, proc.tokenizer.pad_token_id or 0)

        def step():
            logp, _ = run(policy, batch)
            loss = -logp.sum() / batch.n_supervised
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())
        return step, batch

    results = {"params_M": round(n_params / 1e6, 2), "batch": args.batch, "tokens": tokens,
               "answer_tokens_per_sample": round(answer, 1), "threads": torch.get_num_threads()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, pack in (("ours_unpacked", False), ("ours_packed", True)):
        model.load_state_dict(state)
        say(f"timing {args.steps} steps of ours ({'packed' if pack else 'unpacked'})")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        step, batch = ours(plan_rows([[s] for s in samples], args.max_len, pack))
        sec, loss = time_steps(step, args.steps)
        fill = batch.stats["tokens"] / (batch.input_ids.numel())
        results[name] = {"s_per_step": round(sec, 3), "loss": round(loss, 5), "rows": batch.input_ids.shape[0],
                         "row_len": batch.input_ids.shape[1], "fill": round(fill, 3)}
        if pack:
            results[name]["packing_efficiency"] = round(batch.stats["tokens"] / (batch.input_ids.shape[0] * args.max_len), 3)

    if not args.no_reference:
        say(f"timing {args.steps} steps of transformers (the reference)")
        import transformers

        hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            tmp, torch_dtype=torch.float32, attn_implementation="sdpa").train()
        hopt = torch.optim.AdamW(hf.parameters(), lr=1e-5)
        b = proc([c for c in conversations(args.batch, tmp)], add_generation_prompt=False, padding_side="right")
        labels = torch.full_like(b["input_ids"], IGNORE)
        for i, s in enumerate(samples):  # our targets, unshifted: the same supervised tokens
            labels[i, 1:len(s)] = s.targets[:-1]
        inputs = {k: v for k, v in b.items()}

        def hf_step():
            loss = hf(**inputs, labels=labels).loss
            loss.backward()
            hopt.step()
            hopt.zero_grad(set_to_none=True)
            return float(loss.detach())
        sec, loss = time_steps(hf_step, args.steps)
        results["transformers"] = {"s_per_step": round(sec, 3), "loss": round(loss, 5), "version": transformers.__version__}
        for k in ("ours_unpacked", "ours_packed"):
            results[k]["speedup"] = round(sec / results[k]["s_per_step"], 2)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
