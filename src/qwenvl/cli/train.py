"""`qwenvl train`: fine-tune or continue pre-training a Qwen2.5-VL checkpoint (qwenvl.train).

    qwenvl train --stage sft --model CKPT --data train.jsonl --out runs/sft --max-steps 1000 --pack
    torchrun --nproc_per_node 8 -m qwenvl.cli.main train ...      # FSDP2 over 8 processes
"""

from __future__ import annotations

import dataclasses
import json


# train.setup.STAGES' names, spelled out so that `--help` need not import torch (tests/cli check they agree).
STAGES = ("vision", "multimodal", "long", "sft", "dpo")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (stages: " + ", ".join(STAGES) + ")",
                       description="Train on JSONL conversations (qwen-vl-finetune or messages format) or "
                       "preference records (dpo). The result is exported to OUT/final in the Hugging Face layout. "
                       "See docs/training.md.")
    a = p.add_argument
    a("--stage", default="sft", choices=list(STAGES), help="what trains and the defaults (default: sft)")
    a("--recipe", help="a JSON file of these options (underscored names, e.g. max_steps) plus an optional "
      "curriculum: [{\"steps\": N, \"data\": ...}, ...]; flags given on the command line override it")
    a("--model", help="base checkpoint directory (Hugging Face layout)")
    a("--data", help="training JSONL, or synthetic data drawn on the fly: synth:TASK[=WEIGHT],... "
      "(tasks of qwenvl.synth: ground, ground_all, point, count, read, document, gui, video_ground)")
    a("--out", help="output directory: metrics.jsonl, checkpoints/, final/")
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
    a("--eval-data", help="held-out JSONL for evaluation loss, or a synth: mix for generation metrics")
    a("--eval-every", type=int, default=0, help="evaluate every N steps (and at the end)")
    a("--eval-batches", type=int, default=50)
    a("--eval-generate", type=int, default=0, metavar="N",
      help="also answer N held-out examples (per synthetic task) by greedy decoding and log task metrics")
    a("--eval-max-new-tokens", type=int, default=96)
    a("--loss-weighting", default="token", choices=["token", "reply"],
      help="token: mean over supervised tokens; reply: every assistant reply weighs the same")
    a("--threads", type=int, help="CPU threads for torch (default: torch's)")
    a("--save-every", type=int, default=0, help="write a resumable checkpoint every N steps")
    a("--keep", type=int, default=2, help="checkpoints kept")
    a("--resume", action="store_true", help="continue from OUT/checkpoints/latest, or the newest intact checkpoint")
    a("--max-minutes", type=float, default=0.0,
      help="stop after this much wall time, checkpoint and export (a chunk of a longer run; --resume goes on)")
    a("--seed", type=int, default=0)
    a("--device", help="default: cuda if available, else cpu")
    a("--no-progress", action="store_true")
    a("--no-export", action="store_true", help="skip writing OUT/final")
    p.set_defaults(func=run, _parser=p)


def argparse_bool():
    import argparse
    return argparse.BooleanOptionalAction


def run(args) -> int:
    from ..train.loop import TrainConfig, train
    from .inputs import check_device

    check_device(args.device)

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in vars(args).items() if k in fields}
    kw["fps_range"] = None if args.fixed_fps else tuple(args.fps_range)
    kw["progress"] = not args.no_progress
    kw["export"] = not args.no_export
    if args.recipe:
        recipe = json.loads(open(args.recipe).read())
        unknown = set(recipe) - fields
        if unknown:
            raise ValueError(f"{args.recipe}: unknown option(s) {', '.join(sorted(unknown))}")
        # Flags left at their defaults take the recipe's value; anything typed on the command line wins.
        defaults = {a.dest: a.default for a in args._parser._actions}
        defaults["fps_range"] = tuple(defaults["fps_range"])
        defaults.update(progress=True, export=True)
        given = {k for k in kw if kw[k] != defaults.get(k)}
        kw.update({k: v for k, v in recipe.items() if k not in given})
        if isinstance(kw.get("fps_range"), list):
            kw["fps_range"] = tuple(kw["fps_range"])
    for need in ("model", "out"):
        if not kw.get(need):
            raise ValueError(f"--{need} is required (on the command line or in --recipe)")
    kw["data"] = kw.get("data") or ""
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    summary = train(TrainConfig(**kw))
    if summary.get("final"):
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0
