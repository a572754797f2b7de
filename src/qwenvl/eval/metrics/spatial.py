"""Boxes and points. Qwen2.5-VL answers in absolute pixels of the *resized* input image; every score
here reads them with `qwenvl.tasks.parse_boxes`, which maps them back with the exact inverse of that
resize (x * W / W', y * H / H', where (W', H') is the input size recorded per sample and (W, H) the
original image size), orders the corners and clips to the image (a box partly outside the picture is
judged by its visible part)."""

from __future__ import annotations

from qwenvl.tasks import Detection, Detections, parse_boxes

Box = tuple[float, float, float, float]


def xywh_to_xyxy(b) -> Box:
    x, y, w, h = (float(v) for v in b)
    return (x, y, x + w, y + h)


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def point_in_box(p, box: Box) -> bool:
    """Inclusive on all edges, as every ScreenSpot scorer is."""
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def center(b) -> tuple[float, float]:
    return ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)


def detection_rule(dets: Detections, det: Detection | None = None) -> str:
    """How an answer was read: "<format>_<box|point>" with the parser's format (json, xml, plain,
    inline) and the kind of `det` (default: "box" if any box was found), or "unparsed"."""
    if not dets:
        return "unparsed"
    is_box = det.bbox is not None if det is not None else any(d.bbox is not None for d in dets)
    return f"{dets.format}_{'box' if is_box else 'point'}"


def parse_detections(text: str, input_size, image_size) -> tuple[Detections, str]:
    """Boxes/points in a model answer, in original pixels (corner-ordered, clipped) -> (detections, rule)."""
    dets = parse_boxes(text, input_size=tuple(input_size), image_size=tuple(image_size))
    return dets, detection_rule(dets)
