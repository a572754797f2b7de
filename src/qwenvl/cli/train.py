"""`qwenvl train`: fine-tune or continue pre-training a Qwen2.5-VL checkpoint (qwenvl.train).

    qwenvl train --stage sft --model CKPT --data train.jsonl --out runs/sft --max-steps 1000 --pack
    torchrun --nproc_per_node 8 -m qwenvl.cli.main train ...      # FSDP2 over 8 processes
"""

from __future__ import annotations

import dataclasses
import json


def register(sub) -> None:
    from ..train.setup import STAGES

    p = sub.add_parser("train", help="train a model (stages: " + ", ".join(STAGES) + ")",
                       description="Train on JSONL conversations (qwen-vl-finetune or messages format) or "
                       "preference records (dpo). The result is exported to OUT/final in the Hugging Face layout. "
                       "See docs/training.md.")
    a = p.add_argument
    a("--stage", default="sft", choices=list(STAGES), help="what trains and the defaults (default: sft)")
    a("--model", required=True, help="base checkpoint directory (Hugging Face layout)")
    a("--data", required=True, help="training JSONL")
    a("--out", required=True, help="output directory: metrics.jsonl, checkpoints/, final/")
    a("--data-root", help="folder for relative media paths (default: the JSONL's folder)")
    a("--on-bad-record", default="skip", choices=["skip", "fail"],
      help="a record with missing/undecodable media or mismatched tags: report and skip, or stop")
    a("--max-steps", type=int, default=100)
    a("--lr", type=float, help="learning rate of the LLM and merger (default: the stage's)")
    a("--vision-lr", type=float, help="ViT learning rate (default: lr x the stage's scale)")
    a("--merger-lr", type=float, help="merger learning rate (default: lr)")
    a("--weight-decay", type=float, default=0.0)
    a("--warmup", type=float, default=0.03, help="warmup: a fraction of --max-steps (< 1) or steps")
    a("--min-lr-ratio", type=float, default=0.0, help="cosine floor as a fraction of the peak lr")
    a("--grad-clip", type=float, default=1.0)
    a("--batch-size", type=int, default=1, help="rows per micro-batch (per process)")
    a("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    a("--max-len", type=int, help="tokens per row (default: the stage's); longer samples are bad records")
    a("--pack", action="store_true", help="pack samples best-fit-decreasing into rows of --max-len tokens")
    a("--pack-buffer", type=int, default=64, dest="chunk", help="records packed together (default 64)")
    a("--fps-range", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
      help="dynamic FPS: each video sample draws its sampling fps from this range")
    a("--fixed-fps", action="store_true", help="no dynamic FPS: videos use the item's or the default fps")
    a("--max-pixels", type=int, help="per-image maximum pixels")
    a("--min-pixels", type=int, help="per-image minimum pixels")
    a("--video-max-pixels", type=int, help="per-frame maximum pixels")
    a("--beta", type=float, default=0.1, help="DPO beta")
    a("--sft-weight", type=float, default=0.0, help="DPO: weight of an added SFT loss on the chosen replies")
    a("--lora", action="store_true", help="train LoRA adapters on the LLM instead of its weights")
    a("--lora-r", type=int, default=16)
    a("--lora-alpha", type=int, default=32)
    a("--lora-dropout", type=float, default=0.0)
    a("--activation-checkpointing", action="store_true", help="recompute block activations in backward")
    a("--bf16", action=argparse_bool(), default=None, help="bf16 autocast (default: on CUDA only)")
    a("--eval-data", help="held-out JSONL for evaluation loss")
    a("--eval-every", type=int, default=0, help="evaluate every N steps (and at the end)")
    a("--eval-batches", type=int, default=50)
    a("--save-every", type=int, default=0, help="write a resumable checkpoint every N steps")
    a("--keep", type=int, default=2, help="checkpoints kept")
    a("--resume", action="store_true", help="continue from OUT/checkpoints/latest, or the newest intact checkpoint")
    a("--seed", type=int, default=0)
    a("--device", help="default: cuda if available, else cpu")
    a("--no-progress", action="store_true")
    a("--no-export", action="store_true", help="skip writing OUT/final")
    p.set_defaults(func=run)


def argparse_bool():
    import argparse
    return argparse.BooleanOptionalAction


def run(args) -> int:
    from ..train.loop import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    kw["fps_range"] = None if args.fixed_fps else tuple(args.fps_range)
    kw["progress"] = not args.no_progress
    kw["export"] = not args.no_export
    summary = train(TrainConfig(**kw))
    if summary.get("final"):
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0
