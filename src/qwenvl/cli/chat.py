"""`qwenvl chat`: one question (streamed, or --json) or an interactive multi-turn session."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import CLIError, describe
from .inputs import (check_device, check_image, check_model, check_prompt, check_video, nonneg_float, nonneg_int,
                     positive_float, positive_int, unit_float)
from .progress import Progress, generate, wanted

HELP = """commands (a line starting with / is never sent to the model):
  /image PATH    attach an image to the next message
  /video PATH    attach a video to the next message
  /save PATH     write the conversation to PATH as JSON
  /load PATH     continue a conversation saved with /save
  /reset         forget the conversation (the system prompt stays)
  /help          this list
  /quit          leave (or Ctrl-D)
Ctrl-C stops the answer being written; the session and its history stay."""


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with images and videos (streams the answer)",
                       description="Ask about images and videos. Without a prompt, starts an interactive session "
                                   "(/image PATH and /video PATH attach media to the next turn, /save, /load, "
                                   "/reset, /help, /quit).")
    add_model_args(p)
    p.add_argument("prompt", nargs="?", help="the question; omit for an interactive session")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="image path or URL (repeatable)")
    p.add_argument("--video", action="append", default=[], metavar="PATH", help="video path or URL (repeatable)")
    p.add_argument("--fps", type=positive_float, help="video sampling fps (default 2.0)")
    p.add_argument("--min-pixels", type=positive_int, help="per-image minimum pixels after resizing")
    p.add_argument("--max-pixels", type=positive_int,
                   help="per-image (per-frame for videos) maximum pixels after resizing")
    p.add_argument("--system", help="system prompt")
    add_rules_arg(p)
    add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print {text, token_ids, prompt_tokens, timings} as JSON")
    p.set_defaults(func=run)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory or hub id (default: the bundled small model, if installed)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    add_engine_args(p)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=["int8", "int4"],
                   help="weight-only int8 (half the bytes per token of bf16) or group-wise int4 (~3.7x fewer) "
                        "for the decoder and LM head")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step (tens of seconds on the first token; no gain on small CPUs)")


# processing.image.RULES / DEFAULT_RULES, spelled out so that building the parser imports no torch
# (tests/cli/test_cli_rules.py checks they agree)
RULES, DEFAULT_RULES = ("0.0.11", "0.0.14"), "0.0.11"


def add_rules_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qwen-vl-utils-rules", choices=RULES, default=DEFAULT_RULES,
                   help=f"match this qwen-vl-utils release's resizing rules (default {DEFAULT_RULES}, the "
                        "Qwen2.5-VL-era release; 0.0.14 differs for lists of frames and bad pixel bounds)")


def use_rules(pipe, args):
    """Set the --qwen-vl-utils-rules choice on the loaded pipeline's processor."""
    import dataclasses
    rules = getattr(args, "qwen_vl_utils_rules", None)
    if rules and rules != DEFAULT_RULES:   # the processor's own default otherwise
        pipe.processor.settings = dataclasses.replace(pipe.processor.settings, rules=rules)
    return pipe


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=positive_int, default=512)
    p.add_argument("--temperature", type=nonneg_float, help="0 = greedy (default: the checkpoint's generation_config)")
    p.add_argument("--top-p", type=unit_float)
    p.add_argument("--top-k", type=nonneg_int)
    p.add_argument("--repetition-penalty", type=positive_float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop))


def check_pixels(args) -> None:
    lo, hi = getattr(args, "min_pixels", None), getattr(args, "max_pixels", None)
    if lo and hi and lo > hi:
        raise CLIError(f"--min-pixels {lo} is larger than --max-pixels {hi}")


def load_pipeline(args, progress: Progress | None = None):
    """The checkpoint and device checked (cheap), then loaded (slow) under a progress line."""
    import qwenvl

    model = check_model(args.model or getattr(qwenvl, "DEFAULT_MODEL", None))
    check_device(getattr(args, "device", None))
    progress = progress or Progress(wanted(args))
    with progress.step(f"loading {Path(model).name or model} ({args.dtype}, {args.device})"):
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
    # Everything that can be checked is checked before the (slow) load.
    check_prompt(args.prompt)
    check_pixels(args)
    for path in args.image:
        check_image(path, "--image")
    for path in args.video:
        check_video(path, "--video")
    progress = Progress(wanted(args))
    pipe = load_pipeline(args, progress)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is None:
        return interactive(pipe, args, messages, progress)
    content = media_items(args.image, args.video, args) + [{"type": "text", "text": args.prompt}]
    messages.append({"role": "user", "content": content})
    kwargs = sampling_kwargs(args)
    if args.json:
        r = generate(pipe, messages, progress, **kwargs)
        print(json.dumps({"text": r.text, "token_ids": r.token_ids, "prompt_tokens": r.prompt_tokens,
                          "finish_reason": r.finish_reason, "timings": r.timings}, ensure_ascii=False))
        return 0
    # The text streams to stdout; when that is not a terminal, stderr shows a token count instead.
    generate(pipe, messages, progress, echo=sys.stdout, count=not sys.stdout.isatty(), **kwargs)
    sys.stdout.write("\n")
    return 0


# ------------------------------------------------------------------------------------------ interactive

def _history_file() -> Path:
    if os.environ.get("QWENVL_HISTORY"):
        return Path(os.environ["QWENVL_HISTORY"])
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "qwenvl" / "chat_history"


def _readline():
    """Line editing and history (up arrow) across turns and sessions, when stdin is a terminal."""
    if not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:        # Windows without pyreadline
        return None
    path = _history_file()
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return readline, path


def _save_history(rl) -> None:
    if rl:
        readline, path = rl
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError:
            pass


def save_conversation(path: str, messages: list[dict]) -> None:
    Path(path).expanduser().write_text(json.dumps({"format": "qwenvl-chat", "messages": messages}, indent=2,
                                                  ensure_ascii=False) + "\n", encoding="utf-8")


def load_conversation(path: str) -> list[dict]:
    """Messages saved by /save (or a bare list of {role, content} messages, as the OpenAI API takes)."""
    p = Path(path).expanduser()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CLIError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CLIError(f"{path}: not a saved conversation ({type(e).__name__}: {e})") from None
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise CLIError(f"{path}: expected {{\"messages\": [...]}} as written by /save")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), (str, list))):
            raise CLIError(f"{path}: message {i} is not {{\"role\": system|user|assistant, \"content\": ...}}")
    return messages


def interactive(pipe, args, messages: list[dict], progress: Progress | None = None) -> int:
    progress = progress or Progress(False)
    from ..engine.prefix_cache import PrefixCache

    if pipe.prefix_cache is None:   # each turn starts from the keys/values of the conversation so far
        pipe.prefix_cache = PrefixCache()
    images, videos = list(args.image), list(args.video)
    kwargs = sampling_kwargs(args)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)   # noqa: E731  (the session's own notes)
    say("qwenvl chat: /help lists the commands; Ctrl-C stops an answer, Ctrl-D or /quit leaves")
    rl = _readline()
    try:
        while True:
            try:
                line = input(">>> ").strip()
            except EOFError:
                print()
                return 0
            except KeyboardInterrupt:
                print()
                say("(Ctrl-D or /quit to leave)")
                continue
            if not line:
                continue
            if line.startswith("/"):
                cmd, _, arg = line.partition(" ")
                arg = arg.strip()
                try:
                    if cmd in ("/quit", "/exit"):
                        return 0
                    elif cmd in ("/help", "/?"):
                        say(HELP)
                    elif cmd == "/reset":
                        messages = [m for m in messages if m["role"] == "system"]
                        images, videos = [], []
                        say("conversation cleared")
                    elif cmd in ("/image", "/video"):
                        if not arg:
                            raise CLIError(f"usage: {cmd} PATH")
                        (check_image if cmd == "/image" else check_video)(arg, cmd[1:])
                        (images if cmd == "/image" else videos).append(arg)
                        say(f"attached {cmd[1:]} {arg} to the next message "
                            f"({len(images)} image(s), {len(videos)} video(s) waiting)")
                    elif cmd == "/save":
                        if not arg:
                            raise CLIError("usage: /save PATH")
                        save_conversation(arg, messages)
                        say(f"saved {len(messages)} message(s) to {arg}")
                    elif cmd == "/load":
                        if not arg:
                            raise CLIError("usage: /load PATH")
                        messages = load_conversation(arg)
                        say(f"loaded {len(messages)} message(s) from {arg}")
                    else:
                        raise CLIError(f"unknown command {cmd}; /help lists them")
                except (CLIError, OSError) as e:
                    say(f"error: {describe(e, args) or e}")
                continue

            turn = {"role": "user", "content": media_items(images, videos, args) + [{"type": "text", "text": line}]}
            try:
                result = generate(pipe, messages + [turn], progress, echo=sys.stdout, count=False, **kwargs)
            except KeyboardInterrupt:
                print()
                say("(answer stopped; this turn is not kept, attachments stay for the next message)")
                continue
            except Exception as e:
                msg = describe(e, args)
                if msg is None or getattr(args, "debug", False):
                    raise          # a bug: main reports it (one line, or the traceback with --debug)
                print()
                say(f"error: {msg}")
                continue
            print()
            messages.append(turn)
            messages.append({"role": "assistant", "content": result.text})
            images, videos = [], []
    finally:
        _save_history(rl)
