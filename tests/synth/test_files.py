"""qwenvl.synth.write / `qwenvl data synth`: files `qwenvl train` reads, eval rows the synth_* eval tasks
score (oracle answers score 100, a tiny random model runs end to end)."""

from __future__ import annotations

import json

import pytest

from qwenvl import synth
from qwenvl.cli.main import main
from qwenvl.eval.registry import get_task
from qwenvl.eval.scoring import score as score_run
from qwenvl.processing.image import MediaSettings
from qwenvl.processing.video import fetch_video_sized
from qwenvl.train.data import read_records


@pytest.mark.parametrize("task", synth.TASKS)
def test_write_is_readable_by_train_and_eval(task, tmp_path):
    train, evalf = synth.write(task, 3, tmp_path, seed=4, turns=2)
    recs = read_records(train, on_bad="fail")
    assert len(recs) == 3
    turns = 0
    for r in recs:
        items = [c for c in r.messages[0]["content"] if c["type"] in ("image", "video")]
        assert len(items) == 1 and (tmp_path / items[0][items[0]["type"]]).exists()
        n = len(r.messages) // 2
        # one question per text image / page; ground and point ask each shape once (a 1-shape scene: 1 turn)
        assert n == 1 if task in ("read", "document") else 1 <= n <= 2
        assert [m["role"] for m in r.messages] == ["user", "assistant"] * n
        turns += n
    rows = [json.loads(line) for line in evalf.read_text().splitlines()]
    assert len(rows) == turns and len({r["id"] for r in rows}) == turns and {r["task"] for r in rows} == {task}
    # the same seed writes the same files
    again = tmp_path / "again"
    synth.write(task, 3, again, seed=4, turns=2)
    assert (again / "eval.jsonl").read_text() == evalf.read_text()

    # oracle predictions (the answers themselves) score 100 on every metric of the eval task
    t = get_task(f"synth_{task}")
    records = t.load(evalf)
    preds = [{"id": r["id"], "prediction": r["answer"], "input_size": r["input_size"]} for r in records]
    rep = score_run(t, records, preds)
    assert rep["missing"] == 0
    for k in t.metrics:
        assert rep["metrics"][k] >= (80.0 if k == "iou" else 100.0), (k, rep)
    wrong = score_run(t, records, [{"id": r["id"], "prediction": "no idea"} for r in records])
    assert all(v == 0 for v in wrong["metrics"].values())


def test_video_files_decode_to_the_same_clip(tmp_path):
    """The MP4 sampled at the row's fps gives back every frame, at that fps and size."""
    _, evalf = synth.write("video_ground", 3, tmp_path, seed=2)
    for row in map(json.loads, evalf.read_text().splitlines()):
        item = {"video": str(tmp_path / row["video"]), "fps": row["fps"], "min_pixels": row["min_pixels"],
                "max_pixels": row["max_pixels"]}
        frames, fps, orig = fetch_video_sized(item, MediaSettings())
        n = round(row["target"]["duration"] * row["fps"])
        assert frames.shape[0] == n and abs(fps - row["fps"]) < 1e-6 and list(orig) == row["media_size"]
        assert (frames.shape[3], frames.shape[2]) == tuple(row["input_size"])


def test_mixed_rows_with_the_synth_task(tmp_path):
    rows = []
    for task in ("count", "ground", "read"):
        _, evalf = synth.write(task, 2, tmp_path / task, seed=1)
        for r in map(json.loads, evalf.read_text().splitlines()):
            r["image"] = f"{task}/{r['image']}"
            r["id"] = f"{task}-{r['id']}"
            rows.append(r)
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = get_task("synth")
    records = t.load(mixed)
    rep = score_run(t, records, [{"id": r["id"], "prediction": r["answer"]} for r in records])
    assert rep["metrics"]["mean"] == 100.0 and rep["metrics"]["count/exact"] == 100.0
    assert "ground/acc@0.5" in rep["metrics"] and "read/exact" in rep["metrics"]
    with pytest.raises(ValueError, match="synth_count"):
        get_task("synth_ground").load(tmp_path / "count" / "eval.jsonl")


def test_scores_are_broken_down_by_where_the_media_went(tmp_path):
    _, evalf = synth.write("count", 6, tmp_path, seed=3)
    t = get_task("synth_count")
    records = t.load(evalf)
    for i, r in enumerate(records):
        r["text_first"] = i < 2
    # right on the text-first rows only
    preds = [{"id": r["id"], "prediction": r["answer"] if r["text_first"] else "none"} for r in records]
    m = score_run(t, records, preds)["metrics"]
    assert m["exact[order=text_first]"] == 100.0 and m["exact[order=media_first]"] == 0.0
    assert m["exact"] == pytest.approx(100 * 2 / 6, abs=1e-3)


def test_data_synth_cli(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "synth", "--task", "point", "--n", "4", "--out", str(out), "--seed", "3"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["examples"] == 4 and rep["questions"] == 4
    assert len(list((out / "images").glob("*.png"))) == 4
    assert len(read_records(out / "train.jsonl", on_bad="fail")) == 4
    with pytest.raises(SystemExit):
        main(["data", "synth", "--task", "nope", "--n", "1", "--out", str(out)])
    narrow = tmp_path / "narrow"
    assert main(["data", "synth", "--task", "ground", "--n", "6", "--out", str(narrow), "--objects", "1", "1",
                 "--shapes", "star", "--colors", "red", "blue", "--backgrounds", "plain"]) == 0
    labels = {json.loads(line)["target"]["label"] for line in (narrow / "eval.jsonl").read_text().splitlines()}
    assert labels <= {"red star", "blue star"} and labels
    for name in ("aligned", "crisp"):       # the bare flag means every scene
        for flag, share in (([f"--{name}"], 1.0), ([f"--{name}", "0.5"], 0.5)):
            cli, api = tmp_path / f"cli-{name}{share}", tmp_path / f"api-{name}{share}"
            assert main(["data", "synth", "--task", "cell", "--n", "6", "--out", str(cli), "--seed", "2", *flag]) == 0
            synth.write("cell", 6, api, seed=2, **{name: share})
            assert (cli / "eval.jsonl").read_text() == (api / "eval.jsonl").read_text()
            assert [p.read_bytes() for p in sorted((cli / "images").iterdir())] == \
                [p.read_bytes() for p in sorted((api / "images").iterdir())]
    capsys.readouterr()
    assert main(["data", "synth", "--task", "cell", "--n", "1", "--out", str(tmp_path / "bad"), "--aligned", "2"]) != 0
    assert "aligned must be a share" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    before = (cli / "eval.jsonl").read_text()       # a bad rerun into an existing set leaves its files whole
    assert main(["data", "synth", "--task", "cell", "--n", "1", "--out", str(cli), "--objects", "0", "2"]) != 0
    assert (cli / "eval.jsonl").read_text() == before and "objects must be" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["ground", "video_ground"])
def test_eval_run_on_tiny_model(task, own_ckpt, tmp_path):
    data = tmp_path / "data"
    synth.write(task, 2, data, seed=5, size_range=(56, 160))
    out = tmp_path / "out"
    assert main(["eval", "run", "--task", f"synth_{task}", "--data", str(data / "eval.jsonl"), "--model",
                 str(own_ckpt), "--out", str(out), "--max-new-tokens", "4", "--dtype", "float32",
                 "--no-progress"]) == 0
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (data / "eval.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [r["id"] for r in rows]
    for p, r in zip(preds, rows):
        assert isinstance(p["prediction"], str)
        if task == "ground":
            assert p["input_size"] == r["input_size"]     # the row's pixel budget reached the processor
        else:
            assert abs(p["fps"] - r["fps"]) < 1e-6
    scores = json.loads((out / "scores.json").read_text())
    assert scores["num_samples"] == 2 and set(scores["metrics"]) >= set(get_task(f"synth_{task}").metrics)


@pytest.mark.parametrize("task", synth.TASKS)
def test_sample_messages_go_through_the_processor(task, own_ckpt):
    """What the trainer feeds the processor on the fly: PIL media with their budget, multi-turn text."""
    import random

    from qwenvl.processing.processor import Processor

    proc = Processor.from_pretrained(own_ckpt)
    ex = synth.sample(task, random.Random(1), turns=2)
    batch = proc(ex.messages, add_generation_prompt=False)
    (info,) = batch.media[0]
    assert info.input_size == ex.input_size and info.original_size == ex.media_size
    if task == "video_ground":
        n = len(ex.messages[0]["content"][0 if ex.messages[0]["content"][0]["type"] == "video" else 1]["video"])
        assert info.grid_thw[0] == n // 2 and abs(info.fps - ex.fps) < 1e-9
        assert float(batch["second_per_grid_ts"][0]) == pytest.approx(2 / ex.fps)
    assert batch["input_ids"].shape[1] > info.num_tokens


def test_a_write_failing_half_way_leaves_the_earlier_set_whole(tmp_path, monkeypatch):
    """Files are staged and moved in at the end: a failure on a later example (here the third) leaves the set
    written before in that folder as it was, rows and images, and no staging folder behind."""
    out = tmp_path / "set"
    synth.write("ground", 3, out, seed=1)
    before = {f: (out / f).read_bytes() for f in ("train.jsonl", "eval.jsonl", "images/000000.png")}
    real, calls = synth.sample, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(synth, "sample", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        synth.write("ground", 5, out, seed=2)
    assert {f: (out / f).read_bytes() for f in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "images", "train.jsonl"]
