"""Training faults replayed: resume never starts over silently, nothing is pruned or overwritten before
a newer checkpoint is complete, metrics.jsonl holds one curve; every bad record is reported as
file:line and skipped (--on-bad-record skip) or stops the run (fail)."""

from __future__ import annotations

import json
import random
import shutil

import pytest

from qwenvl.errors import CheckpointError
from qwenvl.train import checkpoint as ckpt
from qwenvl.train.data import BadRecord, read_records
from qwenvl.train.loop import TrainConfig, train

from train_util import write_images

KW = dict(batch_size=2, chunk=4, save_every=2, keep=3, progress=False, export=False, fps_range=None, lr=3e-3)


def cfg(own_ckpt, data, out, **kw) -> TrainConfig:
    return TrainConfig(model=str(own_ckpt), data=str(data), out=str(out), **{**KW, **kw})


@pytest.fixture(scope="module")
def full(own_ckpt, sft_data, tmp_path_factory):
    """The uninterrupted run's losses over 6 steps."""
    return train(cfg(own_ckpt, sft_data, tmp_path_factory.mktemp("full"), max_steps=6))["losses"]


@pytest.fixture
def done4(own_ckpt, sft_data, tmp_path, monkeypatch):
    """A 6-step run killed during step 5: checkpoints step-2 and step-4, latest -> step-4."""
    import qwenvl.train.loop as loop
    real, calls = loop.Trainer.counts, {"n": 0}

    def dies_in_step_5(self, batches):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, batches)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(loop.Trainer, "counts", dies_in_step_5)
        with pytest.raises(KeyboardInterrupt):
            train(cfg(own_ckpt, sft_data, out, max_steps=6))
    assert (out / "checkpoints" / "latest").read_text() == "step-000004"
    assert logged_steps(out) == [1, 2, 3, 4]
    return out


def logged_steps(out):
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in x]


def resume(own_ckpt, sft_data, out, steps=6, **kw):
    return train(cfg(own_ckpt, sft_data, out, max_steps=steps, resume=True, **kw))["losses"]


def test_latest_naming_a_missing_folder_falls_back_to_the_newest_intact(own_ckpt, sft_data, done4, full, capfd):
    shutil.rmtree(done4 / "checkpoints" / "step-000004")
    losses = resume(own_ckpt, sft_data, done4)
    assert losses == pytest.approx(full[2:], rel=1e-6)  # from step 2, not 0
    err = capfd.readouterr().err
    assert "latest names step-000004, which is missing" in err
    assert logged_steps(done4) == [1, 2, 3, 4, 5, 6]  # trimmed back to step 2, then 3..6 once each


def test_no_intact_checkpoint_refuses_and_changes_nothing(own_ckpt, sft_data, done4):
    root = done4 / "checkpoints"
    for p in root.glob("step-*"):
        shutil.rmtree(p)
    before = (done4 / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="no intact checkpoint.*latest names step-000004, which is missing"):
        resume(own_ckpt, sft_data, done4)
    assert (done4 / "metrics.jsonl").read_bytes() == before
    assert (root / "latest").read_text() == "step-000004"


def _shard(path):
    return max((p for p in path.iterdir() if p.suffix == ".distcp"), key=lambda p: p.stat().st_size)


def test_a_truncated_shard_is_named_and_the_previous_checkpoint_is_used(own_ckpt, sft_data, done4, full, capfd):
    shard = _shard(done4 / "checkpoints" / "step-000004")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    assert resume(own_ckpt, sft_data, done4) == pytest.approx(full[2:], rel=1e-6)
    err = capfd.readouterr().err
    assert f"step-000004: {shard.name} is" in err and "truncated" in err
    assert logged_steps(done4) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("victim", ["shard", "trainer.pt", "rank-0.pt", ".metadata"])
def test_damage_in_a_checkpoint_without_manifest_falls_back_on_the_load_error(own_ckpt, sft_data, done4, full,
                                                                                victim, capfd):
    """Checkpoints written before manifests: the damage shows when loading, and still falls back."""
    step4 = done4 / "checkpoints" / "step-000004"
    for p in (done4 / "checkpoints").glob("step-*/manifest.json"):
        p.unlink()
    f = _shard(step4) if victim == "shard" else step4 / victim
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert resume(own_ckpt, sft_data, done4) == pytest.approx(full[2:], rel=1e-6)
    assert "step-000004: cannot be loaded" in capfd.readouterr().err


def test_a_failed_save_prunes_nothing_and_moves_nothing(own_ckpt, sft_data, done4, monkeypatch, full):
    real = ckpt.torch.save

    def dies_writing_the_step_6_trainer_state(obj, f, *a, **k):
        if str(f).endswith("trainer.pt") and "step-000006" in str(f):
            raise OSError("disk full")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", dies_writing_the_step_6_trainer_state)
    with pytest.raises(OSError, match="disk full"):
        train(cfg(own_ckpt, sft_data, done4, max_steps=6, keep=1, resume=True))
    root = done4 / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000002", "step-000004"]  # keep=1 pruned nothing
    assert (root / "latest").read_text() == "step-000004"
    monkeypatch.setattr(ckpt.torch, "save", real)
    assert resume(own_ckpt, sft_data, done4)[:2] == pytest.approx(full[4:6], rel=1e-6)  # the .tmp-* is ignored


def test_pruning_keeps_the_newest_and_never_a_later_step(tmp_path):
    root = tmp_path
    for s in (2, 4, 6, 10):
        (root / f"step-{s:06d}").mkdir()
    ckpt.prune(root, 6, keep=2)
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000004", "step-000006", "step-000010"]


def test_a_fresh_run_refuses_a_folder_with_checkpoints(own_ckpt, sft_data, done4):
    before = sorted(p.name for p in (done4 / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--resume"):
        train(cfg(own_ckpt, sft_data, done4, max_steps=2))
    assert sorted(p.name for p in (done4 / "checkpoints").iterdir()) == before


def test_resume_without_any_checkpoint_but_a_previous_run_refuses(own_ckpt, sft_data, tmp_path, capfd):
    out = tmp_path / "nosave"
    train(cfg(own_ckpt, sft_data, out, max_steps=2, save_every=0))
    with pytest.raises(CheckpointError, match="holds no checkpoint.*metrics.jsonl logs 2 steps"):
        resume(own_ckpt, sft_data, out, save_every=0)
    # a first run with --resume simply starts, and says so
    resume(own_ckpt, sft_data, tmp_path / "new", steps=1)
    assert "nothing saved" in capfd.readouterr().err


def test_metrics_are_trimmed_to_the_resumed_step(tmp_path):
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4, 5))
                 + json.dumps({"summary": {"steps": 5}}) + "\n" + '{"step": 6, "lo')  # a line torn by a kill
    ckpt.trim_metrics(m, 4)
    assert [json.loads(x)["step"] for x in m.read_text().splitlines()] == [1, 2, 3, 4]
    ckpt.trim_metrics(m, 0)
    assert m.read_text() == ""


def test_export_replaces_final_only_once_complete(own_ckpt, tmp_path, monkeypatch):
    from qwenvl.model.weights import load_model
    final = tmp_path / "final"
    final.mkdir()
    (final / "config.json").write_text("{}")

    def fails(model, path, **kw):
        (path / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(ckpt, "save_model", fails)
    with pytest.raises(OSError):
        ckpt.export(load_model(own_ckpt), own_ckpt, final)
    assert (final / "config.json").read_text() == "{}" and not (final / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------ bad records

OK = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yes"}]}


def _msgs(*turns):
    return {"messages": list(turns)}


BAD = {
    "a string in a content list": _msgs({"role": "user", "content": ["hello"]}, {"role": "assistant", "content": "a"}),
    "a number as text": _msgs({"role": "user", "content": [{"type": "text", "text": 5}]},
                              {"role": "assistant", "content": "a"}),
    "a number as content": _msgs({"role": "user", "content": 5}, {"role": "assistant", "content": "a"}),
    "a number as a value": {"conversations": [{"from": "human", "value": 7}, {"from": "gpt", "value": "a"}]},
    "null content": _msgs({"role": "user", "content": None}, {"role": "assistant", "content": "a"}),
    "null reply": _msgs({"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}),
    "an image path that is a number": {"image": 5, "conversations": [{"from": "human", "value": "<image>Hi"},
                                                                      {"from": "gpt", "value": "a"}]},
    "an image item path that is a number": _msgs({"role": "user", "content": [{"type": "image", "image": 3}]},
                                                 {"role": "assistant", "content": "a"}),
    "an image list of lists": {"images": [["a.png"]], "messages": OK["messages"]},
    "a message that is a string": {"messages": ["hello", {"role": "assistant", "content": "a"}]},
    "a message that is a list": {"messages": [["user", "hi"], {"role": "assistant", "content": "a"}]},
    "no role": _msgs({"content": "Hi"}, {"role": "assistant", "content": "a"}),
    "a role that is a list": _msgs({"role": ["user"], "content": "Hi"}, {"role": "assistant", "content": "a"}),
    "a role that is a dict": {"conversations": [{"from": {"x": 1}, "value": "Hi"}, {"from": "gpt", "value": "a"}]},
    "an unknown item type": _msgs({"role": "user", "content": [{"type": "audio", "audio": "x.wav"}]},
                                  {"role": "assistant", "content": "a"}),
    "a url that is a dict of a number": _msgs(
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]},
        {"role": "assistant", "content": "a"}),
    "messages that are a dict": {"messages": {"role": "user", "content": "Hi"}},
    "an empty message list": {"messages": []},
    "a list record": [OK],
    "a string record": "hello",
    "a number record": 5,
    "null record": None,
    "chosen that is a number": {"prompt": "Hi", "chosen": 1, "rejected": "b"},
    "deeply nested": {"messages": [{"role": "user", "content": [[[[{"text": "x"}]]]]},
                                   {"role": "assistant", "content": "a"}]},
    "a video frame list with a number": _msgs({"role": "user", "content": [{"type": "video", "video": ["a.png", 1]}]},
                                              {"role": "assistant", "content": "a"}),
}


def _write(path, lines: list[bytes]):
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    return path


@pytest.mark.parametrize("kind", BAD)
def test_each_bad_record_kind_is_reported_as_file_and_line(tmp_path, capsys, kind):
    path = _write(tmp_path / "d.jsonl", [json.dumps(OK).encode(), json.dumps(BAD[kind]).encode(),
                                         json.dumps(OK).encode()])
    records = read_records(path, on_bad="skip")
    assert [r.where for r in records] == [f"{path}:1", f"{path}:3"]
    err = capsys.readouterr().err
    assert f"d.jsonl:2:" in err and "Traceback" not in err
    with pytest.raises(BadRecord, match=r"d\.jsonl:2: "):
        read_records(path, on_bad="fail")


def test_a_line_that_is_not_utf8_is_one_bad_record(tmp_path, capsys):
    path = _write(tmp_path / "d.jsonl", [b"\xef\xbb\xbf" + json.dumps(OK).encode(),  # a BOM opening the file is fine
                                         b'{"messages": "\xff\xfe caf\xe9"}', json.dumps(OK).encode()])
    assert [r.where.rsplit(":", 1)[1] for r in read_records(path)] == ["1", "3"]
    assert "d.jsonl:2: not UTF-8" in capsys.readouterr().err
    with pytest.raises(BadRecord, match=r"d\.jsonl:2: not UTF-8"):
        read_records(path, on_bad="fail")


def test_fuzzed_lines_are_records_or_file_line_reports(tmp_path, capsys):
    """Random JSON values, random bytes and mutated good records: each line is kept or reported, and
    nothing else escapes (no AttributeError, TypeError, UnicodeDecodeError...)."""
    images = write_images(tmp_path / "images", 1)
    good = [OK, {"image": images[0], "conversations": [{"from": "human", "value": "<image>What?"},
                                                       {"from": "gpt", "value": "red"}]},
            {"messages": [{"role": "user", "content": [{"type": "image", "image": images[0]},
                                                       {"type": "text", "text": "Hi"}]},
                          {"role": "assistant", "content": "a"}]}]
    rng = random.Random(0)
    atoms = [None, True, 0, -3, 2.5, "", "x", "<image>", [], {}, [None], {"role": 1}, ["a"], {"type": "image"},
             "../../etc/passwd", {"url": None}, 1e308]

    def mutate(x, depth=0):
        if isinstance(x, dict) and x and rng.random() < 0.8:
            k = rng.choice(list(x))
            return {**x, k: mutate(x[k], depth + 1) if rng.random() < 0.6 else rng.choice(atoms)}
        if isinstance(x, list) and x and rng.random() < 0.8:
            i = rng.randrange(len(x))
            return x[:i] + [mutate(x[i], depth + 1) if rng.random() < 0.6 else rng.choice(atoms)] + x[i + 1:]
        return rng.choice(atoms)

    lines = [json.dumps(OK).encode()]
    for _ in range(300):
        r = rng.random()
        if r < 0.7:
            lines.append(json.dumps(mutate(rng.choice(good))).encode())
        elif r < 0.85:
            lines.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))).replace(b"\n", b" "))
        else:
            raw = bytearray(json.dumps(rng.choice(good)).encode())
            raw[rng.randrange(len(raw))] = rng.randrange(256)
            lines.append(bytes(raw).replace(b"\n", b" "))
    path = _write(tmp_path / "fuzz.jsonl", lines)
    records = read_records(path, data_root=tmp_path)
    err = capsys.readouterr().err
    reported = {int(x.split("fuzz.jsonl:")[1].split(":")[0]) for x in err.splitlines() if "fuzz.jsonl:" in x}
    kept = {int(r.where.rsplit(":", 1)[1]) for r in records}
    blank = {i for i, x in enumerate(lines, 1) if not x.strip()}
    assert kept | reported | blank == set(range(1, len(lines) + 1)) and not kept & reported
    assert len(reported) > 100 and len(kept) > 1


def test_a_run_skips_or_stops_on_bad_records(own_ckpt, tmp_path, capfd):
    lines = [json.dumps(OK).encode(), json.dumps(BAD["a message that is a string"]).encode(), b"\xff\xfe",
             json.dumps(BAD["null content"]).encode(), json.dumps(OK).encode()]
    data = _write(tmp_path / "d.jsonl", lines)
    s = train(cfg(own_ckpt, data, tmp_path / "skip", max_steps=1, save_every=0))
    assert s["steps"] == 1
    err = capfd.readouterr().err
    assert all(f"d.jsonl:{i}:" in err for i in (2, 3, 4))
    with pytest.raises(BadRecord, match=r"d\.jsonl:2: messages\[0\] must be a message object"):
        train(cfg(own_ckpt, data, tmp_path / "fail", max_steps=1, save_every=0, on_bad_record="fail"))


def test_two_processes_fall_back_together_and_one_process_is_refused(own_ckpt, sft_data, tmp_path):
    import os
    import subprocess
    import sys

    from test_distributed import free_port

    out = tmp_path / "two"
    common = ["-m", "qwenvl.cli.main", "train", "--model", str(own_ckpt), "--data", str(sft_data), "--max-steps", "4",
              "--lr", "3e-3", "--batch-size", "1", "--no-progress", "--fixed-fps", "--save-every", "2", "--keep", "3",
              "--no-export", "--out", str(out)]

    def torchrun(*extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), *common, *extra]
        r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    torchrun()
    first = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    shard = sorted((out / "checkpoints" / "step-000004").glob("*.distcp"))[-1]  # the second rank's shard
    shard.write_bytes(shard.read_bytes()[:100])
    r = torchrun("--resume")
    assert "step-000004" in r.stderr and "truncated" in r.stderr
    again = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    assert [x["step"] for x in again] == [1, 2, 3, 4]
    assert [x["loss"] for x in again] == pytest.approx([x["loss"] for x in first], rel=1e-5)

    from qwenvl.cli.main import main
    with pytest.raises(CheckpointError, match="written by 2 processes, this run has 1"):
        train(cfg(own_ckpt, sft_data, out, max_steps=6, resume=True))
    assert main(common[2:] + ["--resume", "--max-steps", "6"]) == 1  # the CLI says it in one line


@pytest.mark.parametrize("standin", [".old-", ".tmp-"])
def test_a_save_killed_between_its_renames_loses_nothing(own_ckpt, sft_data, done4, full, standin, capfd):
    """Killed after step-4 was moved aside (.old-) or before the new copy was renamed in (.tmp-, complete
    with its manifest): step 4 is still found, restored in place, and resumed from."""
    root = done4 / "checkpoints"
    (root / "step-000004").rename(root / f"{standin}step-000004")
    assert resume(own_ckpt, sft_data, done4) == pytest.approx(full[4:], rel=1e-6)
    assert f"{standin}step-000004 restored as step-000004" in capfd.readouterr().err
    assert not (root / f"{standin}step-000004").exists()


def test_an_unfinished_tmp_folder_is_never_resumed_from(own_ckpt, sft_data, done4, full):
    root = done4 / "checkpoints"
    shutil.copytree(root / "step-000004", root / ".tmp-step-000006")
    (root / ".tmp-step-000006" / "manifest.json").unlink()  # killed before the manifest: incomplete
    assert resume(own_ckpt, sft_data, done4) == pytest.approx(full[4:], rel=1e-6)


def test_the_cli_refuses_in_one_line(own_ckpt, sft_data, done4, capsys):
    from qwenvl.cli.main import main
    for p in (done4 / "checkpoints").glob("step-*"):
        shutil.rmtree(p)
    rc = main(["train", "--model", str(own_ckpt), "--data", str(sft_data), "--out", str(done4), "--max-steps", "6",
               "--save-every", "2", "--no-progress", "--no-export", "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("qwenvl train: error: --resume: no intact checkpoint")
