"""parse_boxes on realistic and noisy outputs, and resized <-> original round trips."""

import random

import pytest

from qwenvl.tasks import detect_prompt, grounding_prompt, parse_boxes, to_input_coords
from qwenvl.processing import smart_resize

# Saved cookbook output (cakes.png, 7B): JSON array in a ```json fence, tab-indented.
CAKES = """```json
[
\t{"bbox_2d": [43, 571, 209, 753], "label": "cupcake with white frosting and colorful sprinkles"},
\t{"bbox_2d": [68, 408, 214, 596], "label": "cupcake with red frosting and sprinkles"}
]
```"""


def test_cookbook_output_maps_to_original():
    # Any (input, original) pair works: the mapping is a ratio per axis.
    dets = parse_boxes(CAKES, input_size=(1000, 800), image_size=(500, 1600))
    assert isinstance(dets, list) and len(dets) == 2 and dets.warnings == []
    assert dets[0].label == "cupcake with white frosting and colorful sprinkles"
    assert dets[0].bbox == pytest.approx((21.5, 1142.0, 104.5, 1506.0))
    assert dets[0].point is None and dets.raw == CAKES


def test_single_object_without_label():
    # Fine-tune README sample: a single object, no label, no fence.
    dets = parse_boxes('{\n"bbox_2d": [135, 114, 1016, 672]\n}', input_size=(1036, 700), image_size=(1036, 700))
    assert len(dets) == 1 and dets[0].label == "" and dets[0].bbox == pytest.approx((135, 114, 1016, 672))


@pytest.mark.parametrize("text", [
    '```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "cat"},]\n```',                  # trailing comma
    "[{'bbox_2d': [10, 20, 30, 40], 'label': 'cat'}]",                               # single quotes
    'Sure. The cat is here: {"bbox_2d": [10, 20, 30, 40], "label": "cat"}. Anything else?',  # prose
    "```json\n｛“bbox_2d”：［10，20，30，40］，“label”：“cat”｝\n```",                       # Chinese punctuation
    '[{"bbox_2d": [30, 40, 10, 20], "label": "cat"}]',                                # swapped corners
    '[{"bbox_2d": [[10, 20], [30, 40]], "label": "cat"}]',                             # nested corners
    '[{"bbox_2d": "10 20 30 40", "label": "cat"}]',                                   # string box
    "```\n10,20,30,40 cat\n```",                                                      # plain-text format
    "10, 20, 30, 40 cat",
])
def test_noisy_variants(text):
    dets = parse_boxes(text, input_size=(100, 100), image_size=(200, 300))
    assert len(dets) == 1, text
    assert dets[0].label == "cat"
    assert dets[0].bbox == pytest.approx((20, 60, 60, 120))


def test_truncated_list_keeps_complete_boxes():
    text = CAKES.replace("\n]\n```", ',\n\t{"bbox_2d": [1, 2, 3')
    dets = parse_boxes(text, input_size=(100, 100), image_size=(100, 100))
    assert [d.label for d in dets] == ["cupcake with white frosting and colorful sprinkles",
                                       "cupcake with red frosting and sprinkles"]
    assert any("truncated" in w for w in dets.warnings)


def test_plain_text_several_lines():
    text = "43,571,209,753 cupcake\n68,408,214,596 red cupcake\nThat's all."
    dets = parse_boxes(text, input_size=(1000, 1000), image_size=(1000, 1000))
    assert [d.label for d in dets] == ["cupcake", "red cupcake"]
    assert dets[1].bbox == (68, 408, 214, 596)


def test_points_json_with_extra_keys():
    text = ('```json\n[{"point_2d": [100, 50], "label": "person", "role": "player", "shirt_color": "red"},\n'
            ' {"point_2d": [300, 150], "label": "person", "role": "referee", "shirt_color": "black"}]\n```')
    dets = parse_boxes(text, input_size=(400, 200), image_size=(800, 400))
    assert [d.point for d in dets] == [(200, 100), (600, 300)]
    assert dets[0].bbox is None and dets[0].extra == {"role": "player", "shirt_color": "red"}


def test_points_xml_several_points():
    text = '```xml\n<points x1="10" y1="20" x2="30.5" y2="40" alt="rolling pins">rolling pins</points>\n```'
    dets = parse_boxes(text, input_size=(100, 100), image_size=(200, 200))
    assert [d.point for d in dets] == [(20, 40), (61, 80)]
    assert all(d.label == "rolling pins" for d in dets)


def test_points_xml_single_and_bare_forms():
    dets = parse_boxes('<points x="50" y="25" alt="pin">the pin</points> and <points 10 20>cup</points>',
                       input_size=(100, 100), image_size=(100, 100))
    assert [(d.label, d.point) for d in dets] == [("the pin", (50, 25)), ("cup", (10, 20))]
    assert dets[0].extra == {"alt": "pin"}


def test_ocr_spotting_text_content_is_label():
    text = ('```json\n[\n  {"bbox_2d": [36, 60, 530, 100], "text_content": "TOTAL 12.50",},\n'
            '  {"bbox_2d": [36, 110, 530, 150], "text_content": "THANK YOU",}\n]\n```')
    dets = parse_boxes(text, input_size=(868, 1400), image_size=(870, 1398))
    assert [d.label for d in dets] == ["TOTAL 12.50", "THANK YOU"]


def test_label_and_text_content_both_kept():
    dets = parse_boxes('{"bbox_2d": [1, 2, 3, 4], "label": "line", "text_content": "hello"}',
                       input_size=(10, 10), image_size=(10, 10))
    assert dets[0].label == "line" and dets[0].extra == {"text_content": "hello"}


def test_clipping_to_image():
    dets = parse_boxes('{"bbox_2d": [-5, 10, 120, 90], "label": "x"}', input_size=(100, 100), image_size=(50, 50))
    assert dets[0].bbox == (0, 5, 50, 45)


@pytest.mark.parametrize("text", ["", "I cannot see any cake.", "```json\n[]\n```", "{{{", None])
def test_unparseable_is_empty_with_warning(text):
    dets = parse_boxes(text, input_size=(100, 100), image_size=(100, 100))
    assert list(dets) == [] and isinstance(dets.warnings, list)
    if text and text.strip() and text != "```json\n[]\n```":
        assert dets.warnings


SIZES = [(640, 428), (1014, 1532), (870, 1398), (1080, 2400), (6000, 4000), (20, 20), (33, 4000),
         (3840, 2160), (300, 200), (1, 150), (512, 512), (4000, 6000)]
BOUNDS = [(4 * 28 * 28, 16384 * 28 * 28), (56 * 56, 14 * 14 * 4 * 1280), (256 * 28 * 28, 1280 * 28 * 28),
          (512 * 28 * 28, 2048 * 28 * 28)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("bounds", BOUNDS)
def test_round_trip_through_smart_resize(size, bounds):
    w, h = size
    h2, w2 = smart_resize(h, w, min_pixels=bounds[0], max_pixels=bounds[1])
    rng = random.Random(w * 7 + h)
    x1, x2 = sorted(rng.uniform(0, w) for _ in range(2))
    y1, y2 = sorted(rng.uniform(0, h) for _ in range(2))
    resized = to_input_coords((x1, y1, x2, y2), input_size=(w2, h2), image_size=(w, h))
    text = f'```json\n[{{"bbox_2d": {list(resized)}, "label": "thing"}}]\n```'
    (det,) = parse_boxes(text, input_size=(w2, h2), image_size=(w, h))
    # The model writes integers: recovery is exact up to half an input pixel, in original pixels.
    tol_x, tol_y = 0.5 * w / w2 + 1e-6, 0.5 * h / h2 + 1e-6
    for got, want, tol in zip(det.bbox, (x1, y1, x2, y2), (tol_x, tol_y, tol_x, tol_y)):
        assert abs(got - want) <= tol
    # Points go through the same mapping.
    (pt,) = parse_boxes(f'{{"point_2d": {list(resized[:2])}}}', input_size=(w2, h2), image_size=(w, h))
    assert abs(pt.point[0] - x1) <= tol_x and abs(pt.point[1] - y1) <= tol_y


def test_known_resize_examples():
    # Worked examples from the reference (W x H -> H', W').
    assert smart_resize(428, 640, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280) == (420, 644)
    assert smart_resize(1532, 1014) == (1540, 1008)
    assert smart_resize(2400, 1080) == (2408, 1092)
    assert smart_resize(4000, 6000, max_pixels=1280 * 28 * 28) == (812, 1204)
    assert smart_resize(20, 20) == (56, 56)
    # process_bbox notebook: [146,137,615,415] on 640x428 -> [147,134,619,407] in the 644x420 input.
    assert to_input_coords((146, 137, 615, 415), input_size=(644, 420), image_size=(640, 428)) == (147, 134, 619, 407)


def test_prompts():
    assert detect_prompt("small cake") == ("Outline the position of each small cake and output all the coordinates "
                                           "in JSON format.")
    assert grounding_prompt("the top right brown cake") == ("Locate the top right brown cake, output its bbox "
                                                            "coordinates using JSON format.")
    assert "<points x y>" in grounding_prompt("the rolling pin", points=True)


def test_json_export():
    import json

    dets = parse_boxes(CAKES, input_size=(1000, 1000), image_size=(500, 500))
    data = json.loads(dets.to_json())
    assert data["detections"][0] == {"label": "cupcake with white frosting and colorful sprinkles",
                                     "bbox": [21.5, 285.5, 104.5, 376.5]}
    assert data["input_size"] == [1000, 1000] and data["raw"] == CAKES
