"""A random-weight checkpoint of a released architecture that every command loads (serve, chat, bench):
the preset's shapes (3b, 7b, 32b, 72b; `--text-layers` / `--vision-depth` for fewer layers of the
same widths) with the small byte-level tokenizer of the tests and Qwen's processor settings.

The preset's vocabulary size is kept, so the embedding and head cost what the release's do; the
special token ids are the small tokenizer's. Use it to measure the engine and the server at a real
model's size without a download (docs/serving.md: the second-turn TTFT on the 3B preset):

    python scripts/random_checkpoint.py 3b /tmp/qwen3b-random --dtype bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from qwenvl.bench.inference import preset_config
from qwenvl.dtypes import DTYPES
from qwenvl.model.weights import random_model, save_model
from qwenvl.tiny import write_assets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=["3b", "7b", "32b", "72b"])
    ap.add_argument("out")
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--text-layers", type=int)
    ap.add_argument("--vision-depth", type=int)
    args = ap.parse_args()
    ids, size = write_assets(args.out)
    cfg = preset_config(args.preset, args.vision_depth, args.text_layers)
    if size > cfg.text.vocab_size:
        raise SystemExit(f"the small tokenizer ({size} tokens) does not fit the preset's vocabulary")
    cfg = dataclasses.replace(
        cfg, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"])
    model = random_model(cfg, DTYPES[args.dtype])
    save_model(model, args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: random {args.preset}, {n / 1e9:.2f}B parameters, {args.dtype}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
