"""A diagnostic for the small model: can it tell which token of its image holds a shape?

Writes 112 x 112 px images (a 4 x 4 grid of merged tokens) each holding one square that fills one token's
28 x 28 cell, "Where is the square?" -> "row R column C", as JSONL for `qwenvl train`, and a recipe that
trains a model from `--model` on them with a greedy exact-match metric on held-out images every 50 steps
(`--eval-every`).
With `--squares 2` each image holds squares of different colours and the question names one ("Where is
the red square?"): a model can then place a square and still ignore the name; `--check CHECKPOINT` says
which (answers on the named square, on another square, on none). `--colour-questions F` asks the converse
in a share F of the training images ("What colour is the square in row R column C?").
docs/training.md has the runs ("Chunk 12 and two diagnostics": on a light grey background the release's
decoder RoPE base learns rows but not columns, a base of 10 learns both; "The naming diagnostic": a
decoder that is only asked where a named square is learns to place squares and not to heed the name,
while the converse question makes it heed the name).

    python scripts/build_default_model.py init --size xs --rope-theta 10
    python scripts/cell_probe.py --background light --model runs/default/init-xs-theta10 --out runs/cell-light
    qwenvl train --recipe runs/cell-light/recipe.json --threads 2
    python scripts/build_default_model.py init --size xs4 --rope-theta 10
    python scripts/cell_probe.py --squares 2 --colour-questions 0.3 --steps 3000 --eval-every 250 \
        --model runs/default/init-xs4-theta10 --out runs/cell2
    qwenvl train --recipe runs/cell2/recipe.json --threads 2
    python scripts/cell_probe.py --out runs/cell2 --check runs/cell2/run/final
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from PIL import Image, ImageDraw

from qwenvl.synth.common import COLORS
from qwenvl.synth.shapes import CELL_ANSWER, CELL_NAME, CELL_PLACE

CELL, GRID = 28, 4


def write(out: Path, n: int, seed: int, background: str, name: str, squares: int = 1, text_first: bool = False,
          colour_questions: float = 0.0, synth_words: bool = False) -> Path:
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.jsonl"
    order = 1 if text_first else -1
    with path.open("w") as f, (out / f"{name}_cells.jsonl").open("w") as side:
        for i in range(n):
            if background == "light":   # shape colours on a light grey
                pool = [c for c in COLORS if c != "white"]     # (one square: the draws of the first runs)
                fgs = [rng.choice(pool)] if squares == 1 else rng.sample(pool, squares)
                g = rng.randint(220, 255)
                bg = (g, g, g)
            else:                       # different colours of the palette
                *fgs, other = rng.sample(list(COLORS), squares + 1)
                bg = COLORS[other]
            cells = ([(rng.randrange(GRID), rng.randrange(GRID))] if squares == 1
                     else rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], squares))
            img = Image.new("RGB", (CELL * GRID, CELL * GRID), bg)
            d = ImageDraw.Draw(img)
            for fg, (r, c) in zip(fgs, cells):
                d.rectangle([c * CELL, r * CELL, c * CELL + CELL - 1, r * CELL + CELL - 1], fill=COLORS[fg])
            k = rng.randrange(squares) if squares > 1 else 0   # the square asked for, named by its colour
            (r, c), q = cells[k], ("Where is the square?" if squares == 1 else f"Where is the {fgs[k]} square?")
            answer = f"row {r} column {c}"
            if colour_questions and rng.random() < colour_questions:    # the converse: a place given, its colour asked
                q, answer = f"What colour is the square in row {r} column {c}?", fgs[k]
                if synth_words:
                    q, answer = CELL_NAME.format(row=r + 1, col=c + 1), f"{fgs[k]} square"
            elif synth_words:   # qwenvl.synth's `cell` wording: 1-based, "row R, column C"
                q, answer = CELL_PLACE.format(name=f"{fgs[k]} square"), CELL_ANSWER.format(row=r + 1, col=c + 1)
            rel = f"images/{name}_{i}.png"
            img.save(out / rel)
            f.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "text", "text": q}, {"type": "image", "image": rel}][::order]},
                {"role": "assistant", "content": answer}]}) + "\n")
            side.write(json.dumps({"cells": cells, "asked": k, "base": int(synth_words)}) + "\n")
    return path


def check(out: Path, checkpoint: str) -> dict[str, float]:
    """Greedy answers to OUT's held-out images, split by where they point: the named square's cell (exact),
    another square's (the name not bound), or no square's; and row and column right on their own."""
    from qwenvl.pipeline import load

    pipe = load(checkpoint)
    rows = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    cells = [json.loads(x) for x in (out / "eval_cells.jsonl").read_text().splitlines()]
    convs = [[{**m, "content": [{**it, "image": str(out / it["image"])} if it["type"] == "image" else it
                                for it in m["content"]]} for m in r["messages"][:1]] for r in rows]
    texts = [r.text for i in range(0, len(convs), 16)
             for r in pipe.chat(convs[i:i + 16], temperature=0, max_new_tokens=16)]
    tally = dict.fromkeys(("exact", "other square", "no square", "row", "column"), 0)
    for text, side in zip(texts, cells):
        got = re.fullmatch(r"\s*row (\d+),? column (\d+)\s*", text)
        base = side.get("base", 0)      # --synth-words runs count rows and columns from 1
        cell = (int(got[1]) - base, int(got[2]) - base) if got else None
        want = tuple(side["cells"][side["asked"]])
        others = [tuple(c) for j, c in enumerate(side["cells"]) if j != side["asked"]]
        tally["exact" if cell == want else "other square" if cell in others else "no square"] += 1
        tally["row"] += bool(cell) and cell[0] == want[0]
        tally["column"] += bool(cell) and cell[1] == want[1]
    return {k: v / len(texts) for k, v in tally.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--background", choices=["light", "random"], default="light")
    ap.add_argument("--model", help="the checkpoint to train (e.g. an `init` of build_default_model)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=12000)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--eval-every", type=int, default=50, help="steps between the held-out exact-match metrics")
    ap.add_argument("--squares", type=int, default=1,
                    help="squares an image (of different colours); above 1 the question names one by its colour")
    ap.add_argument("--text-first", action="store_true", help="the question before the image (default: after)")
    ap.add_argument("--colour-questions", type=float, default=0.0, metavar="F",
                    help="this share of the training images asks the converse (the colour of the square at a place)")
    ap.add_argument("--synth-words", action="store_true",
                    help="ask and answer in qwenvl.synth's `cell` words (rows and columns from 1, colour and kind named)")
    ap.add_argument("--check", metavar="CHECKPOINT",
                    help="no writing: answer OUT's held-out images with CHECKPOINT and say where the answers point")
    args = ap.parse_args()
    out = Path(args.out)
    if args.check:
        print(json.dumps(check(out, args.check), indent=2))
        return
    if not 1 <= args.squares <= 7:      # 7 colours on the light background, one cell each
        ap.error(f"--squares must be 1 to 7, got {args.squares}")
    if not args.model:
        ap.error("--model is needed to write a run (or --check CHECKPOINT to score one)")
    train = write(out, args.n, 1, args.background, "train", args.squares, args.text_first,
                  args.colour_questions, args.synth_words)
    held = write(out, 80, 2, args.background, "eval", args.squares, args.text_first, synth_words=args.synth_words)
    recipe = {"model": args.model, "out": str(out / "run"), "data": str(train), "data_root": str(out),
              "eval_data": str(held), "stage": "multimodal", "lr": 3e-4, "vision_lr": 3e-4, "merger_lr": 3e-4,
              "warmup": 30, "min_lr_ratio": 0.05, "weight_decay": 0.01, "batch_size": 2, "pack": True,
              "max_len": 1024, "loss_weighting": "reply", "max_steps": args.steps, "eval_every": args.eval_every,
              "eval_generate": 40, "eval_max_new_tokens": 16, "save_every": 200, "fps_range": None}
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2))
    print(f"{train} ({args.n}), {held} (80); qwenvl train --recipe {out / 'recipe.json'}")


if __name__ == "__main__":
    main()
