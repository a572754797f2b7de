"""The web chat page in a real headless Chromium (Debian's `chromium`, driven by Playwright).

A server on the tiny random model serves the page. The first test chats with the model itself; the
others script what the model says (grounding JSON, QwenVL HTML, a time span) by replacing the
scheduler's submit, so the whole HTTP path (request, media loading, processor, SSE, parse) is real
and only the tokens are chosen. Screenshots go to pytest's tmp dir, or to $QWENVL_WEB_SCREENSHOTS
(docs/images is made that way: QWENVL_WEB_SCREENSHOTS=docs/images pytest tests/serve/test_web.py).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from serve_util import client, data_uri, image_message, running_server

from qwenvl.engine.driver import Usage
from qwenvl.serve.routes.web import input_size
from qwenvl.serve.scheduler import ChoiceDelta, ChoiceEnd, RequestDone
from qwenvl.tasks.grounding import parse_boxes

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium chromium-driver)", allow_module_level=True)

SHOTS = os.environ.get("QWENVL_WEB_SCREENSHOTS")
MAX_PIXELS = 96 * 28 * 28   # small inputs: a fast prompt, and input pixels far from the image's own


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def web_pipe(tiny_ckpt):
    import qwenvl
    p = qwenvl.load(tiny_ckpt, dtype="float32")
    p.processor.settings = dataclasses.replace(p.processor.settings, max_pixels=MAX_PIXELS)
    return p


class Script:
    """Answers the next chat requests with given texts, streamed piece by piece; real model otherwise."""

    def __init__(self, scheduler):
        self.scheduler, self.real = scheduler, scheduler.submit
        self.texts, self.prompts = [], []
        scheduler.submit = self.submit

    def submit(self, handle, seqs):
        self.prompts.append(len(seqs[0].prompt_ids))
        if not self.texts:
            return self.real(handle, seqs)
        text, delay = self.texts.pop(0)
        self.scheduler.unreserve()     # the real submit consumes the reservation; so must we
        pieces = [text[i:i + 6] for i in range(0, len(text), 6)]

        def run():
            for p in pieces:
                time.sleep(delay)
                handle.emit(ChoiceDelta(0, p, []))   # what the scheduler emits for a choice's new text
            handle.emit(ChoiceEnd(0, "stop"))
            handle.emit(RequestDone(Usage(len(seqs[0].prompt_ids), len(pieces))))
        threading.Thread(target=run, daemon=True).start()

    def say(self, text: str, delay: float = 0.01):
        self.texts.append((text, delay))


@pytest.fixture(scope="module")
def server(web_pipe):
    with running_server(web_pipe) as (base, app, _):
        script = Script(app.state.scheduler)
        yield base, script
        app.state.scheduler.submit = script.real


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server[0] + "/")
    pg.wait_for_function("document.getElementById('model').textContent.includes('context')")
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(pg, tmp_path, name: str, full_page: bool = False) -> Path:
    path = tmp_path / f"{name}.png"
    pg.screenshot(path=str(path), full_page=full_page)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 300
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)
    return path


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:   # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def scene(path: Path) -> tuple[tuple[int, int], list[tuple[str, tuple[int, int, int, int]]]]:
    """A 640x480 picture of a red square and a blue circle; returns its size and the two boxes."""
    img = Image.new("RGB", (640, 480), (238, 240, 235))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 380, 640, 480), fill=(200, 215, 190))
    square, circle = (80, 110, 290, 320), (370, 140, 560, 330)
    d.rectangle(square, fill=(215, 45, 45))
    d.ellipse(circle, fill=(45, 85, 215))
    img.save(path)
    return img.size, [("red square", square), ("blue circle", circle)]


def document_page(path: Path):
    """A 600x780 'page': a title, two paragraphs and a table; returns its size and the block boxes."""
    img = Image.new("RGB", (600, 780), "white")
    d = ImageDraw.Draw(img)
    blocks = []
    d.text((50, 50), "Quarterly report", fill="black", font=font(34))
    blocks.append(("h1", "Quarterly report", (50, 50, 360, 92)))
    body = ["Sales rose in every region this quarter,", "led by the northern stores and online orders.",
            "Costs stayed flat; the margin improved."]
    for i, line in enumerate(body):
        d.text((50, 130 + 26 * i), line, fill=(40, 40, 40), font=font(18))
    blocks.append(("p", " ".join(body), (50, 130, 470, 200)))
    rows = [["Region", "Q1", "Q2"], ["North", "120", "150"], ["South", "90", "97"], ["Online", "60", "88"]]
    x0, y0, cw, rh = 50, 250, 160, 40
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            d.rectangle((x0 + c * cw, y0 + r * rh, x0 + (c + 1) * cw, y0 + (r + 1) * rh), outline="black", width=2)
            d.text((x0 + c * cw + 10, y0 + r * rh + 10), cell, fill="black", font=font(18))
    blocks.append(("table", rows, (x0, y0, x0 + 3 * cw, y0 + 4 * rh)))
    d.text((50, 450), "Figures in thousands of units.", fill=(90, 90, 90), font=font(15))
    blocks.append(("p", "Figures in thousands of units.", (50, 450, 290, 470)))
    img.save(path)
    return img.size, blocks


def moving_square_webm(path: Path, seconds: float = 3.0, fps: int = 8, size=(160, 120)) -> None:
    """A VP8 WebM (which Chromium plays, unlike MPEG-4 part 2): a square crossing the frame."""
    av = pytest.importorskip("av")
    w, h = size
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        n = int(seconds * fps)
        for i in range(n):
            img = Image.new("RGB", size, (235, 238, 242))
            x = int((w - 40) * i / (n - 1))
            ImageDraw.Draw(img).rectangle((x, 40, x + 40, 80), fill=(215, 45, 45))
            out.mux(stream.encode(av.VideoFrame.from_image(img)))
        out.mux(stream.encode())


def to_input(box, size, insize):
    sx, sy = insize[0] / size[0], insize[1] / size[1]
    return [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)]


def ask(pg, text: str, files=()):
    if files:
        pg.set_input_files("#file", [str(f) for f in files])
        pg.wait_for_function(f"document.querySelectorAll('#attachments li').length === {len(files)}")
    pg.fill("#prompt", text)
    pg.press("#prompt", "Enter")


def wait_answer(pg, n: int = 1):
    """The n-th answer, once finished."""
    pg.wait_for_function(f"document.querySelectorAll('article.assistant[data-state=done], "
                         f"article.assistant[data-state=error]').length >= {n}", timeout=60_000)
    return pg.locator("article.assistant").nth(n - 1)


# ------------------------------------------------------------------------------ tests

def test_real_model_answer_streams_into_the_page(page, server, tmp_path, web_pipe):
    base, _ = server
    img = tmp_path / "scene.png"
    scene(img)
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "8")
    ask(page, "What is in the image?", [img])
    answer = wait_answer(page)
    assert answer.get_attribute("data-state") == "done"
    # the same request through the OpenAI client: the page showed the whole answer, exactly
    want = client(base).chat.completions.create(
        model="qwenvl", messages=image_message(data_uri(img.read_bytes()), "What is in the image?"),
        temperature=0, max_tokens=8, top_p=0.8)
    assert answer.locator(".text").inner_text() == want.choices[0].message.content
    stats = answer.locator(".stats").inner_text()
    assert "TTFT" in stats and f"prompt {want.usage.prompt_tokens}" in stats
    assert f"{want.usage.completion_tokens} tokens" in stats
    # the user's message shows the image it sent
    assert page.locator("article.user .thumbs img").count() == 1


def test_grounding_boxes_are_drawn_in_the_images_pixels(page, server, tmp_path, web_pipe):
    _, script = server
    img = tmp_path / "shapes.png"
    size, objects = scene(img)
    insize = input_size(web_pipe.processor, *size)
    assert insize[0] < size[0] / 1.5   # the model's pixels are not the image's: the mapping matters
    answer = "```json\n[\n" + ",\n".join(
        f'  {{"bbox_2d": {to_input(box, size, insize)}, "label": "{label}"}}' for label, box in objects) + "\n]\n```"
    script.say(answer, delay=0.08)
    ask(page, "Outline the position of each shape and output all the coordinates in JSON format.", [img])
    # streamed: part of the text is on the page before the answer is finished
    page.wait_for_function("(document.querySelector('article.assistant.streaming .text') || {}).textContent")
    partial = page.locator("article.assistant .text").inner_text()
    assert page.locator("article.assistant").get_attribute("data-state") == "streaming"
    msg = wait_answer(page)
    final = msg.locator(".text").inner_text()
    assert final.strip() == answer.strip() and len(partial) < len(final)

    rects = msg.locator("svg.overlay rect[data-i]")
    assert rects.count() == 2
    want = parse_boxes(answer, input_size=insize, image_size=size)
    img_box = msg.locator(".stage img").bounding_box()
    for i, det in enumerate(want):
        r = rects.nth(i)
        got = [float(r.get_attribute(k)) for k in ("x", "y", "width", "height")]
        x1, y1, x2, y2 = det.bbox
        assert got == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01)
        # ... and in the image's own coordinates: close to where the shape was drawn
        assert [x1, y1, x2, y2] == pytest.approx(objects[i][1], abs=3)
        # on screen the box sits over the shape in the displayed image
        b = r.bounding_box()
        scale = img_box["width"] / size[0]
        assert b["x"] - img_box["x"] == pytest.approx(x1 * scale, abs=3)
        assert b["width"] == pytest.approx((x2 - x1) * scale, abs=4)
    assert msg.locator(".box-label").all_inner_texts() == ["red square", "blue circle"]
    assert "2 boxes" in msg.locator(".caption").inner_text()
    shot(page, tmp_path, "web-boxes")

    # the conversation is kept: after a reload the messages and the boxes are still there
    page.reload()
    page.wait_for_selector("article.assistant svg.overlay rect[data-i]")
    assert page.locator("article").count() == 2
    script.say("The red square is on the left.")
    ask(page, "Which one is on the left?")
    wait_answer(page, 2)
    assert script.prompts[-1] > script.prompts[-2]   # the second turn carried the first one
    assert page.locator("article").count() == 4


def test_streamed_answer_and_timing(page, server, tmp_path):
    _, script = server
    img = tmp_path / "shapes.png"
    scene(img)
    script.say("The image shows two shapes on a light background: a red square on the left and a blue "
               "circle on the right, both standing on a green strip at the bottom.", delay=0.03)
    ask(page, "Describe the image.", [img])
    msg = wait_answer(page)
    stats = msg.locator(".stats").inner_text()
    assert "TTFT" in stats and "tok/s" in stats and "stop" in stats
    assert msg.locator("svg.overlay").count() == 0      # no boxes in a description
    shot(page, tmp_path, "web-answer")


def test_document_blocks_beside_the_page(page, server, tmp_path, web_pipe):
    _, script = server
    img = tmp_path / "page.png"
    size, blocks = document_page(img)
    insize = input_size(web_pipe.processor, *size)
    parts = []
    for tag, content, box in blocks:
        bb = " ".join(map(str, to_input(box, size, insize)))
        if tag == "table":
            rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in content)
            parts.append(f'<table data-bbox="{bb}">{rows}</table>')
        else:
            parts.append(f'<{tag} data-bbox="{bb}">{content}</{tag}>')
    script.say("```html\n<html><body>\n" + "\n".join(parts) + "\n</body></html>\n```")
    ask(page, "QwenVL HTML", [img])
    msg = wait_answer(page)
    items = msg.locator(".docview .blocks li")
    assert items.count() == 4
    assert items.nth(0).locator(".kind").inner_text().lower().startswith("title")
    assert items.nth(2).locator("td").count() == 12
    rects = msg.locator(".docview svg.overlay rect[data-i]")
    assert rects.count() == 4
    x = float(rects.nth(2).get_attribute("x"))
    assert x == pytest.approx(blocks[2][2][0], abs=3)                # in the page's own pixels
    # the parsed blocks are beside the page, not under it
    assert items.nth(0).bounding_box()["x"] > msg.locator(".stage img").bounding_box()["x"] + 200
    # focusing a block highlights its box
    items.nth(1).focus()
    assert "hl" in (rects.nth(1).get_attribute("class") or "")
    shot(page, tmp_path, "web-document")


def test_video_span_on_a_timeline(page, server, tmp_path):
    _, script = server
    video = tmp_path / "clip.webm"
    moving_square_webm(video, seconds=3.0)
    script.say("The given query happens in 1.0 - 2.0 seconds.")
    ask(page, "When does the scene change?", [video])
    msg = wait_answer(page)
    seg = msg.locator(".timeline .seg")
    assert seg.count() == 1
    # the browser read the clip's duration (3 s): the span covers its middle third
    page.wait_for_function("document.querySelector('.viz .ticks').textContent.includes('3.0 s')")
    left, width = (float(seg.evaluate(f"s => parseFloat(s.style.{k})")) for k in ("left", "width"))
    assert left == pytest.approx(100 / 3, abs=1.5) and width == pytest.approx(100 / 3, abs=1.5)
    assert msg.locator(".caption").inner_text() == "1.0 s – 2.0 s"
    seg.click()   # seeks the video to the span's start
    assert page.evaluate("document.querySelector('.viz video').currentTime") >= 1.0
    shot(page, tmp_path, "web-video")


def test_keyboard_drop_paste_and_errors(page, server, tmp_path):
    prompt = page.locator("#prompt")
    assert page.evaluate("document.activeElement.id") == "prompt"
    prompt.type("first line")
    prompt.press("Shift+Enter")
    prompt.type("second line")
    assert prompt.input_value() == "first line\nsecond line" and page.locator("article").count() == 0
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "send"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"   # focus is visible
    for label in ("Temperature", "Top p", "Max tokens", "Seed"):
        assert page.get_by_label(label).count() == 1

    img = tmp_path / "shapes.png"
    scene(img)
    b64 = base64.b64encode(img.read_bytes()).decode()
    make = f"""() => {{ const bytes = Uint8Array.from(atob('{b64}'), c => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], 'shapes.png', {{type: 'image/png'}})); return dt; }}"""
    page.evaluate(f"() => window.dispatchEvent(new DragEvent('drop', {{dataTransfer: ({make})(), bubbles: true}}))")
    page.wait_for_function("document.querySelectorAll('#attachments li').length === 1")
    page.evaluate(f"() => document.getElementById('prompt').dispatchEvent(new ClipboardEvent('paste', "
                  f"{{clipboardData: ({make})(), bubbles: true}}))")
    page.wait_for_function("document.querySelectorAll('#attachments li').length === 2")
    page.get_by_label("Remove shapes.png").first.click()
    assert page.locator("#attachments li").count() == 1

    # a refused request shows the server's message, naming the bad field
    page.fill("#temperature", "-1")
    prompt.focus()
    prompt.press("Enter")
    msg = wait_answer(page)
    assert msg.get_attribute("data-state") == "error"
    assert "temperature" in msg.locator(".error").inner_text()


def test_narrow_screen(browser, server, tmp_path, web_pipe):
    base, script = server
    context = browser.new_context(viewport={"width": 390, "height": 800}, device_scale_factor=1)
    pg = context.new_page()
    try:
        pg.goto(base + "/")
        img = tmp_path / "shapes.png"
        size, objects = scene(img)
        insize = input_size(web_pipe.processor, *size)
        label, box = objects[0]
        cx, cy = 465, 235   # the circle's centre, as a point
        point = [round(cx * insize[0] / size[0]), round(cy * insize[1] / size[1])]
        script.say(f'[{{"bbox_2d": {to_input(box, size, insize)}, "label": "{label}"}}, '
                   f'{{"point_2d": {point}, "label": "blue circle"}}]')
        ask(pg, "Locate the red square, output its bbox coordinates using JSON format.", [img])
        msg = wait_answer(pg)
        assert msg.locator("svg.overlay rect[data-i]").count() == 1
        dot = msg.locator("svg.overlay circle")
        assert dot.count() == 1
        assert [float(dot.get_attribute("cx")), float(dot.get_attribute("cy"))] == pytest.approx([cx, cy], abs=3)
        # nothing wider than the screen, the image shrinks to fit
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390
        assert msg.locator(".stage img").bounding_box()["width"] <= 390
        # the settings are behind a button on a narrow screen
        assert not pg.locator("#settings").is_visible()
        pg.click("#settings-toggle")
        assert pg.locator("#settings").is_visible()
        assert pg.get_attribute("#settings-toggle", "aria-expanded") == "true"
        pg.click("#settings-toggle")
        shot(pg, tmp_path, "web-narrow")
    finally:
        context.close()


def test_exif_rotated_photo_uses_the_stored_pixels(page, server, tmp_path, web_pipe):
    """Phones save photos sideways with an EXIF 'rotate 90' tag. The model sees the stored pixels (no
    EXIF rotation anywhere in the processing), so the page must draw on those, not on the rotated view."""
    _, script = server
    img = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6                       # Orientation: rotate 90 CW to display
    Image.new("RGB", (400, 200), (30, 120, 200)).save(img, "JPEG", exif=exif.tobytes())
    insize = input_size(web_pipe.processor, 400, 200)
    script.say(f'{{"bbox_2d": {to_input((100, 50, 300, 150), (400, 200), insize)}, "label": "middle"}}')
    ask(page, "Locate the middle.", [img])
    msg = wait_answer(page)
    assert msg.locator("svg.overlay").get_attribute("viewBox") == "0 0 400 200"
    assert "image 400×200" in msg.locator(".caption").inner_text()
    shown = msg.locator(".stage img").bounding_box()
    assert shown["width"] > shown["height"]   # displayed as stored, like the model sees it


def test_stop_keeps_the_partial_answer(page, server):
    _, script = server
    script.say("word " * 200, delay=0.05)
    ask(page, "Talk for a long time.")
    page.wait_for_function("(document.querySelector('article.assistant.streaming .text') || {}).textContent")
    page.press("#prompt", "Escape")
    page.wait_for_selector("article.assistant[data-state=stopped]")
    msg = page.locator("article.assistant")
    assert 0 < len(msg.locator(".text").inner_text()) < len("word " * 200)
    assert "stopped" in msg.locator(".stats").inner_text()
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()


def test_stream_parsing_and_cached_tokens(page):
    """The page reads an OpenAI-shaped stream from another server too (CRLF line ends, a role-only
    first chunk, usage in the last one), and shows the prefix-cache figure when usage carries
    prompt_tokens_details.cached_tokens (this server's scheduler does not report it yet)."""
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
               "usage": None}]
    chunks += [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}], "usage": None}
               for w in ("Hello", ", ", "wörld", "!")]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": None})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44,
                                            "prompt_tokens_details": {"cached_tokens": 32}}})
    body = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\r\n\r\n" for c in chunks) + "data: [DONE]\r\n\r\n"
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body.encode()))
    ask(page, "hi")
    msg = wait_answer(page)
    assert msg.locator(".text").inner_text() == "Hello, wörld!"
    stats = msg.locator(".stats").inner_text()
    assert "prompt 40 (cached 32)" in stats and "4 tokens" in stats and "length" in stats


def test_storage_full_keeps_the_text(page, server, tmp_path):
    """localStorage holds a few MB; a large photo as a data URI does not fit. The conversation is then
    kept without its media, and says so, rather than not at all."""
    _, script = server
    big = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (1400, 1400, 3), dtype=np.uint8)).save(big)   # ~5.9 MB, ~7.8 MB base64
    script.say("A noisy picture.")
    ask(page, "What is this?", [big])
    wait_answer(page)
    assert "storage is full" in page.locator("#status").inner_text()
    page.reload()
    page.wait_for_selector("article.assistant[data-state=done]")
    assert page.locator("article.assistant .text").inner_text() == "A noisy picture."
    assert "not kept" in page.locator("article.user .missing").inner_text()
