"""Hand-computed cases for each metric and extraction rule."""

import pytest

from qwenvl.eval.metrics.choice import extract_choice, extract_choice_mmmu, extract_choice_videomme
from qwenvl.eval.metrics.spatial import iou, parse_detections, point_in_box, xywh_to_xyxy
from qwenvl.eval.metrics.temporal import parse_span, temporal_iou
from qwenvl.eval.metrics.text import anls, parse_count, relaxed_correctness, vqa_accuracy, vqa_normalize
from qwenvl.eval.benchmarks.mmmu import eval_open, parse_open_response


@pytest.mark.parametrize("pred, answers, expected", [
    ("hello", ["hellp"], 0.8),                    # 1 edit / 5
    ("Hello  World ", ["hello world"], 1.0),      # case and whitespace are normalised
    ("abc", ["abcdef"], 0.5),                     # exactly at the threshold: kept
    ("a", ["abcd"], 0.0),                         # 0.25 < 0.5 -> 0
    ("", ["x"], 0.0),                             # empty answer
    ("", [""], 1.0),                              # both empty: distance 0
    ("hello", ["foo", "hello"], 1.0),             # best over answers
    ("abd", ["  abc  "], 1 - 1 / 7),              # denominator = raw (unstripped) length, as officially
])
def test_anls(pred, answers, expected):
    assert anls(pred, answers) == pytest.approx(expected)


@pytest.mark.parametrize("pred, target, ok", [
    ("10.4", "10", True), ("10.6", "10", False), ("9.5", "10", True),
    ("12%", "0.12", True), (" 5 ", "5", True), ("Yes", "yes", True),
    ("0.0", "0", False),          # zero target: exact string only (official)
    ("0", "0", True),
    ("1,000", "1000", False),     # comma numbers are not floats: string compare (official)
    ("", "3", False),
])
def test_relaxed(pred, target, ok):
    assert relaxed_correctness(pred, target) is ok


def test_vqa_accuracy():
    answers = ["2"] * 2 + ["3"] * 8
    # each "2" annotator: 1 other agrees -> 1/3; each "3": 0 agree -> 0 ... for pred "two" -> "2"
    assert vqa_accuracy("two", answers) == pytest.approx((8 * (2 / 3) + 2 * (1 / 3)) / 10)
    assert vqa_accuracy("The Red.", ["red"] * 10) == 1.0
    assert vqa_accuracy("", ["red"] * 10) == 0.0
    assert vqa_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)
    assert vqa_normalize("Don't, it's 1,000?") == "don't it 's 1000"   # EvalAI splits 's
    assert vqa_normalize("dont") == "don't" and vqa_normalize("an apple") == "apple"


@pytest.mark.parametrize("text, value, rule", [
    ("1", 1, "exact"), ("10", 10, "exact"), ("3.", 3, "exact"), ("Three", 3, "exact"),
    ("1,000", 1000, "exact"), ("There are three dogs.", 3, "regex_number"),
    ("2 rows of 5, so 10 in total", 10, "regex_number"), ("", None, "unparsed"), ("many", None, "unparsed"),
    ("about 1.5", None, "unparsed"),   # "1" is not read out of "1.5"
])
def test_parse_count(text, value, rule):
    assert parse_count(text) == (value, rule)


def test_count_one_vs_ten():
    assert parse_count("10 apples")[0] == 10
    assert parse_count("I count 10.")[0] != 1


OPTS = {"A": "dog", "B": "cat", "C": "cow", "D": "pig"}


@pytest.mark.parametrize("text, letter, rule", [
    ("B", "B", "exact"), ("(B)", "B", "exact"), ("B.", "B", "exact"),
    ("B. cat", "B", "leading_letter"), ("(C) cow", "C", "leading_letter"),
    ("The answer is (C).", "C", "answer_phrase"), ("Answer: D", "D", "answer_phrase"),
    ("I think (B) is right", "B", "paren_letter"), ("It is a cat", "B", "option_text"),
    ("no idea", None, "unparsed"), ("", None, "unparsed"),
])
def test_extract_choice(text, letter, rule):
    assert extract_choice(text, OPTS) == (letter, rule)


def test_mmmu_and_videomme_extractors():
    assert extract_choice_mmmu("(B)", OPTS)[0] == "B"
    assert extract_choice_mmmu("B. cat", OPTS)[0] == "B"
    assert extract_choice_mmmu("A or maybe (C)", OPTS)[0] == "C"       # brackets win
    assert extract_choice_mmmu("I think it is A but really B", OPTS)[0] == "B"   # the last mention
    assert extract_choice_mmmu("nothing here", OPTS) == (None, "unparsed")
    assert extract_choice_videomme("The best answer is C.") == ("C", "first_capital")
    assert extract_choice_videomme("") == (None, "unparsed")
    assert parse_open_response("The answer is 3.14159") and eval_open(["3.14"], parse_open_response(
        "The answer is 3.14159"))
    assert not eval_open(["2"], parse_open_response("it is 20"))


def test_boxes():
    dets, rule = parse_detections('{"bbox_2d": [100, 50, 200, 100]}', (200, 100), (400, 200))
    assert dets[0].bbox == (200, 100, 400, 200) and rule == "json_box"     # input pixels -> original pixels
    assert xywh_to_xyxy([10, 20, 30, 40]) == (10, 20, 40, 60)
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0                       # degenerate: no division by zero
    # out of the image: clipped to it; inverted corners swapped
    assert parse_detections("[-10, 5, 700, -3]", (640, 480), (640, 480))[0][0].bbox == (0, 0, 640, 5)
    assert point_in_box((10, 10), (10, 0, 20, 10))                      # edges count


@pytest.mark.parametrize("text, rule", [
    ('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "a"}]\n```', "json_box"), ('{"point_2d": [5, 6]}', "json_point"),
    ('<points x1="5" y1="6" alt="a">a</points>', "xml_point"), ("1,2,3,4 cat", "plain_box"),
    ("the box is (1, 2, 3, 4).", "inline_box"), ("click [5, 6]", "inline_point"), ("nothing", "unparsed"), ("", "unparsed"),
])
def test_detection_rules(text, rule):
    assert parse_detections(text, (10, 10), (10, 10))[1] == rule


def test_time_spans():
    assert parse_span("The event happens in the 24.3 - 30.4 seconds.")[0] == (24.3, 30.4)
    assert parse_span("from 1:05 to 1:20")[0] == (65.0, 80.0)
    # "to" inside words must not become a separator
    assert parse_span("The person at the bottom of the stairs: 3.5 to 7.0 seconds") == ((3.5, 7.0), "span:seconds")
    assert parse_span("ends at 9, starts at 4") == ((4.0, 9.0), "span:start-end")
    assert parse_span("from 1:05 to 1:20")[1] == "span:clock"
    assert parse_span("no times") == (None, "unparsed")
    # numbers that are not a span are not read as one (they used to score as the span (3, 7))
    assert parse_span("I saw 3 dogs and 7 cats") == (None, "unparsed")
    assert parse_span("The person: 3.5 to 7.0 people") == (None, "unparsed")
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 1), (2, 3)) == 0.0
