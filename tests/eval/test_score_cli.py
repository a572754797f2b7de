"""`qwenvl eval score` end to end on small annotation + prediction files written here."""

import json

import pytest

from qwenvl.cli.main import main


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def score(tmp_path, capsys, task, data, preds):
    p = write_jsonl(tmp_path / "predictions.jsonl", preds)
    assert main(["eval", "score", "--task", task, "--predictions", str(p), "--data", str(data), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_docvqa_official_json_and_missing(tmp_path, capsys):
    data = tmp_path / "val_v1.0.json"
    data.write_text(json.dumps({"data": [
        {"questionId": 1, "question": "q", "image": "a.png", "answers": ["hello", "hi"]},
        {"questionId": 2, "question": "q", "image": "b.png", "answers": ["abcdef"]},
        {"questionId": 3, "question": "q", "image": "c.png", "answers": ["x"]},
    ]}))
    rep = score(tmp_path, capsys, "docvqa", data, [
        {"id": 1, "prediction": "Hello"}, {"id": "2", "prediction": "abc"}])   # id 3 missing
    assert rep["metrics"]["anls"] == pytest.approx(100 * (1 + 0.5 + 0) / 3, abs=1e-3)
    assert rep["missing"] == 1 and rep["num_samples"] == 3 and rep["rules"]["missing"] == 1


def test_table_output(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"questionId": 1, "question": "q", "answers": ["a"]}])
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "prediction": "a"}])
    assert main(["eval", "score", "--task", "infovqa", "--predictions", str(p), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "anls" in out and "100.00" in out and "missing (scored wrong): 0" in out


def test_countbench_one_vs_ten(tmp_path, capsys):
    data = write_jsonl(tmp_path / "c.jsonl", [{"question": "How many?", "number": n} for n in (1, 1, 3, 10, 2)])
    rep = score(tmp_path, capsys, "countbench", data, [
        {"id": 0, "prediction": "10"}, {"id": 1, "prediction": "1"}, {"id": 2, "prediction": "There are three."},
        {"id": 3, "prediction": "10"}, {"id": 4, "prediction": "lots"}])
    assert rep["metrics"]["accuracy"] == pytest.approx(60.0)
    assert rep["metrics"]["strict_accuracy"] == pytest.approx(40.0)
    assert rep["rules"] == {"exact": 3, "regex_number": 1, "unparsed": 1}


def test_refcoco_inverse_resize(tmp_path, capsys):
    # 640x480 image resized to 644x476 (LE defaults); GT [x, y, w, h] = [100, 100, 200, 100]
    data = write_jsonl(tmp_path / "r.jsonl", [
        {"question_id": "a", "answer": ["the dog"], "bbox": [100, 100, 200, 100], "width": 640, "height": 480},
        {"question_id": "b", "answer": ["left cat", "cat on the left"], "bbox": [10, 10, 50, 50],
         "width": 640, "height": 480},
    ])
    box_in = [round(100 * 644 / 640), round(100 * 476 / 480), round(300 * 644 / 640), round(200 * 476 / 480)]
    rep = score(tmp_path, capsys, "refcoco", data, [
        {"id": "a", "prediction": json.dumps([{"bbox_2d": box_in, "label": "dog"}]), "input_size": [644, 476]},
        # 0-1000 grid reading would land here; in input pixels it is far off the GT
        {"id": "b_0", "prediction": '{"bbox_2d": [16, 21, 94, 125]}', "input_size": [644, 476]},
        # a box hanging off the image: clipped, still matches
        {"id": "b_1", "prediction": '{"bbox_2d": [-20, -20, 60, 60]}', "input_size": [640, 480]},
    ])
    assert rep["num_samples"] == 3
    assert rep["metrics"]["acc@0.5"] == pytest.approx(200 / 3, abs=1e-3)


def test_screenspot_point_and_box_centre(tmp_path, capsys):
    data = write_jsonl(tmp_path / "screenspot_web.jsonl", [
        {"img_filename": "s.png", "bbox": [100, 100, 50, 20], "instruction": "x", "data_type": "text",
         "width": 2560, "height": 1440},
        {"img_filename": "s.png", "bbox": [0, 0, 10, 10], "instruction": "y", "data_type": "icon",
         "width": 2560, "height": 1440},
        {"img_filename": "s.png", "bbox": [0, 0, 10, 10], "instruction": "z", "data_type": "icon",
         "width": 2560, "height": 1440},
    ])
    # input 1680x924 (2560x1440 down-scaled); point (125, 110) original -> (82.03, 70.58) input
    call = '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [82, 71]}}' \
           '\n</tool_call>'
    rep = score(tmp_path, capsys, "screenspot", data, [
        {"id": 0, "prediction": call, "input_size": [1680, 924]},
        {"id": 1, "prediction": '{"bbox_2d": [0, 0, 6, 6]}', "input_size": [1680, 924]},   # centre (4.6, 4.7)
        {"id": 2, "prediction": "I cannot find it", "input_size": [1680, 924]},
    ])
    assert rep["metrics"]["accuracy"] == pytest.approx(200 / 3, abs=1e-3)
    assert rep["metrics"]["accuracy[type=icon]"] == pytest.approx(50.0)
    assert rep["rules"]["unparsed"] == 1


def test_charades_official_txt(tmp_path, capsys):
    data = tmp_path / "charades_sta_test.txt"
    data.write_text("AAA 0.0 10.0##person opens the door.\nBBB 5.0 15.0##person sits at the bottom.\n"
                    "CCC 1 2##x.\n")
    rep = score(tmp_path, capsys, "charades_sta", data, [
        {"id": 0, "prediction": "The event happens in the 0 - 10 seconds.", "fps": 2.0},
        {"id": 1, "prediction": "The bottom part happens from 10 to 20 seconds.", "fps": 2.0},   # IoU 1/3
        {"id": 2, "prediction": "no idea", "fps": 2.0},
    ])
    m = rep["metrics"]
    assert m["r@0.3"] == pytest.approx(200 / 3, abs=1e-3) and m["r@0.5"] == pytest.approx(100 / 3, abs=1e-3)
    assert m["miou"] == pytest.approx(100 * (1 + 1 / 3) / 3, abs=1e-3)


def test_chartqa_textvqa_ocrbench(tmp_path, capsys):
    data = write_jsonl(tmp_path / "chart.jsonl", [
        {"question": "q", "answer": "10", "type": "human_test"}, {"question": "q", "answer": "0"},
        {"question": "q", "answer": "Yes"}])
    rep = score(tmp_path, capsys, "chartqa", data, [
        {"id": 0, "prediction": "10.4"}, {"id": 1, "prediction": "0.0"}, {"id": 2, "prediction": "yes"}])
    assert rep["metrics"]["relaxed_accuracy"] == pytest.approx(200 / 3, abs=1e-3)

    data = write_jsonl(tmp_path / "tv.jsonl", [{"question_id": 7, "question": "q", "answers": ["2"] * 2 + ["3"] * 8}])
    rep = score(tmp_path, capsys, "textvqa", data, [{"id": 7, "prediction": "Two."}])
    assert rep["metrics"]["vqa_accuracy"] == pytest.approx(60.0)

    data = tmp_path / "OCRBench.json"
    data.write_text(json.dumps([
        {"id": 0, "dataset_name": "IIIT5K", "question": "q", "answers": ["Coffee"], "type": "Regular Text Recognition"},
        {"id": 1, "dataset_name": "HME100k", "question": "q", "answers": ["x^{2}"],
         "type": "Handwritten Mathematical Expression Recognition"},
        {"id": 2, "dataset_name": "HME100k", "question": "q", "answers": ["X^{2}"],
         "type": "Handwritten Mathematical Expression Recognition"},
    ]))
    rep = score(tmp_path, capsys, "ocrbench", data, [
        {"id": 0, "prediction": "The word is COFFEE."}, {"id": 1, "prediction": "x ^ { 2 }"},
        {"id": 2, "prediction": "x^{2}"}])   # HME is case-sensitive
    assert rep["metrics"]["final_score"] == 2 and rep["metrics"]["text_recognition"] == 1


def test_multiple_choice_tasks(tmp_path, capsys):
    data = write_jsonl(tmp_path / "ai2d.jsonl", [
        {"question": "q", "options": ["dog", "cat", "cow"], "answer": "1"},
        {"question": "q", "options": ["dog", "cat", "cow"], "answer": "2"}])
    rep = score(tmp_path, capsys, "ai2d", data, [{"id": 0, "prediction": "B"}, {"id": 1, "prediction": "cow"}])
    assert rep["metrics"]["accuracy"] == 100.0 and rep["rules"] == {"exact": 1, "option_text": 1}

    data = tmp_path / "mmbench.tsv"
    data.write_text("index\tquestion\thint\tA\tB\tanswer\tcategory\n1\tq\tnan\tx\ty\tA\tc\n"
                    "1000001\tq\tnan\ty\tx\tB\tc\n2\tq\t\tx\ty\tB\tc\n")
    rep = score(tmp_path, capsys, "mmbench", data, [
        {"id": "1", "prediction": "A"}, {"id": "1000001", "prediction": "A"}, {"id": "2", "prediction": "B"}])
    assert rep["metrics"]["accuracy"] == 50.0                  # circular: question 1 fails one rotation
    assert rep["metrics"]["vanilla_accuracy"] == pytest.approx(200 / 3, abs=1e-3)

    data = write_jsonl(tmp_path / "mmmu.jsonl", [
        {"id": "validation_Art_1", "question": "q <image 1>", "options": "['a', 'b', 'c']", "answer": "C",
         "question_type": "multiple-choice", "image_1": "x.png"},
        {"id": "validation_Math_2", "question": "q", "options": "[]", "answer": "3.14", "question_type": "open"}])
    rep = score(tmp_path, capsys, "mmmu", data, [
        {"id": "validation_Art_1", "prediction": "(C)"}, {"id": "validation_Math_2", "prediction": "so it is 3.1415"}])
    assert rep["metrics"]["accuracy"] == 100.0

    data = write_jsonl(tmp_path / "vmme.jsonl", [
        {"question_id": "001-1", "videoID": "v", "duration": "short", "question": "q",
         "options": ["A. x", "B. y", "C. z", "D. w"], "answer": "C"}])
    rep = score(tmp_path, capsys, "videomme", data, [{"id": "001-1", "prediction": "The best answer is C"}])
    assert rep["metrics"]["accuracy"] == 100.0

    mv = tmp_path / "mvbench"
    mv.mkdir()
    (mv / "action_sequence.json").write_text(json.dumps([
        {"video": "a.mp4", "question": "q", "candidates": ["up", "down"], "answer": "down"}]))
    rep = score(tmp_path, capsys, "mvbench", mv, [{"id": 0, "prediction": "(B) down"}])
    assert rep["metrics"]["accuracy"] == 100.0 and "accuracy[task=action_sequence]" in rep["metrics"]


def test_odinw_map(tmp_path, capsys):
    data = write_jsonl(tmp_path / "odinw.jsonl", [
        {"dataset_name": "Raccoon", "categories": ["raccoon"], "bboxes": [[10, 10, 110, 110]],
         "labels": ["raccoon"], "width": 200, "height": 200},
        {"dataset_name": "pothole", "categories": ["pothole"], "bboxes": [[0, 0, 50, 50]], "labels": ["pothole"],
         "width": 100, "height": 100},
    ])
    rep = score(tmp_path, capsys, "odinw13", data, [
        {"id": 0, "prediction": '[{"bbox_2d": [5, 5, 55, 55], "label": "Raccoon"}]', "input_size": [100, 100]},
        {"id": 1, "prediction": '[{"bbox_2d": [0, 0, 50, 50], "label": "car"}]', "input_size": [100, 100]},
    ])
    m = rep["metrics"]
    assert m["map[Raccoon]"] == pytest.approx(100.0) and m["map[pothole]"] == 0.0
    assert m["map"] == pytest.approx(50.0)


def test_android_control_and_synthetic(tmp_path, capsys):
    data = write_jsonl(tmp_path / "ac.jsonl", [
        {"id": "e1_0", "goal": "g", "image": "s.png", "width": 1080, "height": 2400,
         "action": {"action_type": "click", "x": 540, "y": 1200}},
        {"id": "e1_1", "goal": "g", "image": "s.png", "width": 1080, "height": 2400,
         "action": {"action_type": "input_text", "text": "hello world"}},
        {"id": "e1_2", "goal": "g", "image": "s.png", "width": 1080, "height": 2400,
         "action": {"action_type": "scroll", "direction": "down"}},
        {"id": "e1_3", "goal": "g", "image": "s.png", "width": 1080, "height": 2400,
         "action": {"action_type": "click", "x": 100, "y": 100}, "target_bbox": [0, 0, 200, 200]},
    ])
    tc = '<tool_call>\n{{"name": "mobile_use", "arguments": {}}}\n</tool_call>'
    rep = score(tmp_path, capsys, "android_control", data, [
        {"id": "e1_0", "prediction": tc.format('{"action": "click", "coordinate": [546, 1204]}'),
         "input_size": [1092, 2408]},
        {"id": "e1_1", "prediction": tc.format('{"action": "type", "text": "Hello world!"}'), "input_size": [1092, 2408]},
        {"id": "e1_2", "prediction": tc.format('{"action": "swipe", "coordinate": [500, 2000], "coordinate2": [500, 500]}'),
         "input_size": [1092, 2408]},
        {"id": "e1_3", "prediction": tc.format('{"action": "click", "coordinate": [500, 500]}'), "input_size": [1092, 2408]},
    ])
    # "Hello world!" vs "hello world": tokens {hello, world!} vs {hello, world} -> F1 0.5 -> counts
    assert rep["metrics"]["step_accuracy"] == pytest.approx(75.0)
    assert rep["metrics"]["type_accuracy"] == pytest.approx(100.0)

    data = write_jsonl(tmp_path / "syn.jsonl", [
        {"id": 1, "image": "x.png", "question": "How many?", "answer": 3, "kind": "count"},
        {"id": 2, "image": "x.png", "question": "Where?", "bbox": [0, 0, 50, 50], "width": 100, "height": 100,
         "kind": "ground"}])
    rep = score(tmp_path, capsys, "synthetic_shapes", data, [
        {"id": 1, "prediction": "Three."}, {"id": 2, "prediction": '{"bbox_2d": [0, 0, 100, 100]}', "input_size": [200, 200]}])
    assert rep["metrics"]["accuracy"] == 100.0


def test_errors(tmp_path, capsys):
    assert main(["eval", "score", "--task", "nope", "--predictions", "x", "--data", "y"]) == 1
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval", "score", "--task", "docvqa", "--predictions", str(tmp_path / "none.jsonl"),
                 "--data", str(tmp_path / "none.json")]) == 1


def test_original_size_from_image_file_under_media_dir(tmp_path, capsys):
    from PIL import Image
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (2000, 1000)).save(tmp_path / "imgs" / "s.png")
    data = write_jsonl(tmp_path / "screenspot_mobile.json".replace(".json", ".jsonl"), [
        {"img_filename": "s.png", "bbox": [1000, 500, 100, 100], "instruction": "x", "data_type": "icon"}])
    p = write_jsonl(tmp_path / "p.jsonl", [{"id": 0, "prediction": "[525, 275]", "input_size": [1000, 500]}])
    assert main(["eval", "score", "--task", "screenspot", "--predictions", str(p), "--data", str(data),
                 "--media-dir", str(tmp_path / "imgs"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["metrics"]["accuracy"] == 100.0 and rep["rules"] == {"inline_point": 1}   # a bare [x, y] in the answer
