"""A diagnostic for the small model: `cell` answers split by direction, on fresh scenes drawn like a chunk's.

`cell` asks both ways: the name of the shape in a given row and column ("name"), or a named shape's row and
column ("cell"). A model can learn one direction and not the other (chunk 29: places 0.72, names at chance),
which the in-run metric, a mean of both, hides. This draws `--n` scenes with the synth options of a chunk's
train config (runs/default/trainN.json, the stage's own on top with `--stage`), one cell question each,
answers greedily and prints exact match per direction, and for "cell" answers the row and column alone.
docs/training.md ("Chunks 28-29" on) has the figures.

    python scripts/cell_split.py runs/default/chunk30 runs/default/train30.json --n 200
"""

from __future__ import annotations

import argparse
import json
import random
import re

from qwenvl import synth
from qwenvl.pipeline import load


def draw_options(config: dict, stage: int | None) -> dict:
    opts = dict(config.get("synth") or {})
    if stage is not None:
        opts.update(config["curriculum"][stage].get("synth") or {})
    opts.update((opts.pop("per_task", None) or {}).get("cell", {}))
    opts["turns"] = 1
    return {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items() if v is not None}


def split(path: str, opts: dict, n: int, seed: int) -> dict[str, dict[str, float]]:
    pipe = load(path)
    rng = random.Random(seed)
    exs = [synth.sample("cell", rng, min_pixels=pipe.processor.min_pixels, max_pixels=pipe.processor.max_pixels,
                        **opts) for _ in range(n)]
    convs = [e.messages[:1] for e in exs]
    texts = [r.text for i in range(0, n, 16) for r in pipe.chat(convs[i:i + 16], temperature=0, max_new_tokens=16)]
    tally: dict[str, dict[str, int]] = {}
    for e, text in zip(exs, texts):
        ask, want, got = e.targets[0]["ask"], e.messages[1]["content"].strip(), text.strip()
        t = tally.setdefault(ask, {"n": 0, "exact": 0, "row": 0, "column": 0})
        t["n"] += 1
        t["exact"] += got == want
        if ask == "cell":
            w, g = re.findall(r"\d+", want), re.findall(r"\d+", got)
            t["row"] += len(g) > 0 and g[0] == w[0]
            t["column"] += len(g) > 1 and g[1] == w[1]
    return {ask: {"n": t["n"], **{k: round(t[k] / t["n"], 3) for k in ("exact", "row", "column")
                                  if ask == "cell" or k == "exact"}} for ask, t in sorted(tally.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("config", help="a chunk's train config (runs/default/trainN.json)")
    ap.add_argument("--stage", type=int, default=None, help="draw like this curriculum stage (0-based)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=777)
    args = ap.parse_args()
    opts = draw_options(json.load(open(args.config)), args.stage)
    print(json.dumps(split(args.model, opts, args.n, args.seed), indent=2))


if __name__ == "__main__":
    main()
