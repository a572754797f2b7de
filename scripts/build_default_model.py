"""Build the small default model end to end with the project's own pipeline, offline.

1. `init`: a byte-level BPE tokenizer trained on the synthetic tasks' texts (digits split as Qwen's),
   the processor files (a small pixel budget: the model sees images of at most 64 merged tokens,
   video frames of 16), and a randomly initialised model of the Qwen2.5-VL architecture (window +
   full attention ViT, 2x2 merger, MRoPE decoder with absolute time);
2. `train CHUNK`: `qwenvl train --recipe` on data drawn on the fly (qwenvl.synth), per-reply loss
   weighting, greedy task metrics in metrics.jsonl, resumable (run it again); `export CHUNK` writes a
   chunk's newest checkpoint out as the next chunk's start (also when it was stopped early):
   - train1 (from init): every synthetic task, a curriculum; stopped at step 1100 of 2200;
   - train2 (chunk1): spatial and temporal tasks, scenes of 1-2 objects first;
   - train4 (chunk2): grounding and pointing alone, 1-2 shapes a scene; stopped at step 900 of 3000;
   - train5 (chunk4): the same on one shape a scene, small images, one question each; stopped at 1300;
   - train6 (chunk5): 2000 more steps of that, then grounding, pointing, counting, all-objects and
     video again on 1-4 shapes for 1000;
   (train3 was a discarded variant of train4; the script keeps the chunks the shipped model came from)
3. `eval`: `qwenvl eval run` on held-out sets written by `qwenvl.synth.write` (another seed, scenes up
   to 1000 px a side);
4. `ship`: copy the result into src/qwenvl/assets/default (what the package loads with no --model).

    python scripts/build_default_model.py init
    python scripts/build_default_model.py train train1 --max-minutes 116   # again to resume
    python scripts/build_default_model.py export train1
    python scripts/build_default_model.py train train2
    python scripts/build_default_model.py export train2
    ... (train4, train5, train6 likewise; see docs/training.md for the minutes each ran)
    python scripts/build_default_model.py eval
    python scripts/build_default_model.py ship

Extra arguments after the step go to `qwenvl train` (e.g. --threads 1 --no-progress).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from qwenvl import synth
from qwenvl.config import QwenVLConfig, TextConfig, VisionConfig
from qwenvl.model.weights import random_model, save_model
from qwenvl.tiny import CHAT_TEMPLATE, write_assets

# The stock template minus its default system prompt: ~30 tokens of every sample that teach the small
# model nothing. A system message given by the user is still rendered.
DEFAULT_SYSTEM = ("{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
                  "You are a helpful assistant.<|im_end|>\n{% endif %}")
TEMPLATE = CHAT_TEMPLATE.replace(DEFAULT_SYSTEM, "")

MIN_PIXELS, MAX_PIXELS = 4 * 28 * 28, 64 * 28 * 28      # images: 4 to 64 merged tokens
VIDEO_MAX_PIXELS = 16 * 28 * 28                          # video frames: 16 merged tokens per 2 frames

STAGE1 = "synth:ground=3,point=1,count=1"
STAGE2 = "synth:ground=3,ground_all=1,point=2,count=2,video_ground=3,read=1,gui=1,document=1"
SPATIAL = "synth:ground=4,point=2,count=2"
SPATIAL_TEMPORAL = "synth:ground=4,point=2,count=2,ground_all=1,video_ground=3"

RECIPE1 = {
    "stage": "multimodal", "lr": 3e-4, "vision_lr": 3e-4, "merger_lr": 3e-4, "warmup": 30, "min_lr_ratio": 0.05,
    "weight_decay": 0.01, "batch_size": 2, "pack": True, "max_len": 1024, "chunk": 48,
    "loss_weighting": "reply", "synth": {"turns": 3, "size_range": [112, 640]},
    "curriculum": [{"steps": 500, "data": STAGE1}, {"steps": 1700, "data": STAGE2}],
    "max_steps": 2200, "eval_data": STAGE2, "eval_every": 300, "eval_generate": 8, "eval_max_new_tokens": 120,
    "save_every": 100, "keep": 2, "fps_range": None, "video_max_pixels": VIDEO_MAX_PIXELS,
}
RECIPE2 = {
    **RECIPE1, "warmup": 20, "max_steps": 1300, "eval_every": 325,
    "eval_data": "synth:ground,point,count,ground_all,video_ground",
    "curriculum": [{"steps": 350, "data": SPATIAL, "synth": {"objects": [1, 2]}},
                   {"steps": 950, "data": SPATIAL_TEMPORAL}],
}

# Chunks 4-6 (the shipped model): grounding never lifted off in a mixed curriculum, so the box tasks
# get scenes of one or two shapes alone first, with one question a scene, small images and many scenes.
RECIPE4 = {
    **RECIPE1, "warmup": 30, "chunk": 64, "synth": {"turns": 2, "size_range": [56, 336], "objects": [1, 2]},
    "curriculum": None, "data": "synth:ground=3,point=1", "max_steps": 3000, "eval_data": "synth:ground,point",
    "eval_every": 250, "eval_generate": 24, "eval_max_new_tokens": 60,
}
RECIPE5 = {**RECIPE4, "warmup": 20, "synth": {"turns": 1, "size_range": [56, 280], "objects": [1, 1]},
           "max_steps": 2500, "eval_every": 200}
RECIPE6 = {
    **RECIPE5, "data": None, "max_steps": 3000, "eval_every": 250,
    "curriculum": [{"steps": 2000, "data": "synth:ground=3,point=1"},
                   {"steps": 1000, "data": "synth:ground=4,point=2,count=2,ground_all=1,video_ground=2",
                    "synth": {"objects": [1, 4], "turns": 2, "size_range": [56, 640]}}],
}

# name -> (starts from, recipe, where its end is exported); `train NAME` runs (or resumes) it
CHUNKS = {
    "train1": ("init", RECIPE1, "chunk1"),
    "train2": ("chunk1", RECIPE2, "chunk2"),
    "train4": ("chunk2", RECIPE4, "chunk4"),
    "train5": ("chunk4", RECIPE5, "chunk5"),
    "train6": ("chunk5", RECIPE6, "chunk6"),
}
SHIPPED = "chunk6"


def small_config(ids: dict[str, int], vocab_size: int) -> QwenVLConfig:
    return QwenVLConfig(
        vision=VisionConfig(depth=4, hidden_size=96, intermediate_size=256, num_heads=4, out_hidden_size=192,
                            window_size=112, tokens_per_second=2, fullatt_block_indexes=(1, 3)),
        text=TextConfig(vocab_size=vocab_size, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                        rms_norm_eps=1e-6, mrope_section=(6, 9, 9), tie_word_embeddings=True),
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"], image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )


def init(out: Path, vocab: int) -> None:
    dest = out / "init"
    ids, size = write_assets(dest, vocab_size=vocab, extra_text=synth.corpus(20000, seed=0), qwen_split=True,
                             corpus=False, chat_template=TEMPLATE, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    pre = json.loads((dest / "preprocessor_config.json").read_text())
    pre["video_max_pixels"] = VIDEO_MAX_PIXELS  # read by qwenvl's Processor (a key of our own)
    (dest / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    torch.manual_seed(0)
    model = random_model(small_config(ids, size))
    save_model(model, dest)
    print(f"{dest}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, vocabulary {size}")


def _train(out: Path, name: str, recipe: dict, extra: list[str]) -> None:
    path = out / f"{name}.json"
    if not path.exists():
        path.write_text(json.dumps(recipe, indent=2))
    resume = ["--resume"] if (out / name / "checkpoints" / "latest").exists() else []
    subprocess.run([sys.executable, "-m", "qwenvl.cli.main", "train", "--recipe", str(path), *resume, *extra],
                   check=True)


def export(out: Path, name: str) -> None:
    """The newest checkpoint of a chunk as a Hugging Face folder (the start of the next chunk), also when
    the chunk was stopped before its schedule's end."""
    from qwenvl.train import checkpoint as ckpt
    from qwenvl.train.loop import TrainConfig, Trainer

    rec = json.loads((out / f"{name}.json").read_text())
    cfg = TrainConfig(**{**rec, "fps_range": None, "progress": False, "export": False, "resume": True})
    t = Trainer(cfg)
    step, _, where = ckpt.resume(out / name / "checkpoints", t.model, t.optimizer, t.scheduler)
    print(f"{where} (step {step}) -> {ckpt.export(t.model, out / 'init', out / CHUNKS[name][2])}")


def evaluate(out: Path, n: int, model: str | None) -> None:
    model = model or str(out / SHIPPED)
    for task in synth.TASKS:
        data = out / "heldout" / task
        if not (data / "eval.jsonl").exists():  # held out: another seed, scenes up to 1000 px a side
            synth.write(task, n, data, seed=12345, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
                        video_max_pixels=VIDEO_MAX_PIXELS, size_range=(112, 1000))
        subprocess.run([sys.executable, "-m", "qwenvl.cli.main", "eval", "run", "--task", f"synth_{task}",
                        "--data", str(data / "eval.jsonl"), "--model", model, "--out", str(out / "eval" / Path(model).name / task),
                        "--dtype", "float32"], check=True)


def ship(out: Path) -> None:
    src, dest = out / SHIPPED, Path(__file__).resolve().parents[1] / "src" / "qwenvl" / "assets" / "default"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    print(f"shipped {src} -> {dest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["init", "train", "export", "eval", "ship"])
    ap.add_argument("chunk", nargs="?", choices=list(CHUNKS), help="train / export: which chunk")
    ap.add_argument("--out", default="runs/default")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--n", type=int, default=200, help="eval: held-out examples per task")
    ap.add_argument("--model", help=f"eval: the checkpoint to score (default: OUT/{SHIPPED})")
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    if args.step in ("train", "export") and not args.chunk:
        ap.error(f"{args.step} needs a chunk: {', '.join(CHUNKS)}")
    if args.step == "train":
        start, recipe, _ = CHUNKS[args.chunk]
        _train(out, args.chunk, {**recipe, "model": str(out / start), "out": str(out / args.chunk)}, extra)
    elif args.step == "export":
        export(out, args.chunk)
    else:
        {"init": lambda: init(out, args.vocab), "eval": lambda: evaluate(out, args.n, args.model),
         "ship": lambda: ship(out)}[args.step]()


if __name__ == "__main__":
    main()
