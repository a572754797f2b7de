"""Synthetic training and evaluation data for a small Qwen2.5-VL: seeded generators of scenes and the
questions Qwen2.5-VL answers, in its own answer formats, plus their scorers.

Tasks (`TASKS`):
- ground:       "Locate the {colour} {shape}, output its bbox coordinates using JSON format." -> a ```json
                list with one {"bbox_2d": [x1, y1, x2, y2], "label": ...}
- ground_all:   "Outline the position of each {shape} and output all the coordinates in JSON format." ->
                every such shape (or every shape, for "shape"), top to bottom then left to right
- point:        "Point to the {colour} {shape}, output its coordinates in JSON format." -> {"point_2d": [x, y]}
- count:        "How many {shape}s are there?" / "How many shapes are there?" -> digits
- read:         a word or short line rendered in one of several fonts -> the text
- document:     a small page (headings, paragraphs, lists, tables), prompt "QwenVL HTML" -> QwenVL HTML with
                data-bbox="x1 y1 x2 y2" on every block (and on every <li>)
- gui:          an app screen (buttons, text fields, checkboxes) "Click the {label} button." -> the click point
                as a Qwen2.5-VL grounding point ({"point_2d": [x, y], "label": ...} in a ```json list)
- video_ground: a clip of 2-12 s at 0.5-4 fps where a shape appears, moves or changes colour between two
                times -> "The given query happens in S - E seconds."
- identify:     "What is the shape at [x1, y1, x2, y2]? Answer with its colour and kind." -> "{colour} {shape}"
                (the converse of grounding, a shape scene's box given)
- cell:         "What is the shape in row R, column C?" -> "{colour} {shape}", or "In which row and column is
                the {colour} {shape}?" -> "row R, column C" (rows and columns of merged image tokens, 28 input
                pixels, from 1; the cell holding the box's centre): both directions in words

Coordinates in answers are absolute pixels of the RESIZED input (smart_resize, factor 28, the sample's
pixel budget), as Qwen2.5-VL writes them; targets are in original pixels and seconds. Each media item
carries its min_pixels / max_pixels, so the processor resizes it to exactly the size the answer assumes.

Video time: frame k of a clip at `fps` is at k / fps seconds; clips have an even number of frames (the
model's temporal patches are frame pairs) and events start and end on pair boundaries, so S and E are
times the model can resolve (MRoPE places pair t at 2t / fps seconds via second_per_grid_ts).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path


TASKS: tuple[str, ...] = ("ground", "ground_all", "point", "count", "read", "document", "gui", "video_ground",
                          "identify", "cell")
# corpus() draws from these only: the tasks the bundled tokenizer was trained on (an `init` stays reproducible)
CORPUS_TASKS = TASKS[:8]
ORDERS = ("random", "media_first", "text_first")
BACKGROUNDS = ("plain", "noise", "gradient")   # the default mix
# "light": a plain light grey, as the probe's scenes had (docs/training.md, chunk 13), for a first stage
BACKGROUND_KINDS = BACKGROUNDS + ("light",)

__all__ = ["TASKS", "Example", "sample", "score", "stream", "corpus", "write"]


@dataclass
class Example:
    task: str
    messages: list[dict]
    targets: list[dict]                 # one per question turn, original pixels / seconds
    media_size: tuple[int, int]         # (w, h) of the original image / frames
    input_size: tuple[int, int]         # (w, h) after smart_resize with the sample's budget
    fps: float | None = None            # video_ground: the frames' rate


@dataclass
class Opts:
    min_pixels: int
    max_pixels: int
    size_range: tuple[int, int]
    turns: int
    draw: bool = True
    objects: tuple[int, int] = (1, 6)            # shapes in a scene
    fps_range: tuple[float, float] = (0.5, 4.0)  # clips' frame rates
    seconds_range: tuple[float, float] = (2.0, 12.0)  # clips' lengths
    backgrounds: tuple[str, ...] = BACKGROUNDS  # shape scenes' and clips' backgrounds
    shapes: tuple[str, ...] = ()                # shape scenes' kinds and colours (_draft fills in all by default)
    colors: tuple[str, ...] = ()
    aligned: float = 0.0                        # shape scenes: the share whose shapes fill one merged-token cell each
    crisp: float = 0.0                          # shape scenes: the share in reference colours with sharp edges

    def insize(self, size) -> tuple[int, int]:
        from .common import input_size
        return input_size(size, self.min_pixels, self.max_pixels)


# The package imports its generators lazily, so that `qwenvl --help` (which registers `qwenvl data`)
# does not load torch, numpy and the fonts.

def score(task: str, target: dict, text: str, input_size, media_size) -> dict[str, float]:
    """Metrics of one answer (see qwenvl.synth.scoring): ground {acc@0.5, iou}, ground_all {all_matched@0.5,
    f1@0.5}, point {point_in_box}, count {exact}, read {exact}, document {block_f1}, gui {click_in_element},
    video_ground {miou, r@0.5}."""
    from .scoring import score as _score
    return _score(task, target, text, input_size, media_size)


def _generator(task: str):
    if task in ("ground", "ground_all", "point", "count", "identify", "cell"):
        from . import shapes
        return lambda rng, opts: shapes.generate(task, rng, opts)
    if task == "read":
        from .text import generate_read
        return generate_read
    if task == "document":
        from .text import generate_document
        return generate_document
    if task == "gui":
        from .gui import generate
        return generate
    if task == "video_ground":
        from .video import generate
        return generate
    raise ValueError(f"unknown synth task {task!r}; known: {', '.join(TASKS)}")


def _names(what: str, given, known: tuple[str, ...]) -> tuple[str, ...]:
    """`given` (None: all of `known`) checked against `known`."""
    if given is None:
        return known
    given = tuple(given)
    bad = [x for x in given if x not in known]
    if bad or not given:
        problem = f"unknown {bad[0]!r}" if bad else "none given"
        raise ValueError(f"{what}: {problem}; choose from {', '.join(known)}")
    return given


def _share(name: str, value) -> float:
    """A share of scenes in [0, 1]; the flag spellings False / True are 0 and 1."""
    try:
        share = float(value)
    except (TypeError, ValueError):
        share = None
    if share is None or not 0 <= share <= 1:
        raise ValueError(f"{name} must be a share in [0, 1] (True: 1), got {value!r}")
    return share


def _draft(task, rng, min_pixels, max_pixels, turns, size_range, video_max_pixels, draw, objects=(1, 6),
           fps_range=(0.5, 4.0), seconds_range=(2.0, 12.0), backgrounds=BACKGROUNDS, shapes=None, colors=None,
           aligned=False, crisp=False):
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    lo, hi = size_range
    if not 28 <= lo <= hi:
        raise ValueError(f"size_range must be (lo, hi) with 28 <= lo <= hi, got {size_range}")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) > max_pixels ({max_pixels})")
    if not 1 <= objects[0] <= objects[1] <= 6:
        raise ValueError(f"objects must be (lo, hi) with 1 <= lo <= hi <= 6, got {objects}")
    if not 0 < fps_range[0] <= fps_range[1]:
        raise ValueError(f"fps_range must be (lo, hi) with 0 < lo <= hi, got {fps_range}")
    if not 0 < seconds_range[0] <= seconds_range[1]:
        raise ValueError(f"seconds_range must be (lo, hi) with 0 < lo <= hi, got {seconds_range}")
    aligned, crisp = _share("aligned", aligned), _share("crisp", crisp)
    from .common import COLORS, SHAPES
    backgrounds = _names("backgrounds", backgrounds, BACKGROUND_KINDS)
    shapes, colors = _names("shapes", shapes, SHAPES), _names("colors", colors, tuple(COLORS))
    if len(shapes) * len(colors) < objects[1]:
        raise ValueError(f"{objects[1]} objects a scene need as many colour + shape pairs; "
                         f"shapes {shapes} x colors {colors} give fewer")
    budget = video_max_pixels if task == "video_ground" else max_pixels
    opts = Opts(min(min_pixels, budget), budget, (lo, hi), turns, draw, tuple(objects), tuple(fps_range),
                tuple(seconds_range), backgrounds, shapes, colors, aligned, crisp)
    media, size, qa, *rest = _generator(task)(rng, opts)
    return media, size, qa, opts, (rest[0] if rest else None)


def sample(task: str, rng: random.Random, *, min_pixels: int = 4 * 28 * 28, max_pixels: int = 160 * 28 * 28,
           turns: int = 1, size_range: tuple[int, int] = (112, 640), video_max_pixels: int = 64 * 28 * 28,
           order: str = "random", objects: tuple[int, int] = (1, 6), fps_range: tuple[float, float] = (0.5, 4.0),
           seconds_range: tuple[float, float] = (2.0, 12.0), backgrounds: tuple[str, ...] = BACKGROUNDS,
           shapes: tuple[str, ...] | None = None, colors: tuple[str, ...] | None = None,
           aligned: float = 0.0, crisp: float = 0.0) -> Example:
    """One example of `task` drawn from `rng`.

    size_range: original image / frame sides in pixels. order: where the media goes in the first user
    turn, "media_first", "text_first" (what `qwenvl ground/locate/parse-doc` send) or "random" (either,
    so the model answers both the chat and the task commands). objects: how many shapes a scene holds
    (shape tasks; a curriculum may start at (1, 1)). fps_range / seconds_range: clips' frame rate and
    length (video_ground; at least 4 frames whatever the range). backgrounds: the kinds a shape scene or
    clip is drawn on ("plain", "noise", "gradient", or "light": a light grey; a curriculum may start on
    light or plain ones). shapes / colors:
    the kinds and colours shape scenes draw from (None: all; a curriculum may start with fewer). aligned: the share
    of scenes (True: all) whose shapes each fill one cell of merged image tokens (28 x 28 pixels of the resized
    input) exactly, a different cell each, as the naming diagnostic's squares did (a curriculum's first stage, or
    the anchor a later stage keeps; default: none, shapes of any size and place). crisp: the share of scenes (True:
    all) with shapes in their colours' reference values and sharp edges, as the diagnostic drew them (default:
    none, shaded and jittered colours, soft edges on some scenes, as other renderers give)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    media, size, qa, opts, fps = _draft(task, rng, min_pixels, max_pixels, turns, size_range, video_max_pixels, True,
                                        objects, fps_range, seconds_range, backgrounds, shapes, colors, aligned,
                                        crisp)
    if task == "video_ground":
        item = {"type": "video", "video": media, "fps": fps}
    else:
        item = {"type": "image", "image": media}
    item.update(min_pixels=opts.min_pixels, max_pixels=opts.max_pixels)
    text_first = order == "text_first" or (order == "random" and rng.random() < 0.5)
    messages = []
    for i, (q, a, _) in enumerate(qa):
        content = [{"type": "text", "text": q}]
        if i == 0:
            content = content + [item] if text_first else [item] + content
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": a}]
    return Example(task, messages, [t for _, _, t in qa], tuple(size), opts.insize(size), fps)


def stream(tasks=TASKS, seed: int = 0, start: int = 0, weights=None, **sample_kw):
    """Endless examples: example i is `sample(task_i, Random(f"{seed}/{i}"))`, task_i drawn from `tasks`
    (with `weights`) by the same generator, so a run resumes exactly from `start` = examples consumed."""
    tasks = list(tasks)
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown synth task {t!r}; known: {', '.join(TASKS)}")
    i = start
    while True:
        rng = random.Random(f"{seed}/{i}")
        task = rng.choices(tasks, weights=weights)[0]
        yield sample(task, rng, **sample_kw)
        i += 1


def corpus(n: int, seed: int = 0) -> list[str]:
    """n question + answer texts over CORPUS_TASKS in turn (for training a tokenizer); no pixels drawn."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = CORPUS_TASKS[i % len(CORPUS_TASKS)]
        _, _, qa, _, _ = _draft(task, rng, 4 * 28 * 28, 160 * 28 * 28, 1, (112, 640), 64 * 28 * 28, False)
        out.extend(f"{q}\n{a}" for q, a, _ in qa)
    return out[:n]


def write(task: str, n: int, out: str | Path, seed: int = 0, **sample_kw) -> tuple[Path, Path]:
    """n examples as files: media under out/images (PNG) or out/videos (MP4, needs PyAV), out/train.jsonl
    (the messages format `qwenvl train` reads, media paths relative to out/) and out/eval.jsonl (one row
    per question, read by the synth_* eval tasks). Returns (train_jsonl, eval_jsonl)."""
    from .files import write as _write
    return _write(task, n, out, seed, **sample_kw)
