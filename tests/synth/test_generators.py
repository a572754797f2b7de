"""qwenvl.synth generators and scorers: seeded, answers in Qwen2.5-VL's formats that the project's parsers
read, coordinates in the resized input that map back to the target, video timing on frame pairs."""

from __future__ import annotations

import random

import pytest

from qwenvl import synth
from qwenvl.processing.image import fetch_image_sized
from qwenvl.synth.common import COLORS, SHADES
from qwenvl.tasks import parse_boxes, parse_document, parse_time_span

IMAGE_TASKS = [t for t in synth.TASKS if t != "video_ground"]


def media(ex):
    return next(it for it in ex.messages[0]["content"] if it["type"] in ("image", "video"))


def fingerprint(ex):
    item = media(ex)
    pix = [f.tobytes() for f in item["video"]] if item["type"] == "video" else [item["image"].tobytes()]
    return ([m["content"] if isinstance(m["content"], str) else
             [c.get("text") for c in m["content"]] for m in ex.messages], ex.targets, ex.media_size, pix)


@pytest.mark.parametrize("task", synth.TASKS)
def test_deterministic_per_seed(task):
    a = [fingerprint(synth.sample(task, random.Random(7), turns=2)) for _ in range(2)]
    assert a[0] == a[1]
    others = [fingerprint(synth.sample(task, random.Random(s), turns=2)) for s in (8, 9)]
    assert all(o != a[0] for o in others)


def test_no_global_random_state_used():
    random.seed(1)
    x = fingerprint(synth.sample("ground", random.Random(3)))
    random.seed(2)
    import numpy as np
    np.random.seed(5)
    assert fingerprint(synth.sample("ground", random.Random(3))) == x


@pytest.mark.parametrize("task", synth.TASKS)
def test_own_answers_score_perfectly_and_wrong_ones_zero(task):
    rng = random.Random(11)
    for i in range(25):
        ex = synth.sample(task, rng, turns=1 + i % 3, size_range=[(56, 200), (112, 640), (300, 1000)][i % 3],
                          max_pixels=[64, 160, 400][i % 3] * 28 * 28)
        assert ex.task == task and len(ex.messages) == 2 * len(ex.targets)
        for j, target in enumerate(ex.targets):
            answer = ex.messages[2 * j + 1]["content"]
            m = synth.score(task, target, answer, ex.input_size, ex.media_size)
            assert set(m) == set(synth.scoring.METRICS[task])
            for k, v in m.items():
                assert v >= (0.8 if k == "iou" else 1.0), (task, k, v, answer, target)
            wrong = wrong_answer(task, target, answer, ex)
            for k, v in synth.score(task, target, wrong, ex.input_size, ex.media_size).items():
                assert v < (1.0 if k == "f1@0.5" else 0.5), (task, k, v, wrong, target)
            assert all(v == 0 for v in synth.score(task, target, "", ex.input_size, ex.media_size).values())


def wrong_answer(task, target, answer, ex):
    w, h = ex.input_size
    if task in ("ground", "point", "gui"):
        # the quadrant farthest from the target
        b = target["bbox"]
        sx, sy = ex.input_size[0] / ex.media_size[0], ex.input_size[1] / ex.media_size[1]
        cx, cy = (b[0] + b[2]) / 2 * sx, (b[1] + b[3]) / 2 * sy
        x = 1 if cx > w / 2 else w - 1
        y = 1 if cy > h / 2 else h - 1
        if task == "ground":
            return answer.replace(answer[answer.index("[", 10):answer.index("]") + 1], f"[{x}, {y}, {x}, {y}]")
        return f'```json\n[\n\t{{"point_2d": [{x}, {y}], "label": "x"}}\n]\n```'
    if task == "ground_all":
        lines = answer.split("\n")
        boxes = [ln for ln in lines if "bbox_2d" in ln]
        if len(boxes) > 1:          # one box missing
            return "\n".join(ln for ln in lines if ln != boxes[-1]).replace("},\n]", "}\n]")
        return answer + "\n" + answer          # one box twice: an extra box
    if task == "count":
        return str(target["count"] + 1)
    if task == "read":
        return target["text"] + "x"
    if task == "document":
        return "```html\n<html><body>\n<p data-bbox=\"0 0 1 1\">nothing</p>\n</body></html>\n```"
    if task == "identify":          # the right kind in another colour
        colour, kind = target["label"].split()
        return f"{'blue' if colour != 'blue' else 'red'} {kind}"
    if task == "cell":              # the next column over, or the right kind in another colour
        if target["ask"] == "cell":
            return f"row {target['cell'][0]}, column {target['cell'][1] + 1}"
        return wrong_answer("identify", target, answer, ex)
    s, e = target["span"]
    return f"The given query happens in {e + 1:.1f} - {e + 3:.1f} seconds."


@pytest.mark.parametrize("size_range", [(28, 60), (100, 300), (500, 1000), (900, 1000)])
@pytest.mark.parametrize("budget", [(4 * 784, 16 * 784), (4 * 784, 160 * 784), (1024 * 784, 2048 * 784)])
def test_coordinates_map_back_for_many_sizes(size_range, budget):
    """The processor resizes each item to Example.input_size, and the answer's boxes, read by parse_boxes
    from that size, land within a resized pixel of the target in original pixels."""
    rng = random.Random(hash((size_range, budget)) % 997)
    for task in ("ground", "ground_all", "point", "gui"):
        ex = synth.sample(task, rng, size_range=size_range, min_pixels=budget[0], max_pixels=budget[1])
        item = media(ex)
        resized, orig = fetch_image_sized(item)
        assert resized.size == ex.input_size and orig == ex.media_size
        assert ex.input_size[0] % 28 == 0 and ex.input_size[1] % 28 == 0
        assert budget[0] <= ex.input_size[0] * ex.input_size[1] <= max(budget[1], 28 * 28)
        dets = parse_boxes(ex.messages[1]["content"], input_size=ex.input_size, image_size=ex.media_size)
        assert dets.format == "json"
        tol = 0.51 * max(ex.media_size[0] / ex.input_size[0], ex.media_size[1] / ex.input_size[1]) + 1e-6
        t = ex.targets[0]
        if task == "ground_all":
            assert [d.label for d in dets] == t["labels"]
            for d, box in zip(dets, t["boxes"]):
                assert max(abs(p - q) for p, q in zip(d.bbox, box)) <= tol
        elif task == "ground":
            assert dets[0].label == t["label"] and max(abs(p - q) for p, q in zip(dets[0].bbox, t["bbox"])) <= tol
        elif task == "point":
            assert max(abs(p - q) for p, q in zip(dets[0].point, t["point"])) <= tol
        else:
            b = t["bbox"]
            assert b[0] <= dets[0].point[0] <= b[2] and b[1] <= dets[0].point[1] <= b[3]


def nearest_colour(rgb) -> str:
    refs = [(name, ref) for name in COLORS for ref in (COLORS[name],) + SHADES[name]]
    return min(refs, key=lambda r: sum((a - b) ** 2 for a, b in zip(rgb, r[1])))[0]


def test_scene_content_matches_the_questions():
    """The named shape is unique, drawn in its colour at the answer's point, and the counts are right."""
    rng = random.Random(5)
    for _ in range(30):
        ex = synth.sample("point", rng, size_range=(200, 400))
        t = ex.targets[0]
        img = media(ex)["image"]
        rgb = img.getpixel(tuple(int(v) for v in t["point"]))
        colour = t["label"].split()[0]
        assert nearest_colour(rgb) == colour, (rgb, t)
        q = ex.messages[0]["content"]
        assert any(c.get("text") == f"Point to the {t['label']}, output its coordinates in JSON format." for c in q)
    for _ in range(20):
        ex = synth.sample("ground_all", rng, turns=2)
        for j, t in enumerate(ex.targets):
            q = next(c["text"] for c in ex.messages[2 * j]["content"] if isinstance(c, dict) and c["type"] == "text") \
                if j == 0 else ex.messages[2 * j]["content"][0]["text"]
            kind = q.split("each ")[1].split(" and")[0]
            assert all(lab.endswith(kind) for lab in t["labels"]) or kind == "shape"
            assert len(set(t["labels"])) == len(t["labels"])    # unique by colour + shape


def test_multi_turn_media_only_in_the_first_turn():
    ex = synth.sample("ground", random.Random(2), turns=3, objects=(3, 6))
    roles = [m["role"] for m in ex.messages]
    assert roles == ["user", "assistant"] * 3
    kinds = [[c["type"] for c in m["content"]] for m in ex.messages[::2]]
    assert sorted(kinds[0]) == ["image", "text"] and kinds[1] == kinds[2] == ["text"]


@pytest.mark.parametrize("task", ["ground", "point", "cell"])
def test_a_shape_is_asked_for_once_per_conversation(task):
    rng = random.Random(6)
    for _ in range(40):
        ex = synth.sample(task, rng, turns=4, objects=(1, 6))
        labels = [t["label"] for t in ex.targets]
        assert len(labels) == len(set(labels))      # never the same question twice
        assert 1 <= len(labels) <= 4
    # a one-shape scene is a one-turn conversation, however many turns are asked
    assert len(synth.sample(task, random.Random(1), turns=3, objects=(1, 1)).targets) == 1
    # and a six-shape scene gives every turn asked
    assert len(synth.sample(task, random.Random(1), turns=3, objects=(6, 6)).targets) == 3


def test_order_option():
    first = synth.sample("count", random.Random(1), order="text_first").messages[0]["content"]
    assert [c["type"] for c in first] == ["text", "image"]
    first = synth.sample("count", random.Random(1), order="media_first").messages[0]["content"]
    assert [c["type"] for c in first] == ["image", "text"]
    with pytest.raises(ValueError, match="order"):
        synth.sample("count", random.Random(1), order="sideways")


def test_bad_arguments_name_the_item():
    with pytest.raises(ValueError, match="unknown synth task 'bogus'"):
        synth.sample("bogus", random.Random(0))
    with pytest.raises(ValueError, match="turns"):
        synth.sample("ground", random.Random(0), turns=0)
    with pytest.raises(ValueError, match="size_range"):
        synth.sample("ground", random.Random(0), size_range=(300, 100))
    with pytest.raises(ValueError, match="unknown synth task"):
        synth.score("bogus", {}, "", (28, 28), (28, 28))


def test_document_answer_parses_into_the_target_blocks():
    rng = random.Random(4)
    for _ in range(10):
        ex = synth.sample("document", rng)
        doc = parse_document(ex.messages[1]["content"], input_size=ex.input_size, image_size=ex.media_size)
        blocks = ex.targets[0]["blocks"]
        assert not doc.warnings
        assert [synth.scoring.doc_kind(b.kind) for b in doc.blocks] == [b["kind"] for b in blocks]
        for b, t in zip(doc.blocks, blocks):
            assert " ".join(b.text.split()) == t["text"]
            if t["kind"] == "list":
                assert len(b.items) >= 2 and all(i.bbox for i in b.items)
        # blocks are stacked top to bottom and stay on the page
        ys = [t["bbox"][1] for t in blocks]
        assert ys == sorted(ys) and all(t["bbox"][3] <= ex.media_size[1] for t in blocks)


def test_read_text_is_legible_after_resizing():
    rng = random.Random(6)
    for _ in range(30):
        ex = synth.sample("read", rng, max_pixels=160 * 28 * 28)
        x1, y1, x2, y2 = ex.targets[0]["bbox"]
        assert 0 <= x1 < x2 <= ex.media_size[0] and 0 <= y1 < y2 <= ex.media_size[1]
        assert (y2 - y1) * ex.input_size[1] / ex.media_size[1] >= 8      # ink height in input pixels
        assert ex.messages[1]["content"] == ex.targets[0]["text"]


def test_video_timing_and_events():
    rng = random.Random(3)
    seen = set()
    for i in range(40):
        ex = synth.sample("video_ground", rng, turns=1 + i % 2)
        item = media(ex)
        frames, fps = item["video"], item["fps"]
        n = len(frames)
        assert n % 2 == 0 and n >= 4 and 0.5 <= fps <= 4.0 and fps == ex.fps
        assert 2.0 <= n / fps <= 12.0 + 1e-9 or n == 4
        assert all(f.size == ex.media_size for f in frames) and ex.media_size[0] % 2 == 0
        for j, t in enumerate(ex.targets):
            a, b = t["frames"]
            assert a % 2 == 0 and b % 2 == 0 and 0 <= a < b <= n and (a, b) != (0, n)
            assert t["span"] == [round(a / fps, 1), round(b / fps, 1)]
            assert parse_time_span(ex.messages[2 * j + 1]["content"]) == tuple(t["span"])
            seen.add(t["event"])
        if len(ex.targets) == 1:        # one event: the frames change exactly at its edges
            t = ex.targets[0]
            a, b = t["frames"]
            px = [f.tobytes() for f in frames]
            changes = [k for k in range(1, n) if px[k] != px[k - 1]]
            if t["event"] == "move":
                assert changes and a < changes[0] and changes[-1] <= b - 1
            else:
                assert changes == [k for k in (a, b) if 0 < k < n]
    assert seen == {"appear", "move", "colour"}


def test_corpus_covers_every_task():
    texts = synth.corpus(80, seed=1)
    assert len(texts) == 80 and texts == synth.corpus(80, seed=1) and texts != synth.corpus(80, seed=2)
    joined = "\n".join(texts)
    for marker in ("bbox_2d", "point_2d", "How many", "QwenVL HTML", "data-bbox", "Click the",
                   "The given query happens in", "Outline the position"):
        assert marker in joined


def test_stream_mixes_tasks_and_resumes_exactly():
    import itertools
    s = synth.stream(("count", "read"), seed=3, weights=(1, 3))
    first = list(itertools.islice(s, 12))
    assert {e.task for e in first} == {"count", "read"}
    resumed = list(itertools.islice(synth.stream(("count", "read"), seed=3, weights=(1, 3), start=7), 5))
    assert [fingerprint(e) for e in resumed] == [fingerprint(e) for e in first[7:]]
    with pytest.raises(ValueError, match="'nope'"):
        next(synth.stream(("nope",)))


def test_curriculum_ranges():
    rng = random.Random(8)
    for _ in range(15):
        ex = synth.sample("ground_all", rng, objects=(1, 1))
        assert len(ex.targets[0]["boxes"]) == 1
        ex = synth.sample("count", rng, objects=(6, 6), size_range=(400, 500), order="media_first")
        q = ex.messages[0]["content"][1]["text"]
        assert q != "How many shapes are there?" or ex.targets[0]["count"] == 6
        ex = synth.sample("video_ground", rng, fps_range=(1.0, 1.0), seconds_range=(4.0, 6.0))
        n = round(ex.targets[0]["duration"] * ex.fps)
        assert ex.fps == 1.0 and 4 <= n <= 6 and n % 2 == 0
    with pytest.raises(ValueError, match="objects"):
        synth.sample("ground", rng, objects=(0, 3))
    with pytest.raises(ValueError, match="fps_range"):
        synth.sample("video_ground", rng, fps_range=(0, 1))


def test_palette_and_background_options():
    """A first curriculum stage may narrow the palette and the backgrounds; the scene keeps to them."""
    import numpy as np
    rng = random.Random(3)
    seen = set()
    for _ in range(30):
        ex = synth.sample("ground", rng, objects=(1, 1), shapes=("circle", "square"), colors=("red", "blue"),
                          backgrounds=("plain",), size_range=(60, 120), order="media_first")
        seen.add(ex.targets[0]["label"])
        img = np.asarray(media(ex)["image"])
        x1, y1, x2, y2 = ex.targets[0]["bbox"]
        outside = np.ones(img.shape[:2], bool)
        outside[max(0, y1 - 3):y2 + 3, max(0, x1 - 3):x2 + 3] = False
        assert len(np.unique(img[outside].reshape(-1, 3), axis=0)) == 1   # plain: one background colour
    assert seen == {"red circle", "red square", "blue circle", "blue square"}
    counts = set()
    for _ in range(20):
        first = synth.sample("count", rng, shapes=("star",), objects=(1, 3)).messages[0]["content"]
        counts |= {c["text"] for c in first if c["type"] == "text"}
    assert counts <= {"How many stars are there?", "How many shapes are there?"}
    noisy = synth.sample("ground", random.Random(4), backgrounds=("noise",), objects=(1, 1), size_range=(200, 200))
    assert len(np.unique(np.asarray(media(noisy)["image"]).reshape(-1, 3), axis=0)) > 50
    # light: a light grey, except under a light shape (white, yellow), which keeps a plain far colour
    corners = {}
    for i in range(40):
        ex = synth.sample("ground", random.Random(i), backgrounds=("light",), objects=(1, 1), order="media_first")
        px = media(ex)["image"].getpixel((0, 0))
        corners[ex.targets[0]["label"].split()[0]] = px
        if ex.targets[0]["label"].split()[0] not in ("white", "yellow"):
            assert px[0] == px[1] == px[2] >= 220, (ex.targets[0]["label"], px)
    assert {"white", "red"} <= set(corners) and not (corners["white"][0] == corners["white"][1] == corners["white"][2]
                                                       and corners["white"][0] >= 220)
    for bad, match in [({"shapes": ("hexagon",)}, "hexagon"), ({"colors": ("teal",)}, "teal"),
                       ({"backgrounds": ("marble",)}, "marble"), ({"backgrounds": ()}, "backgrounds"),
                       ({"shapes": ("star",), "colors": ("red",), "objects": (1, 2)}, "pairs")]:
        with pytest.raises(ValueError, match=match):
            synth.sample("ground", random.Random(0), **bad)


@pytest.mark.parametrize("kind", ["circle", "square", "triangle", "star", "cross"])
def test_target_box_is_the_drawn_shape(kind):
    """The tight box of every shape is the box of its pixels (within a pixel), and the answer point is on it."""
    from PIL import Image, ImageChops, ImageDraw

    from qwenvl.synth.common import draw_shape
    rng = random.Random(kind)
    for _ in range(20):
        s = rng.randint(10, 80)
        x, y = rng.randint(0, 100), rng.randint(0, 100)
        img = Image.new("RGB", (200, 200), (255, 255, 255))
        box, inside = draw_shape(ImageDraw.Draw(img), kind, (x, y, x + s, y + s), (255, 0, 0), rng)
        ink = ImageChops.difference(img, Image.new("RGB", img.size, (255, 255, 255))).getbbox()
        assert max(abs(a - b) for a, b in zip(ink, box)) <= 1, (kind, ink, box)
        assert img.getpixel((int(inside[0]), int(inside[1]))) == (255, 0, 0)


@pytest.mark.parametrize("task", synth.TASKS)
def test_tiny_and_huge_size_ranges(task):
    """Degenerate ranges still give a scene (pages and screens have a floor size) whose answer is right."""
    for sr, budget in (((28, 28), 16 * 784), ((28, 28), 1024 * 784), ((1000, 1000), 16 * 784)):
        ex = synth.sample(task, random.Random(sr[0] + budget), size_range=sr, max_pixels=budget,
                          video_max_pixels=8 * 784)
        m = synth.score(task, ex.targets[0], ex.messages[1]["content"], ex.input_size, ex.media_size)
        assert min(v for k, v in m.items() if k != "iou") == 1.0, (task, sr, m)


def test_read_text_stays_inside_tiny_images():
    rng = random.Random(2)
    for _ in range(20):
        ex = synth.sample("read", rng, size_range=(28, 40))
        x1, y1, x2, y2 = ex.targets[0]["bbox"]
        assert 0 <= x1 and 0 <= y1 and x2 <= ex.media_size[0] and y2 <= ex.media_size[1]


def test_identify_asks_for_the_shape_in_its_box_in_resized_pixels():
    """The question's box is the named shape's box in the resized input's pixels (where the model's
    coordinates live), a scene's shapes are asked once each, and the answer's phrasing may vary."""
    rng = random.Random(21)
    for i in range(30):
        ex = synth.sample("identify", rng, turns=6, size_range=(56, 1000), max_pixels=64 * 28 * 28)
        labels = [t["label"] for t in ex.targets]
        assert len(labels) == len(set(labels))
        sx, sy = ex.media_size[0] / ex.input_size[0], ex.media_size[1] / ex.input_size[1]
        for j, target in enumerate(ex.targets):
            q = ex.messages[2 * j]["content"][-1 if j == 0 and ex.messages[0]["content"][0]["type"] == "image" else 0]
            box = [int(v) for v in q["text"].split("[")[1].split("]")[0].split(",")]
            want = target["bbox"]
            assert all(abs(v * (sx if k % 2 == 0 else sy) - w) <= max(sx, sy) for k, (v, w) in enumerate(zip(box, want)))
            assert ex.messages[2 * j + 1]["content"] == target["label"]
            for said in (target["label"], f"The {target['label']}.", f"  a {target['label'].upper()} "):
                assert synth.score("identify", target, said, ex.input_size, ex.media_size) == {"exact": 1.0}


def test_aligned_scenes_fill_one_token_cell_each():
    """`aligned`: every shape's box covers exactly one 28-pixel cell of the resized input (to a pixel of
    rounding), a different cell each, and the pixels at the cell's centre are the shape's colour."""
    rng = random.Random(5)
    for task in ("cell", "ground_all", "point"):
        for _ in range(10):
            ex = synth.sample(task, rng, objects=(1, 4), size_range=(90, 300), max_pixels=64 * 28 * 28,
                              shapes=["square", "circle"], aligned=True)
            w, h = ex.input_size
            img = media(ex)["image"].resize(ex.input_size)
            sx, sy = w / ex.media_size[0], h / ex.media_size[1]
            boxes = [b for t in ex.targets for b in (t["boxes"] if "boxes" in t else [t["bbox"]])]
            assert boxes
            for x1, y1, x2, y2 in boxes:
                for edge in (x1 * sx, y1 * sy):     # on a cell's edge
                    assert abs(edge - 28 * round(edge / 28)) <= 1.5
                assert abs((x2 - x1) * sx - 28) <= 1.5 and abs((y2 - y1) * sy - 28) <= 1.5
            cells = {(round(b[0] * sx / 28), round(b[1] * sy / 28)) for b in boxes}
            assert len(cells) == len(boxes)
            if task == "cell":
                t = ex.targets[0]
                r, c = t["cell"]
                assert nearest_colour(img.getpixel((c * 28 - 14, r * 28 - 14))) == t["label"].split()[0]
    # off by default: shapes of other sizes than one cell
    sides = set()
    for _ in range(20):
        ex = synth.sample("ground", rng, objects=(1, 1), size_range=(400, 400), max_pixels=64 * 28 * 28)
        x1, _, x2, _ = ex.targets[0]["bbox"]
        sides.add(round((x2 - x1) * ex.input_size[0] / ex.media_size[0]))
    assert len(sides) > 5


def test_aligned_and_crisp_shares_mix_scenes_and_take_the_flag_spellings():
    """`aligned` and `crisp` as shares: about that share of the scenes is aligned (every box one 28-pixel cell) or
    crisp (every shape's centre pixel its colour's reference value), the rest free or shaded; the flag's spellings
    False / True are the shares 0 and 1; outside [0, 1] is refused."""
    def is_aligned(ex):
        sx = ex.input_size[0] / ex.media_size[0]
        return all(abs((t["bbox"][2] - t["bbox"][0]) * sx - 28) <= 1.5 and abs(t["bbox"][0] * sx / 28
                   - round(t["bbox"][0] * sx / 28)) * 28 <= 1.5 for t in ex.targets)
    kw = dict(objects=(1, 3), size_range=(112, 224), max_pixels=64 * 28 * 28, turns=3)
    got = [is_aligned(synth.sample("ground", random.Random(i), aligned=0.5, **kw)) for i in range(200)]
    assert 70 <= sum(got) <= 130, sum(got)

    def is_crisp(ex):
        img = media(ex)["image"]
        return all(img.getpixel(((t["bbox"][0] + t["bbox"][2]) // 2, (t["bbox"][1] + t["bbox"][3]) // 2))
                   == COLORS[t["label"].split()[0]] for t in ex.targets)
    square = dict(kw, shapes=["square"], objects=(1, 2))
    got = [is_crisp(synth.sample("ground", random.Random(i), crisp=0.5, **square)) for i in range(200)]
    assert 70 <= sum(got) <= 130, sum(got)
    assert all(is_crisp(synth.sample("ground", random.Random(i), crisp=1.0, **square)) for i in range(20))
    for name in ("aligned", "crisp"):
        for share, flag in ((0.0, False), (1.0, True)):
            a = synth.sample("cell", random.Random(3), **{name: share}, **kw)
            b = synth.sample("cell", random.Random(3), **{name: flag}, **kw)
            assert a.messages == b.messages and a.targets == b.targets and media(a)["image"] == media(b)["image"]
        for bad in (-0.1, 1.5, "half", None):
            with pytest.raises(ValueError, match=f"{name} must be a share"):
                synth.sample("ground", random.Random(0), **{name: bad})


def test_crisp_scenes_draw_reference_colours_with_sharp_edges():
    """`crisp`: every pixel is the background's or a shape's reference colour (no shading, jitter or blur), and
    each aligned square covers its 28 x 28 cell exactly; the default shades, so reference values are rare."""
    rng = random.Random(8)
    for _ in range(10):
        ex = synth.sample("cell", rng, turns=3, objects=(2, 3), size_range=(112, 112), max_pixels=64 * 28 * 28,
                          shapes=["square"], backgrounds=["light"], aligned=True, crisp=True)
        img = media(ex)["image"]
        names = {t["label"].split()[0] for t in ex.targets}     # every shape, one question each
        *fills, _ = sorted(img.getcolors())     # the last, the background, covers the most pixels
        shapes = {rgb: n for n, rgb in fills}
        assert all(rgb in COLORS.values() and n == 28 * 28 for rgb, n in shapes.items()), shapes
        assert {nearest_colour(rgb) for rgb in shapes} >= names
    plain = [synth.sample("ground", rng, objects=(1, 1), size_range=(112, 112), shapes=["square"]) for _ in range(10)]
    fills = [media(ex)["image"].getpixel(tuple(int((a + b) / 2) for a, b in zip(ex.targets[0]["bbox"][:2],
                                                                                ex.targets[0]["bbox"][2:])))
             for ex in plain]
    assert sum(f in COLORS.values() for f in fills) <= 2


def test_cell_names_the_merged_token_under_the_shape_and_asks_both_ways():
    """`cell`'s row and column are those of the 28-pixel image token holding the centre of the shape's box in the
    resized input (drawn there in the shape's colour for the filled kinds); a name is asked only for a cell no
    other shape's centre shares; both directions occur."""
    rng = random.Random(23)
    asked = {"name": 0, "cell": 0}
    for _ in range(40):
        ex = synth.sample("cell", rng, turns=3, objects=(2, 4), size_range=(112, 400), max_pixels=100 * 28 * 28)
        img = media(ex)["image"].resize(ex.input_size)
        w, h = ex.input_size
        cells = {}
        for j, t in enumerate(ex.targets):
            q = [c for c in ex.messages[2 * j]["content"] if c["type"] == "text"][0]["text"]
            row, col = t["cell"]
            assert 1 <= row <= h // 28 and 1 <= col <= w // 28
            x1, y1, x2, y2 = t["bbox"]
            cx, cy = (x1 + x2) / 2 * w / ex.media_size[0], (y1 + y2) / 2 * h / ex.media_size[1]
            assert (row - 1) * 28 <= cy <= row * 28 and (col - 1) * 28 <= cx <= col * 28
            if t["label"].split()[1] in ("square", "circle"):   # filled through the centre
                assert nearest_colour(img.getpixel((int(cx), int(cy)))) == t["label"].split()[0]
            asked[t["ask"]] += 1
            if t["ask"] == "name":
                assert q == f"What is the shape in row {row}, column {col}?" and ex.messages[2 * j + 1]["content"] == t["label"]
            else:
                assert q == f"In which row and column is the {t['label']}?"
                assert ex.messages[2 * j + 1]["content"] == f"row {row}, column {col}"
            cells.setdefault((row, col), []).append(t["ask"])
        for o_cell, asks in cells.items():
            assert asks.count("name") <= 1
    assert asked["name"] > 20 and asked["cell"] > 20
    target = {"label": "red star", "cell": [3, 4], "bbox": [0, 0, 1, 1], "ask": "cell"}
    for said, want in (("row 3, column 4", 1.0), ("Row 3 column 4.", 1.0), ("row 4, column 3", 0.0), ("3, 4", 0.0)):
        assert synth.score("cell", target, said, (112, 112), (112, 112)) == {"exact": want}
    assert synth.score("cell", {**target, "ask": "name"}, "The red star.", (112, 112), (112, 112)) == {"exact": 1.0}
