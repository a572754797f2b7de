"""Build the small default model end to end with the project's own pipeline, offline:

1. generate synthetic shapes data (qwenvl.synthetic): train / held-out conversations and eval rows;
2. write the assets (a byte-level BPE tokenizer trained on the data's text, processor files, chat template)
   and a randomly initialised model of the Qwen2.5-VL architecture (vision 4 x 128, text 4 x 256);
3. train it with `qwenvl train --stage multimodal` (everything trains; packed rows);
4. score it with `qwenvl eval run --task synthetic_shapes` on held-out scenes.

    python scripts/build_default_model.py --out runs/default --steps 800
    cp -r runs/default/train/final/* src/qwenvl/assets/default/     # what the package ships
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from qwenvl.config import QwenVLConfig, TextConfig, VisionConfig
from qwenvl.model.weights import random_model, save_model
from qwenvl.synthetic import write_dataset
from qwenvl.tiny import write_assets


def small_config(ids: dict[str, int], vocab_size: int) -> QwenVLConfig:
    return QwenVLConfig(
        vision=VisionConfig(depth=4, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
                            window_size=112, tokens_per_second=2, fullatt_block_indexes=(1, 3)),
        text=TextConfig(vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                        rms_norm_eps=1e-6, mrope_section=(8, 12, 12), tie_word_embeddings=True),
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"], image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/default")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--eval-images", type=int, default=60)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    out = Path(args.out)

    train_jsonl, _ = write_dataset(out / "data", args.images, seed=0)
    heldout_jsonl, eval_rows = write_dataset(out / "heldout", args.eval_images, seed=1)

    init = out / "init"
    texts = [json.loads(l)["messages"][0]["content"][1]["text"] + " " + json.loads(l)["messages"][1]["content"]
             for l in train_jsonl.read_text().splitlines()]
    ids, vocab = write_assets(init, vocab_size=640, extra_text=texts)
    torch.manual_seed(0)
    save_model(random_model(small_config(ids, vocab)), init)

    qwenvl = [sys.executable, "-m", "qwenvl.cli.main"]
    subprocess.run(qwenvl + ["train", "--stage", "multimodal", "--model", str(init), "--data", str(train_jsonl),
                             "--out", str(out / "train"), "--max-steps", str(args.steps), "--lr", str(args.lr),
                             "--vision-lr", str(args.lr), "--warmup", "40", "--min-lr-ratio", "0.05",
                             "--batch-size", "2", "--pack", "--max-len", "1024", "--weight-decay", "0.01",
                             "--eval-data", str(heldout_jsonl), "--eval-every", "200", "--eval-batches", "10"],
                   check=True)
    subprocess.run(qwenvl + ["eval", "run", "--task", "synthetic_shapes", "--data", str(eval_rows), "--model",
                             str(out / "train" / "final"), "--out", str(out / "eval"), "--dtype", "float32"],
                   check=True)


if __name__ == "__main__":
    main()
