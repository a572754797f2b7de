"""`qwenvl eval run|score|list`: benchmark generation and scoring (qwenvl.eval)."""

from __future__ import annotations

import json

from .chat import add_engine_args, add_rules_arg, use_rules
from .errors import CLIError, one_line
from .inputs import check_device, check_model, positive_float, positive_int
from .progress import Progress, wanted


def register(sub) -> None:
    p = sub.add_parser("eval", help="run and score benchmarks", description="Benchmark evaluation with the "
                       "official scoring rules; see docs/eval.md for tasks and annotation formats.")
    evsub = p.add_subparsers(dest="eval_command", metavar="ACTION")

    r = evsub.add_parser("run", help="generate answers (resumable) and score them")
    r.add_argument("--task", required=True)
    r.add_argument("--data", required=True, help="annotation file or directory, as released")
    r.add_argument("--model", help="checkpoint directory or hub id (default: the bundled small model)")
    r.add_argument("--out", required=True, help="output directory (predictions.jsonl, scores.json)")
    r.add_argument("--limit", type=positive_int, help="only the first N samples")
    r.add_argument("--max-new-tokens", type=positive_int, help="default: the task's own")
    r.add_argument("--max-pixels", type=positive_int, help="per-image (per-frame) maximum pixels after resizing")
    r.add_argument("--min-pixels", type=positive_int, help="per-image minimum pixels after resizing")
    r.add_argument("--fps", type=positive_float, help="video sampling fps")
    r.add_argument("--media-dir", help="root for relative image/video paths (default: beside --data)")
    r.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    r.add_argument("--device", default="cpu")
    add_engine_args(r)
    add_rules_arg(r)
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run_cmd)

    s = evsub.add_parser("score", help="score a predictions.jsonl")
    s.add_argument("--task", required=True)
    s.add_argument("--predictions", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--media-dir", help="root for relative image paths (read for original image sizes when the "
                   "annotations and predictions do not give them)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=score_cmd)

    ls = evsub.add_parser("list", help="list the tasks")
    ls.set_defaults(func=list_cmd)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


# Records checked (messages built) before the model loads: a wrong annotation file fails on the first one.
CHECK_RECORDS = 20


def load_records(task, args, ctx=None) -> list[dict]:
    """The annotations, read as the task reads them; an unreadable file or a missing field is a CLIError
    naming --data and the field."""
    from pathlib import Path

    if not Path(args.data).exists():
        raise CLIError(f"--data {args.data}: no such file or directory")
    try:
        records = task.load(args.data, args.media_dir)
        if ctx is not None:
            for rec in records[:min(args.limit or CHECK_RECORDS, CHECK_RECORDS)]:
                task.messages(rec, ctx)
    except KeyError as e:
        raise wrong_data(task, args, e) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CLIError(f"--data {args.data}: cannot read it ({type(e).__name__}: {one_line(e, 120)}); expected "
                       f"the {task.name} annotations as released (docs/eval.md)") from None
    if not records:
        raise CLIError(f"--data {args.data}: no records in it")
    return records


def wrong_data(task, args, e: KeyError) -> CLIError:
    field = e.args[0] if e.args else "?"
    return CLIError(f"--data {args.data}: a record has no {field!r} field, which task {task.name} reads; is this "
                    f"the {task.name} annotation file? (formats: docs/eval.md)")


def run_cmd(args) -> int:
    import qwenvl

    progress = Progress(wanted(args))
    with progress.step("reading the annotations"):
        from qwenvl.eval import MediaContext, format_table, get_task, run

        task = get_task(args.task)   # fail on a bad name, a bad file, a bad device before loading a model
        ctx = MediaContext(max_pixels=args.max_pixels, min_pixels=args.min_pixels, fps=args.fps,
                           media_dir=args.media_dir)
        load_records(task, args, ctx)
        args.model = check_model(args.model or qwenvl.DEFAULT_MODEL)
        check_device(args.device)
    with progress.step(f"loading {args.model} ({args.dtype}, {args.device})"):
        pipe = qwenvl.load(args.model, dtype=args.dtype, device=args.device, quantize=args.quantize,
                           compile=args.compile)
    use_rules(pipe, args)
    try:
        report = run(task, args.data, pipe, args.out, limit=args.limit, max_new_tokens=args.max_new_tokens,
                     ctx=ctx, progress=not args.no_progress and progress.enabled)
    except KeyError as e:     # a field missing from a later record (the first ones were checked)
        raise wrong_data(task, args, e) from None
    print(format_table(report))
    return 0


def score_cmd(args) -> int:
    from pathlib import Path

    from qwenvl.eval import format_table, get_task, read_jsonl, score

    task = get_task(args.task)
    if not Path(args.predictions).exists():
        raise CLIError(f"--predictions {args.predictions}: no such predictions file")
    records = load_records(task, args)
    try:
        report = score(task, records, read_jsonl(args.predictions))
    except KeyError as e:
        raise wrong_data(task, args, e) from None
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_table(report))
    return 0


def list_cmd(args) -> int:
    from qwenvl.eval import get_task, task_names

    for name in task_names():
        t = get_task(name)
        print(f"{name:<22} {', '.join(t.metrics)}")
    return 0
