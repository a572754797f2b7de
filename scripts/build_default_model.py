"""Build the small default model end to end with the project's own pipeline, offline.

1. `init`: a byte-level BPE tokenizer trained on the synthetic tasks' texts (digits split as Qwen's),
   the processor files (a small pixel budget: the model sees images of at most 64 merged tokens),
   and a randomly initialised model of the Qwen2.5-VL architecture (window + full attention ViT,
   2x2 merger, MRoPE decoder with absolute time);
2. `train`: `qwenvl train --recipe` over a curriculum of synthetic data drawn on the fly
   (qwenvl.synth), with per-reply loss weighting and greedy-decoding task metrics in metrics.jsonl;
   resumable in chunks (`--resume`; stop it any time with Ctrl-C or `--max-minutes`);
3. `eval`: `qwenvl eval run` on held-out sets written by `qwenvl data synth`;
4. `ship`: copy the final checkpoint into src/qwenvl/assets/default (what the package loads when no
   --model is given).

    python scripts/build_default_model.py init --out runs/default
    python scripts/build_default_model.py train --out runs/default          # again to resume
    python scripts/build_default_model.py eval --out runs/default
    python scripts/build_default_model.py ship --out runs/default
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

RECIPE = {
    "stage": "multimodal", "lr": 3e-4, "vision_lr": 3e-4, "merger_lr": 3e-4, "warmup": 30, "min_lr_ratio": 0.05,
    "weight_decay": 0.01, "batch_size": 2, "pack": True, "max_len": 1024, "chunk": 48,
    "loss_weighting": "reply", "synth": {"turns": 3, "size_range": [112, 640]},
    "curriculum": [{"steps": 500, "data": STAGE1}, {"steps": 1700, "data": STAGE2}],
    "max_steps": 2200, "eval_data": STAGE2, "eval_every": 300, "eval_generate": 8, "eval_max_new_tokens": 120,
    "save_every": 100, "keep": 2, "fps_range": None,
}


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


def train(out: Path, extra: list[str]) -> None:
    recipe = out / "recipe.json"
    if not recipe.exists():
        recipe.write_text(json.dumps({**RECIPE, "model": str(out / "init"), "out": str(out / "train"),
                                      "video_max_pixels": VIDEO_MAX_PIXELS}, indent=2))
    resume = ["--resume"] if (out / "train" / "checkpoints" / "latest").exists() else []
    subprocess.run([sys.executable, "-m", "qwenvl.cli.main", "train", "--recipe", str(recipe), *resume, *extra],
                   check=True)


def evaluate(out: Path, n: int, model: str | None) -> None:
    model = model or str(out / "train" / "final")
    for task in synth.TASKS:
        data = out / "heldout" / task
        if not (data / "eval.jsonl").exists():
            synth.write(task, n, data, seed=12345)
        subprocess.run([sys.executable, "-m", "qwenvl.cli.main", "eval", "run", "--task", f"synth_{task}",
                        "--data", str(data / "eval.jsonl"), "--model", model, "--out", str(out / "eval" / task),
                        "--dtype", "float32"], check=True)


def ship(out: Path) -> None:
    src, dest = out / "train" / "final", Path(__file__).resolve().parents[1] / "src" / "qwenvl" / "assets" / "default"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    print(f"shipped {src} -> {dest}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["init", "train", "eval", "ship"])
    ap.add_argument("--out", default="runs/default")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--n", type=int, default=200, help="eval: held-out examples per task")
    ap.add_argument("--model", help="eval: the checkpoint to score (default: OUT/train/final)")
    args, extra = ap.parse_known_args()
    out = Path(args.out)
    {"init": lambda: init(out, args.vocab), "train": lambda: train(out, extra),
     "eval": lambda: evaluate(out, args.n, args.model), "ship": lambda: ship(out)}[args.step]()


if __name__ == "__main__":
    main()
