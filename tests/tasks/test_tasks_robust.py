"""No parser ever raises: random splices of real output fragments come back as (possibly empty) results."""

import random

from qwenvl.tasks import parse_boxes, parse_document, parse_events, parse_time_span, parse_tool_calls

FRAGMENTS = ['```json\n', '```', '[', ']', '{', '}', '"bbox_2d": [', '43, 571, 209, 753', '"label": "cake"', ',',
             "'", '"', '：', '，', '［', '｝', '<points x1="1" y1="2" alt="a">', '</points>', '<tool_call>\n',
             '\n</tool_call>', '{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [1, 2]}}',
             '<p data-bbox="1 2 3 4">', '</p>', '<table>', '<td>', '<div class="image"', '/>', 'happens in ',
             '64.0 - 72.0 seconds', '01:32.40', ' to ', '\\', '\\u12', 'null', 'true', '1e999', '-', '\n', 'text ']


def test_random_splices_never_raise():
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 25)))
        dets = parse_boxes(text, input_size=(100, 50), image_size=(200, 100))
        for d in dets:
            box = d.bbox or d.point
            assert all(0 <= v <= 200 for v in box[0::2]) and all(0 <= v <= 100 for v in box[1::2])
        assert dets.raw == text
        parse_document(text, input_size=(100, 50), image_size=(200, 100)).to_markdown()
        parse_time_span(text)
        parse_events(text)
        assert parse_tool_calls(text, input_size=(100, 50), screen_size=(200, 100)).raw == text


def test_deep_nesting():
    for text in ["[" * 5000, "{" * 5000 + "}" * 5000, '{"a":' * 3000]:
        assert list(parse_boxes(text, input_size=(1, 1), image_size=(1, 1))) == []
        assert list(parse_tool_calls(text, input_size=(1, 1), screen_size=(1, 1))) == []
