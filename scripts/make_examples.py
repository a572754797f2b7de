"""Write examples/: media the default model was trained to handle, drawn by qwenvl.synth (held-out seeds),
with the truth of each in examples/truth.json.

    python scripts/make_examples.py          # -> examples/shapes.png, clip.mp4, page.png, screen.png, text.png
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from qwenvl import synth
from qwenvl.synth.files import write_mp4

OUT = Path(__file__).resolve().parents[1] / "examples"
BUDGET = {"min_pixels": 4 * 28 * 28, "max_pixels": 64 * 28 * 28, "video_max_pixels": 16 * 28 * 28}


def first(task: str, want, seeds=range(10_000, 20_000), **kw):
    """The first held-out example of `task` for which want(example) holds."""
    for seed in seeds:
        ex = synth.sample(task, random.Random(seed), **BUDGET, **kw)
        if want(ex):
            return seed, ex
    raise RuntimeError(f"no {task} example matched")


def media(ex):
    item = next(it for it in ex.messages[0]["content"] if it["type"] in ("image", "video"))
    return item[item["type"]]


def main() -> None:
    OUT.mkdir(exist_ok=True)
    truth = {}

    def shapes_ok(ex):
        labels = ex.targets[0]["labels"]
        return "red circle" in labels and 4 <= len(labels) <= 5 and min(ex.media_size) >= 400
    seed, ex = first("ground_all", shapes_ok, size_range=(400, 640))
    media(ex).save(OUT / "shapes.png")
    t = ex.targets[0]
    truth["shapes.png"] = {"seed": seed, "count": len(t["labels"]),
                           "objects": [{"label": lab, "bbox": box} for lab, box in zip(t["labels"], t["boxes"])]}

    def clip_ok(ex):
        return any(q["type"] == "text" and q["text"] == "When does the blue square appear?"
                   for q in ex.messages[0]["content"]) and 6 <= ex.targets[0]["duration"] <= 10
    seed, ex = first("video_ground", clip_ok, size_range=(160, 224))
    write_mp4(media(ex), ex.fps, OUT / "clip.mp4")
    truth["clip.mp4"] = {"seed": seed, "fps": ex.fps, "query": "the blue square appears", **ex.targets[0]}

    for task, name in (("document", "page.png"), ("gui", "screen.png"), ("read", "text.png")):
        seed, ex = first(task, lambda ex: True, size_range=(280, 560))
        media(ex).save(OUT / name)
        truth[name] = {"seed": seed, "question": next(it["text"] for it in ex.messages[0]["content"]
                                                      if it["type"] == "text"),
                       "answer": ex.messages[1]["content"], "target": ex.targets[0]}
    (OUT / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    print(json.dumps({k: {kk: v for kk, v in d.items() if kk in ("seed", "count", "start", "span")}
                      for k, d in truth.items()}))


if __name__ == "__main__":
    main()
