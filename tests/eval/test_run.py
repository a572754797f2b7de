"""`qwenvl eval run` with a fake pipeline: resume, recorded input_size / fps, scores.json."""

import json

import pytest

import qwenvl
from qwenvl.cli.main import main
from qwenvl.pipeline import ChatResult
from qwenvl.processing import MediaInfo


def Media(kind, original_size, input_size, fps=None, num_frames=1):
    return MediaInfo(kind, original_size, input_size, (1, 2, 2), fps, num_frames)


class FakePipe:
    def __init__(self, answer, media):
        self.answer, self.media, self.calls = answer, media, []

    def chat(self, messages, max_new_tokens=None, temperature=None):
        self.calls.append((messages, max_new_tokens, temperature))
        return ChatResult(self.answer, [1, 2], prompt_tokens=3, finish_reason="stop", media=[self.media])


def install(monkeypatch, pipe):
    seen = {}

    def load(path, dtype=None, device=None, quantize=None, compile=False):
        seen.update(path=path, dtype=dtype, device=device, quantize=quantize, compile=compile)
        return pipe
    monkeypatch.setattr(qwenvl, "load", load)
    monkeypatch.setattr("qwenvl.cli.eval.check_model", lambda model: model)   # "ckpt" is not a real folder
    return seen


def test_run_resume_and_input_size(tmp_path, monkeypatch):
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({"question_id": f"q{i}", "answer": ["the dog"], "bbox": [100, 100, 200, 100],
                                        "width": 640, "height": 480, "image": "img.jpg"}) + "\n" for i in range(3)))
    pipe = FakePipe('{"bbox_2d": [101, 99, 302, 198]}', Media("image", (640, 480), (644, 476)))
    seen = install(monkeypatch, pipe)
    out = tmp_path / "out"
    args = ["eval", "run", "--task", "refcoco", "--data", str(data), "--model", "ckpt", "--out", str(out),
            "--max-pixels", "1605632", "--no-progress"]
    assert main(args + ["--limit", "2"]) == 0
    assert len(pipe.calls) == 2 and seen["path"] == "ckpt"
    msgs, max_new, temp = pipe.calls[0]
    content = msgs[-1]["content"]
    assert content[0]["type"] == "image" and content[0]["max_pixels"] == 1605632 and temp == 0
    assert "the dog" in content[1]["text"]
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["q0", "q1"]
    assert preds[0]["input_size"] == [644, 476] and preds[0]["image_size"] == [640, 480] and "fps" not in preds[0]

    # an interrupted line at the end is ignored and redone; done ids are skipped
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"id": "q2", "predic')
    assert main(args) == 0
    assert len(pipe.calls) == 3 and pipe.calls[2][0][-1]["content"][1]["text"].count("the dog") == 1
    scores = json.loads((out / "scores.json").read_text())
    assert scores["num_samples"] == 3 and scores["missing"] == 0 and scores["metrics"]["acc@0.5"] == 100.0

    assert main(args) == 0 and len(pipe.calls) == 3   # nothing left to do


def test_run_video_records_fps(tmp_path, monkeypatch):
    data = tmp_path / "charades_sta_test.txt"
    data.write_text("AAA 0.0 10.0##person opens the door.\n")
    pipe = FakePipe("0 - 10 seconds", Media("video", (640, 360), (644, 364), fps=2.0, num_frames=20))
    install(monkeypatch, pipe)
    out = tmp_path / "out"
    assert main(["eval", "run", "--task", "charades_sta", "--data", str(data), "--model", "m", "--out", str(out),
                 "--fps", "2", "--max-new-tokens", "7", "--no-progress"]) == 0
    msgs, max_new, _ = pipe.calls[0]
    video = msgs[-1]["content"][0]
    assert video["type"] == "video" and video["video"].endswith("AAA.mp4") and video["fps"] == 2.0 and max_new == 7
    pred = json.loads((out / "predictions.jsonl").read_text())
    assert pred == {"id": 0, "prediction": "0 - 10 seconds", "fps": 2.0, "num_frames": 20}
    assert json.loads((out / "scores.json").read_text())["metrics"]["miou"] == pytest.approx(100.0)


@pytest.mark.parametrize("task, row", [
    ("docvqa", {"questionId": 1, "question": "q", "image": "a.png", "answers": ["a"]}),
    ("chartqa", {"question": "q", "image": "a.png", "answer": "1"}),
    ("textvqa", {"question_id": 1, "question": "q", "image": "a.png", "answers": ["a"]}),
    ("ocrbench", {"id": 1, "question": "q", "image_path": "a.png", "answers": ["a"]}),
    ("countbench", {"question": "q", "image": "a.png", "number": 1}),
    ("ai2d", {"question": "q", "image": "a.png", "options": ["x", "y"], "answer": "0"}),
    ("mmbench", {"index": 1, "question": "q", "hint": "h", "A": "x", "B": "y", "answer": "A", "image": "a.png"}),
    ("mmstar", {"index": 1, "question": "q\nOptions: A: x, B: y", "answer": "A", "image": "a.png"}),
    ("mmmu", {"id": "validation_Art_1", "question": "q", "options": "['x', 'y']", "answer": "A",
              "question_type": "multiple-choice", "image_1": "a.png", "image_2": "b.png"}),
    ("odinw13", {"categories": ["a"], "bboxes": [[0, 0, 1, 1]], "labels": ["a"], "image": "a.png"}),
    ("screenspot_pro", {"id": "x", "img_filename": "a.png", "instruction": "open", "bbox": [0, 0, 5, 5],
                        "img_size": [100, 100]}),
    ("android_control_low", {"id": "e", "goal": "g", "step_instruction": "tap", "image": "a.png", "width": 1080,
                             "height": 2400, "history": ["open app"], "action": {"action_type": "wait"}}),
    ("videomme", {"question_id": "1", "videoID": "v", "question": "q", "options": ["A. x"], "answer": "A"}),
    ("mvbench", {"video": "v.mp4", "question": "q", "candidates": ["x", "y"], "answer": "x"}),
    ("synthetic_shapes", {"id": 1, "image": "a.png", "question": "q", "answer": "1"}),
])
def test_every_task_builds_messages(tmp_path, task, row):
    from qwenvl.eval import MediaContext, get_task
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(row) + "\n")
    t = get_task(task)
    rec = t.load(data)[0]
    msgs = t.messages(rec, MediaContext(max_pixels=4 * 28 * 28, fps=1.0))
    assert msgs[-1]["role"] == "user"
    kinds = [c["type"] for c in msgs[-1]["content"]]
    assert "text" in kinds and ("image" in kinds or "video" in kinds)
    if task == "mmmu":
        assert kinds.count("image") == 2
    if task in ("screenspot_pro", "android_control_low"):
        assert msgs[0]["role"] == "system" and "The screen's resolution is" in msgs[0]["content"]
