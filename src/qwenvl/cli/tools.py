"""`qwenvl ground`, `qwenvl parse-doc`, `qwenvl locate`: task prompts in, typed JSON out (stdout).

Coordinates in the output are in the ORIGINAL image's pixels: the model answers in the resized input's
pixels, and the chat result's media info says which size that was.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .chat import add_model_args, check_pixels, load_pipeline
from .errors import CLIError, one_line
from .inputs import check_image, check_video, positive_float, positive_int
from .progress import Progress, generate, wanted


def register(sub) -> None:
    p = sub.add_parser("ground", help="find objects in an image: boxes or points as JSON",
                       description="Locate what QUERY describes; prints boxes (or points) in the image's pixels.")
    add_model_args(p)
    p.add_argument("image", help="image path")
    p.add_argument("query", help='what to find, e.g. "the red car" or "every cake"')
    p.add_argument("--points", action="store_true", help="ask for points instead of boxes")
    p.add_argument("--save", metavar="PNG", help="draw the results on the image and save it here")
    _pixel_args(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=1024)
    p.set_defaults(func=run_ground)

    p = sub.add_parser("parse-doc", help="parse a document image or PDF (QwenVL HTML) into blocks",
                       description="Document parsing: one result per page, boxes in page pixels.")
    add_model_args(p)
    p.add_argument("file", help="image or PDF path")
    p.add_argument("--format", choices=["html", "markdown", "json"], default="json")
    p.add_argument("--save", metavar="PNG", help="draw the blocks on the page (PDF: NAME-pageN.png per page)")
    p.add_argument("--dpi", type=positive_float, default=144.0, help="PDF render resolution (default 144)")
    _pixel_args(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=4096)
    p.set_defaults(func=run_parse_doc)

    p = sub.add_parser("locate", help="when does something happen in a video (start/end seconds)",
                       description="Temporal grounding: prints the span in seconds. When the answer states no "
                                   "explicit span, start and end are null and the exit status is 3.")
    add_model_args(p)
    p.add_argument("video", help="video path")
    p.add_argument("query", help="the event to find")
    p.add_argument("--fps", type=positive_float, help="sampling fps (default 2.0)")
    p.add_argument("--max-pixels", type=positive_int, help="per-frame maximum pixels")
    p.add_argument("--max-new-tokens", type=positive_int, default=256)
    p.set_defaults(func=run_locate)


def _pixel_args(p) -> None:
    p.add_argument("--min-pixels", type=positive_int, help="minimum pixels after resizing")
    p.add_argument("--max-pixels", type=positive_int, help="maximum pixels after resizing (grounding works best "
                                                           "around 1024-2048 image tokens, i.e. 0.8-1.6M pixels)")


def _image_item(image, args) -> dict:
    item = {"type": "image", "image": image}
    for key in ("min_pixels", "max_pixels"):
        if getattr(args, key, None):
            item[key] = getattr(args, key)
    return item


def _sizes(result, image_size, pipe, args) -> tuple[tuple, tuple]:
    """(original, input) sizes as (w, h): the processor's own numbers when the result carries them."""
    media = getattr(result, "media", None) or []
    info = media[0] if media else None
    original = tuple(getattr(info, "original_size", None) or image_size)
    input_size = getattr(info, "input_size", None)
    if input_size:
        return original, tuple(input_size)
    from qwenvl.tasks import screen_input_size        # fall back to the resize rule the processor uses
    proc = getattr(pipe, "processor", None)
    lo = getattr(args, "min_pixels", None) or getattr(proc, "min_pixels", None)
    hi = getattr(args, "max_pixels", None) or getattr(proc, "max_pixels", None)
    return original, screen_input_size(original, min_pixels=lo, max_pixels=hi)


def _print(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def _check_save(path) -> None:
    if path and not Path(path).expanduser().parent.is_dir():
        raise CLIError(f"--save {path}: the folder {Path(path).parent} does not exist")


def run_ground(args) -> int:
    from PIL import Image

    check_image(args.image)
    check_pixels(args)
    _check_save(args.save)
    progress = Progress(wanted(args))
    with progress.step("starting (importing torch)"):     # seconds on a busy machine
        from qwenvl.tasks import draw_detections, grounding_prompt, parse_boxes
    path = Path(args.image)
    image = Image.open(path)
    pipe = load_pipeline(args, progress)
    prompt = grounding_prompt(args.query, points=args.points)
    # No system message of our own: the checkpoint's template supplies its default (the release's is
    # "You are a helpful assistant."; the bundled model's template has none, as it was trained).
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}, _image_item(str(path), args)]}]
    result = generate(pipe, messages, progress, max_new_tokens=args.max_new_tokens, temperature=0)
    original, input_size = _sizes(result, image.size, pipe, args)
    dets = parse_boxes(result.text, input_size=input_size, image_size=original)
    if args.save:
        draw_detections(image, dets, args.save)
    _print({"image": str(path), "query": args.query, "image_size": list(original), "input_size": list(input_size),
            "detections": [d.to_dict() for d in dets], "raw": result.text, "warnings": dets.warnings,
            **({"saved": args.save} if args.save else {})})
    return 0


def render_pages(path: Path, dpi: float = 144.0) -> list:
    """Document pages as RGB PIL images: every page of a PDF (pypdfium2), or the image itself. A file that
    does not open is a CLIError naming it (before any model is loaded)."""
    if path.suffix.lower() == ".pdf":
        try:
            import pypdfium2 as pdfium
        except ImportError:
            raise CLIError(f"{path}: reading PDFs needs pypdfium2: pip install 'qwenvl[docs]'") from None
        try:
            pdf = pdfium.PdfDocument(str(path))
        except pdfium.PdfiumError as e:
            raise CLIError(f"{path}: not a readable PDF ({one_line(e, 120)}); is it complete and "
                           "unencrypted?") from None
        try:
            if len(pdf) == 0:
                raise CLIError(f"{path}: the PDF has no pages")
            # pdfium renders onto an opaque white page, so convert() only changes the mode (BGR(A)/L -> RGB)
            return [pdf[i].render(scale=dpi / 72.0).to_pil().convert("RGB") for i in range(len(pdf))]
        finally:
            pdf.close()
    from PIL import Image

    from qwenvl.processing.image import to_rgb

    check_image(path, "document")
    return [to_rgb(Image.open(path))]    # the processor's rule (RGBA onto white), not a plain convert


def run_parse_doc(args) -> int:
    path = Path(args.file)
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    check_pixels(args)
    _check_save(args.save)
    progress = Progress(wanted(args))
    with progress.step(f"reading {path.name}"):
        pages = render_pages(path, args.dpi)
    with progress.step("starting (importing torch)"):
        from qwenvl.tasks import DOC_PROMPT, draw_document, parse_document
    pipe = load_pipeline(args, progress)
    out = []
    for n, page in enumerate(pages, 1):
        messages = [{"role": "user", "content": [{"type": "text", "text": DOC_PROMPT}, _image_item(page, args)]}]
        result = generate(pipe, messages, progress, desc=f"page {n}/{len(pages)}",
                          max_new_tokens=args.max_new_tokens, temperature=0)
        original, input_size = _sizes(result, page.size, pipe, args)
        doc = parse_document(result.text, input_size=input_size, image_size=original)
        entry = {"page": n, "image_size": list(original), "input_size": list(input_size), "warnings": doc.warnings}
        if args.format == "html":
            entry["html"] = doc.html
        elif args.format == "markdown":
            entry["markdown"] = doc.to_markdown()
        else:
            entry["blocks"] = doc.to_dict()["blocks"]
        if args.save:
            save = Path(args.save)
            if len(pages) > 1:
                save = save.with_name(f"{save.stem}-page{n}{save.suffix or '.png'}")
            draw_document(page, doc, save)
            entry["saved"] = str(save)
        out.append(entry)
    _print({"file": str(path), "format": args.format, "pages": out})
    return 0


NO_SPAN = 3   # exit status of `locate` when the answer states no time span (the JSON still comes, with nulls)


def run_locate(args) -> int:
    check_video(args.video)
    path = Path(args.video)
    progress = Progress(wanted(args))
    with progress.step("starting (importing torch)"):
        from qwenvl.tasks import find_time_span, temporal_grounding_prompt
    pipe = load_pipeline(args, progress)
    item = {"type": "video", "video": str(path)}
    if args.fps:
        item["fps"] = args.fps
    if args.max_pixels:
        item["max_pixels"] = args.max_pixels
    messages = [{"role": "user", "content": [{"type": "text", "text": temporal_grounding_prompt(args.query)}, item]}]
    result = generate(pipe, messages, progress, max_new_tokens=args.max_new_tokens, temperature=0)
    span = find_time_span(result.text)
    media = getattr(result, "media", None) or []
    info = media[0] if media else None
    warnings = [] if span else ["no time span in the model's answer (expected a form like '12.5 - 17.0 seconds', "
                                "'from 12.5 to 17 seconds' or '00:12 - 00:17'); start and end are null"]
    _print({"video": str(path), "query": args.query, "start": span.start if span else None,
            "end": span.end if span else None, "rule": span.rule if span else None, "fps": getattr(info, "fps", None),
            "num_frames": getattr(info, "num_frames", None), "raw": result.text, "warnings": warnings})
    if not span:
        print(f"qwenvl locate: {warnings[0]}", file=sys.stderr)
        return NO_SPAN
    return 0
