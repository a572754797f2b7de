"""`qwenvl data synth`: synthetic training / evaluation data as files (qwenvl.synth).

    qwenvl data synth --task ground --n 1000 --out data/ground --seed 0
    qwenvl data synth --task video_ground --n 100 --out data/clips-heldout --seed 1

writes OUT/images/*.png (or OUT/videos/*.mp4), OUT/train.jsonl (for `qwenvl train --data`) and
OUT/eval.jsonl (for `qwenvl eval run --task synth_<task> --data`). Use another --seed for a held-out set.
"""

from __future__ import annotations

import json
import time


def register(sub) -> None:
    from ..synth import BACKGROUND_KINDS, BACKGROUNDS, ORDERS, TASKS

    p = sub.add_parser("data", help="make datasets (synthetic scenes, documents, screens, clips)")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    s = dsub.add_parser("synth", help="synthetic examples of one task as JSONL + media",
                        description="Seeded synthetic examples: " + ", ".join(TASKS) + ". See docs/training.md.")
    a = s.add_argument
    a("--task", required=True, choices=list(TASKS))
    a("--n", type=int, required=True, help="number of examples (media files)")
    a("--out", required=True, help="output directory")
    a("--seed", type=int, default=0)
    a("--turns", type=int, default=1, help="questions per example (extra user/assistant turns)")
    a("--min-pixels", type=int, default=4 * 28 * 28, help="per-image minimum pixels after resizing")
    a("--max-pixels", type=int, default=160 * 28 * 28,
      help="per-image maximum pixels after resizing (answers' coordinates are in that resized space)")
    a("--video-max-pixels", type=int, default=64 * 28 * 28, help="per-frame maximum pixels of clips")
    a("--size-range", type=int, nargs=2, default=(112, 640), metavar=("MIN", "MAX"),
      help="original image side lengths, in pixels")
    a("--order", default="random", choices=list(ORDERS), help="media before or after the question")
    a("--objects", type=int, nargs=2, default=(1, 6), metavar=("MIN", "MAX"), help="shapes in a scene (1-6)")
    a("--fps-range", type=float, nargs=2, default=(0.5, 4.0), metavar=("MIN", "MAX"), help="clips' frame rates")
    a("--seconds-range", type=float, nargs=2, default=(2.0, 12.0), metavar=("MIN", "MAX"), help="clips' lengths")
    a("--backgrounds", nargs="+", default=list(BACKGROUNDS), choices=list(BACKGROUND_KINDS),
      help="background kinds of shape scenes and clips (light: a plain light grey)")
    a("--shapes", nargs="+", metavar="SHAPE", help="shape scenes draw only these kinds (default: all)")
    a("--colors", nargs="+", metavar="COLOR", help="shape scenes draw only these colours (default: all)")
    a("--aligned", type=float, nargs="?", const=1.0, default=0.0, metavar="SHARE",
      help="shape scenes: each shape fills one cell of merged image tokens (28 px of the resized input); "
           "with a SHARE in [0, 1], only that share of the scenes (default when given: all)")
    a("--crisp", type=float, nargs="?", const=1.0, default=0.0, metavar="SHARE",
      help="shape scenes: shapes in their colours' reference values with sharp edges (default: shaded, some "
           "soft); with a SHARE in [0, 1], only that share of the scenes (default when given: all)")
    s.set_defaults(func=run_synth)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_synth(args) -> int:
    from ..synth import write

    t0 = time.perf_counter()
    train, evalf = write(args.task, args.n, args.out, args.seed, turns=args.turns, min_pixels=args.min_pixels,
                         max_pixels=args.max_pixels, video_max_pixels=args.video_max_pixels,
                         size_range=tuple(args.size_range), order=args.order, objects=tuple(args.objects),
                         fps_range=tuple(args.fps_range), seconds_range=tuple(args.seconds_range),
                         backgrounds=tuple(args.backgrounds), shapes=args.shapes and tuple(args.shapes),
                         colors=args.colors and tuple(args.colors), aligned=args.aligned,
                         crisp=args.crisp)
    rows = sum(1 for line in evalf.open(encoding="utf-8") if line.strip())
    print(json.dumps({"task": args.task, "examples": args.n, "questions": rows, "train": str(train),
                      "eval": str(evalf), "seconds": round(time.perf_counter() - t0, 2)}))
    return 0
