"""`qwenvl eval run` / `eval score` and `qwenvl ground` end to end on the tiny random checkpoint: no fake
pipe, real processor and generation. The model's answers are garbage; these check the plumbing (sizes
recorded per sample, scores written, JSON printed)."""

import json

from PIL import Image, ImageDraw

from qwenvl.cli.main import main


def shapes_image(path, size=(120, 90), box=(20, 10, 70, 60)):
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).rectangle(box, fill="red")
    im.save(path)
    return path


def test_eval_run_then_score_on_tiny_checkpoint(own_ckpt, tmp_path, capsys):
    shapes_image(tmp_path / "a.png")
    shapes_image(tmp_path / "b.png", size=(64, 100), box=(5, 5, 30, 40))
    data = tmp_path / "synthetic_shapes.jsonl"
    data.write_text(
        json.dumps({"id": "g0", "image": "a.png", "question": "Where is the red square?", "kind": "ground",
                    "bbox": [20, 10, 70, 60]}) + "\n"
        + json.dumps({"id": "c0", "image": "b.png", "question": "How many squares?", "kind": "count",
                      "answer": 1}) + "\n")
    out = tmp_path / "out"
    assert main(["eval", "run", "--task", "synthetic_shapes", "--data", str(data), "--model", str(own_ckpt),
                 "--out", str(out), "--max-new-tokens", "4", "--dtype", "float32", "--no-progress"]) == 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["g0", "c0"]
    assert [p["image_size"] for p in preds] == [[120, 90], [64, 100]]
    for p in preds:
        assert isinstance(p["prediction"], str)
        w, h = p["input_size"]
        assert w % 28 == 0 and h % 28 == 0           # the processor's resize, as it happened
    scores = json.loads((out / "scores.json").read_text())
    assert scores["num_samples"] == 2 and scores["missing"] == 0 and "accuracy" in scores["metrics"]
    capsys.readouterr()

    assert main(["eval", "score", "--task", "synthetic_shapes", "--data", str(data),
                 "--predictions", str(out / "predictions.jsonl"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["num_samples"] == 2 and rep["metrics"] == scores["metrics"] and sum(rep["rules"].values()) == 2


def test_ground_cli_on_tiny_checkpoint(own_ckpt, tmp_path, capsys):
    img = shapes_image(tmp_path / "s.png")
    assert main(["ground", str(img), "the red square", "--model", str(own_ckpt), "--dtype", "float32",
                 "--max-new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_size"] == [120, 90] and out["query"] == "the red square"
    assert all(v % 28 == 0 for v in out["input_size"])
    assert isinstance(out["detections"], list) and isinstance(out["raw"], str)
