"""A diagnostic for the small model: does it box the shape the question names, or just some shape?

Draws scenes of several shapes (qwenvl.synth's generator, seeded), asks "Locate the {colour} {shape} ..."
for one of them, and scores the first box of the greedy answer twice: against the named shape (Acc@0.5,
what the grounding metric counts) and against the best-matching shape of the scene (any@0.5: a model that
places shapes but ignores the name scores here only). With n shapes a scene, a model that places some
shape at random among them names right in about any / n of the scenes. docs/training.md ("Chunk 20",
"Chunk 21") has the figures.

    python scripts/naming_probe.py runs/default/chunk15 --objects 2 5 --sizes 56 448
"""

from __future__ import annotations

import argparse
import json
import random

from qwenvl.pipeline import load
from qwenvl.synth.common import BACKGROUNDS, input_size
from qwenvl.synth.scoring import iou
from qwenvl.tasks import parse_boxes
from qwenvl.synth.shapes import LOCATE, scene


def probe(path: str, n: int, objects: tuple[int, int], sizes: tuple[int, int], seed: int,
          backgrounds=BACKGROUNDS) -> dict[str, dict[str, float]]:
    pipe = load(path)
    lo, hi = pipe.processor.min_pixels, pipe.processor.max_pixels
    out = {}
    for order in ("text_first", "media_first"):
        rng = random.Random(f"{seed}/{order}")
        convs, truth = [], []
        for _ in range(n):
            img, size, objs = scene(rng, sizes, objects=objects, backgrounds=backgrounds)
            named = rng.choice(objs)
            q = {"type": "text", "text": LOCATE.format(name=named.name)}
            item = {"type": "image", "image": img, "min_pixels": lo, "max_pixels": hi}
            convs.append([{"role": "user", "content": [q, item] if order == "text_first" else [item, q]}])
            truth.append((size, named, objs))
        hits = {"named@0.5": 0, "any@0.5": 0, "shapes": 0}
        for i in range(0, n, 16):
            for r, (size, named, objs) in zip(pipe.chat(convs[i:i + 16], temperature=0, max_new_tokens=60),
                                              truth[i:i + 16]):
                boxes = [d.bbox for d in parse_boxes(r.text, input_size=input_size(size, lo, hi), image_size=size)
                         if d.bbox is not None]
                hits["shapes"] += len(objs)
                if boxes:
                    hits["named@0.5"] += iou(boxes[0], named.box) >= 0.5
                    hits["any@0.5"] += max(iou(boxes[0], o.box) for o in objs) >= 0.5
        out[order] = {"named@0.5": hits["named@0.5"] / n, "any@0.5": hits["any@0.5"] / n,
                      "shapes_a_scene": hits["shapes"] / n}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--n", type=int, default=256, help="scenes per order (question first, image first)")
    ap.add_argument("--objects", type=int, nargs=2, default=(2, 5), metavar=("LO", "HI"))
    ap.add_argument("--sizes", type=int, nargs=2, default=(56, 448), metavar=("LO", "HI"), help="image sides, px")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    print(json.dumps(probe(args.model, args.n, tuple(args.objects), tuple(args.sizes), args.seed), indent=2))


if __name__ == "__main__":
    main()
