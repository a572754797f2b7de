"""`qwenvl bench`: inference speed of this project against transformers on the same weights and inputs."""

from __future__ import annotations

import json
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark inference (vision tower, time to first token, decode) against transformers",
        description="Builds a preset's architecture with random weights (or loads --model), then measures this "
                    "project and transformers (when installed) on the same weights and inputs, one after the "
                    "other, plus the machine's own matmul / matrix-vector ceilings. Progress goes to stderr.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="3b", help="architecture with random weights: tiny, 3b, 7b, 32b, 72b")
    src.add_argument("--model", help="a Hugging Face checkpoint folder instead of a preset")
    p.add_argument("--image-size", default="1280x720", help="WIDTHxHEIGHT of the image (default 1280x720)")
    p.add_argument("--video-frames", default="",
                   help="comma-separated frame counts to time the tower on videos (e.g. 8,32,256)")
    p.add_argument("--video-size", default="224x224", help="WIDTHxHEIGHT of each video frame (default 224x224)")
    p.add_argument("--decode-tokens", type=int, default=16, help="tokens to decode after the first (default 16)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="weight dtype for both implementations (default bfloat16)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--quantize", choices=["int8", "int4", "int8,int4"],
                   help="also measure weight-only int8 and/or group-wise int4 decoding and its error against the "
                        "floating-point model (int8,int4: both, in alternating rounds)")
    p.add_argument("--quantize-vision", action="store_true", help="with --quantize: the tower too")
    p.add_argument("--compile", action="store_true", help="torch.compile our decode step (engine.Engine)")
    p.add_argument("--peer", choices=["llama.cpp"],
                   help="also run the checkpoint through llama.cpp (GGUF BF16/F16, Q8_0, Q4_0 via its converter, "
                        "llama-mtmd-cli on the same image size; skipped with the reason when llama.cpp is not "
                        "installed); implies --quantize int8,int4 unless --quantize is given")
    p.add_argument("--skip-reference", action="store_true", help="do not run transformers")
    p.add_argument("--skip-ceilings", action="store_true", help="do not measure the machine's ceilings")
    p.add_argument("--skip-load-probe", action="store_true", help="do not measure the peak RSS of loading alone")
    p.add_argument("--vision-depth", type=int, help="truncate the preset's tower to N blocks (quick iterations)")
    p.add_argument("--text-layers", type=int, help="truncate the preset's decoder to N layers (quick iterations)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--tmp-dir", help="where to write the random checkpoint (default: the system's temp dir)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from qwenvl.bench.inference import format_table, run as bench

    from .errors import CLIError
    from .inputs import check_device, check_model

    try:
        args.video_frames = [int(v) for v in args.video_frames.split(",") if v.strip()] if args.video_frames else []
    except ValueError:
        raise CLIError(f"--video-frames {args.video_frames}: expected comma-separated frame counts, "
                       "e.g. 8,32") from None
    if args.decode_tokens < 0:
        raise CLIError("--decode-tokens must be >= 0")
    if args.peer and not args.quantize:   # the peer runs at three widths: ours too
        args.quantize = "int8,int4"
    if args.model:
        check_model(args.model)
    check_device(args.device)
    args.argv = sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else []
    start = time.perf_counter()
    step = [0]

    def progress(msg: str) -> None:
        step[0] += 1
        if args.quiet:     # a log of the steps, not a redrawn bar: kept when stderr is a file
            return
        print(f"[bench {time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)

    result = bench(args, progress)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    progress("done")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(format_table(result))
    return 0
