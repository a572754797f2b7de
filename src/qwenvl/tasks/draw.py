"""Pictures of results: boxes, points and labels on the ORIGINAL image; document blocks on the page.

Only outlines are drawn (box interiors stay as they were), labels sit just above their box, and each
label keeps one colour (a stable hash, not Python's salted hash(), so repeated runs match).
"""

from __future__ import annotations

import zlib
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from qwenvl.processing.image import to_rgb

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
           (170, 255, 195), (128, 128, 0), (0, 0, 128), (255, 225, 25)]
KIND_COLORS = {"title": (230, 25, 75), "paragraph": (0, 130, 200), "table": (60, 180, 75), "formula": (145, 30, 180),
               "image": (245, 130, 48), "chart": (240, 50, 230), "list": (0, 128, 128), "caption": (170, 110, 40)}


def color_for(label: str) -> tuple[int, int, int]:
    return PALETTE[zlib.crc32((label or "").encode("utf-8")) % len(PALETTE)]


def _canvas(image) -> Image.Image:
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    # the model's own conversion (RGBA onto white), so the picture under the boxes is the one it saw
    return to_rgb(image).copy()


def _width(img: Image.Image) -> int:
    return max(2, round(min(img.size) / 250))


def _label(draw: ImageDraw.ImageDraw, xy, text: str, color, img_size) -> None:
    """A filled tag with the text, placed above (x, y) when it fits, else below."""
    if not text:
        return
    font = ImageFont.load_default()
    text = text if len(text) <= 60 else text[:57] + "..."
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    tw, th = r - l + 6, b - t + 4
    x, y = xy
    top = y - th if y - th >= 0 else min(y + 1, img_size[1] - th)
    x = min(max(x, 0), max(img_size[0] - tw, 0))
    draw.rectangle([x, top, x + tw, top + th], fill=color)
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + 3 - l, top + 2 - t), text, fill=(0, 0, 0) if luminance > 150 else (255, 255, 255), font=font)


def _outline(draw, box, color, width):
    x1, y1, x2, y2 = (round(v) for v in box)
    draw.rectangle([x1, y1, x2, y2], outline=color, width=width)


def draw_detections(image, detections, path=None) -> Image.Image:
    """Boxes and points (Detection objects, original coordinates) drawn on a copy of `image`."""
    img = _canvas(image)
    draw = ImageDraw.Draw(img)
    w = _width(img)
    for det in detections:
        color = color_for(det.label)
        if det.bbox is not None:
            _outline(draw, det.bbox, color, w)
            _label(draw, (det.bbox[0], det.bbox[1] - w), det.label, color, img.size)
        elif det.point is not None:
            x, y = det.point
            r = 2 * w + 2
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color, outline=(255, 255, 255), width=max(1, w // 2))
            _label(draw, (x + r, y - r), det.label, color, img.size)
    if path is not None:
        img.save(path, format="PNG")
    return img


def draw_document(image, document, path=None) -> Image.Image:
    """Each block's box on the page, coloured by kind and tagged with its kind and index."""
    img = _canvas(image)
    draw = ImageDraw.Draw(img)
    w = _width(img)
    for i, block in enumerate(document.blocks, 1):
        color = KIND_COLORS.get(block.kind, color_for(block.kind))
        for item in block.items or []:
            if item.bbox:
                _outline(draw, item.bbox, color, max(1, w // 2))
        if block.bbox:
            _outline(draw, block.bbox, color, w)
            _label(draw, (block.bbox[0], block.bbox[1] - w), f"{i} {block.kind}", color, img.size)
    if path is not None:
        img.save(path, format="PNG")
    return img


def draw_actions(image, actions, path=None) -> Image.Image:
    """Agent actions' points (coordinate, coordinate2, ...) on the screenshot, with the action name."""
    from .grounding import Detection

    dets = []
    for a in actions:
        for k, v in a.arguments.items():
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(n, (int, float)) for n in v):
                dets.append(Detection(f"{a.action or a.name} {k}", point=(float(v[0]), float(v[1]))))
    return draw_detections(image, dets, path)
