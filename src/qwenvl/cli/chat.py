"""`qwenvl chat`: one question (streamed, or --json) or an interactive multi-turn session."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with images and videos (streams the answer)",
                       description="Ask about images and videos. Without a prompt, starts an interactive session "
                                   "(/image PATH and /video PATH attach media to the next turn, /reset, /quit).")
    add_model_args(p)
    p.add_argument("prompt", nargs="?", help="the question; omit for an interactive session")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="image path or URL (repeatable)")
    p.add_argument("--video", action="append", default=[], metavar="PATH", help="video path or URL (repeatable)")
    p.add_argument("--fps", type=float, help="video sampling fps (default 2.0)")
    p.add_argument("--min-pixels", type=int, help="per-image minimum pixels after resizing")
    p.add_argument("--max-pixels", type=int, help="per-image (per-frame for videos) maximum pixels after resizing")
    p.add_argument("--system", help="system prompt")
    add_rules_arg(p)
    add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print {text, token_ids, prompt_tokens, timings} as JSON")
    p.set_defaults(func=run)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory or hub id (default: the bundled small model, if installed)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    add_engine_args(p)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=["int8"],
                   help="weight-only int8 for the decoder and LM head (half the bytes per token of bf16)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (tens of seconds on the first token; no gain on small CPUs)")


def add_rules_arg(p: argparse.ArgumentParser) -> None:
    from ..processing.image import DEFAULT_RULES, RULES
    p.add_argument("--qwen-vl-utils-rules", choices=RULES, default=DEFAULT_RULES,
                   help=f"match this qwen-vl-utils release's resizing rules (default {DEFAULT_RULES}, the "
                        "Qwen2.5-VL-era release; 0.0.14 differs for lists of frames and bad pixel bounds)")


def use_rules(pipe, args):
    """Set the --qwen-vl-utils-rules choice on the loaded pipeline's processor."""
    import dataclasses
    rules = getattr(args, "qwen_vl_utils_rules", None)
    if rules:
        pipe.processor.settings = dataclasses.replace(pipe.processor.settings, rules=rules)
    return pipe


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, help="0 = greedy (default: the checkpoint's generation_config)")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop))


def load_pipeline(args):
    import qwenvl
    model = args.model or getattr(qwenvl, "DEFAULT_MODEL", None)
    if not model:
        raise ValueError("no --model given and no default model is installed")
    return use_rules(qwenvl.load(model, dtype=args.dtype, device=args.device, quantize=args.quantize,
                                 compile=args.compile), args)


def media_items(images, videos, args) -> list[dict]:
    items = []
    for path in images:
        item = {"type": "image", "image": path}
        for key in ("min_pixels", "max_pixels"):
            if getattr(args, key, None):
                item[key] = getattr(args, key)
        items.append(item)
    for path in videos:
        item = {"type": "video", "video": path}
        if args.fps:
            item["fps"] = args.fps
        if getattr(args, "max_pixels", None):
            item["max_pixels"] = args.max_pixels
        items.append(item)
    return items


def run(args) -> int:
    pipe = load_pipeline(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is None:
        return interactive(pipe, args, messages)
    content = media_items(args.image, args.video, args) + [{"type": "text", "text": args.prompt}]
    messages.append({"role": "user", "content": content})
    kwargs = sampling_kwargs(args)
    if args.json:
        r = pipe.chat(messages, **kwargs)
        print(json.dumps({"text": r.text, "token_ids": r.token_ids, "prompt_tokens": r.prompt_tokens,
                          "finish_reason": r.finish_reason, "timings": r.timings}, ensure_ascii=False))
        return 0
    for delta in pipe.stream(messages, **kwargs):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def interactive(pipe, args, messages: list[dict]) -> int:
    images, videos = list(args.image), list(args.video)
    kwargs = sampling_kwargs(args)
    print("qwenvl chat — /image PATH, /video PATH, /reset, /quit", file=sys.stderr)
    while True:
        try:
            line = input(">>> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            messages = [m for m in messages if m["role"] == "system"]
            continue
        if line.startswith("/image "):
            images.append(line[7:].strip())
            continue
        if line.startswith("/video "):
            videos.append(line[7:].strip())
            continue
        messages.append({"role": "user", "content": media_items(images, videos, args) + [{"type": "text", "text": line}]})
        images, videos = [], []
        try:
            gen = pipe.stream(messages, **kwargs)
            while True:
                try:
                    sys.stdout.write(next(gen))
                    sys.stdout.flush()
                except StopIteration as stop:
                    result = stop.value
                    break
        except (ValueError, FileNotFoundError) as e:
            messages.pop()
            print(f"error: {e}", file=sys.stderr)
            continue
        print()
        messages.append({"role": "assistant", "content": result.text})
