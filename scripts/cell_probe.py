"""A diagnostic for the small model: can it tell which token of its image holds a shape?

Writes 112 x 112 px images (a 4 x 4 grid of merged tokens) each holding one square that fills one token's
28 x 28 cell, "Where is the square?" -> "row R column C", as JSONL for `qwenvl train`, and a recipe that
trains a model from `--model` on them with a greedy exact-match metric on held-out images every 50 steps.
docs/training.md ("Chunk 12 and two diagnostics") has the runs: on a light grey background the release's
decoder RoPE base learns rows but not columns, a base of 10 learns both.

    python scripts/build_default_model.py init --size xs --rope-theta 10
    python scripts/cell_probe.py --background light --model runs/default/init-xs-theta10 --out runs/cell-light
    qwenvl train --recipe runs/cell-light/recipe.json --threads 2
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from qwenvl.synth.common import COLORS

CELL, GRID = 28, 4


def write(out: Path, n: int, seed: int, background: str, name: str) -> Path:
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.jsonl"
    with path.open("w") as f:
        for i in range(n):
            if background == "light":   # one of the shape colours on a light grey
                fg = rng.choice([c for c in COLORS if c != "white"])
                g = rng.randint(220, 255)
                bg = (g, g, g)
            else:                       # two different colours of the palette
                fg, other = rng.sample(list(COLORS), 2)
                bg = COLORS[other]
            r, c = rng.randrange(GRID), rng.randrange(GRID)
            img = Image.new("RGB", (CELL * GRID, CELL * GRID), bg)
            ImageDraw.Draw(img).rectangle([c * CELL, r * CELL, c * CELL + CELL - 1, r * CELL + CELL - 1],
                                          fill=COLORS[fg])
            rel = f"images/{name}_{i}.png"
            img.save(out / rel)
            f.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "image", "image": rel},
                                             {"type": "text", "text": "Where is the square?"}]},
                {"role": "assistant", "content": f"row {r} column {c}"}]}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--background", choices=["light", "random"], default="light")
    ap.add_argument("--model", required=True, help="the checkpoint to train (e.g. an `init` of build_default_model)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=12000)
    ap.add_argument("--steps", type=int, default=500)
    args = ap.parse_args()
    out = Path(args.out)
    train = write(out, args.n, 1, args.background, "train")
    held = write(out, 80, 2, args.background, "eval")
    recipe = {"model": args.model, "out": str(out / "run"), "data": str(train), "data_root": str(out),
              "eval_data": str(held), "stage": "multimodal", "lr": 3e-4, "vision_lr": 3e-4, "merger_lr": 3e-4,
              "warmup": 30, "min_lr_ratio": 0.05, "weight_decay": 0.01, "batch_size": 2, "pack": True,
              "max_len": 1024, "loss_weighting": "reply", "max_steps": args.steps, "eval_every": 50,
              "eval_generate": 40, "eval_max_new_tokens": 8, "save_every": 200, "fps_range": None}
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    print(f"{train} ({args.n}), {held} (80); qwenvl train --recipe {out / 'recipe.json'}")


if __name__ == "__main__":
    main()
