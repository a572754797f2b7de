"""Training features a from-scratch run needs: per-reply loss weighting, synthetic data drawn on the fly,
curricula, recipes, generation metrics during training, a wall-clock chunk limit."""

from __future__ import annotations

import json

import pytest
import torch

from qwenvl.train.data import DataOptions, encode, read_records, reply_weights
from qwenvl.train.loop import TrainConfig, Trainer, train
from qwenvl.train.pack import IGNORE, collate
from qwenvl.train.sources import Curriculum, SynthStream, make_stream, parse_mix, task_options


def cfg(own_ckpt, data, out, **kw) -> TrainConfig:
    base = dict(model=str(own_ckpt), data=str(data), out=str(out), max_steps=2, lr=3e-3, batch_size=2,
                progress=False, export=False, fps_range=None)
    return TrainConfig(**{**base, **kw})


def test_reply_weights_make_every_reply_count_once():
    t = torch.tensor([IGNORE, 5, 6, 7, IGNORE, IGNORE, 8, IGNORE, 9, 10])
    w = reply_weights(t)
    assert w.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 1, 0, 0.5, 0.5])
    assert reply_weights(torch.full((4,), IGNORE)).sum() == 0


def test_reply_weighting_counts_replies_in_the_batch(own_ckpt, sft_data):
    from qwenvl.model.weights import load_model
    from qwenvl.processing import Processor

    model = load_model(own_ckpt)
    proc = Processor.from_pretrained(own_ckpt)
    samples = [encode(proc, r.messages, model.config, r.where) for r in read_records(sft_data)[:4]]
    b = collate([[s] for s in samples], 0)
    assert b.n_replies == 4  # one assistant turn each
    # Each reply's weights sum to one, so the weighted sum over the batch is the number of replies.
    assert float(b.weights.sum()) == pytest.approx(4.0)
    assert torch.all(b.weights[b.targets == IGNORE] == 0)


def test_reply_weighted_training_runs_and_logs(own_ckpt, sft_data, tmp_path):
    s = train(cfg(own_ckpt, sft_data, tmp_path, loss_weighting="reply", max_steps=6, lr=1e-2, min_lr_ratio=1.0,
                  batch_size=8, pack=True))
    assert s["losses"][-1] < s["losses"][0]
    with pytest.raises(ValueError, match="loss-weighting"):
        Trainer(cfg(own_ckpt, sft_data, tmp_path, loss_weighting="sample"))


def test_parse_mix_names_the_bad_part():
    assert parse_mix("synth:ground=3,count") == {"ground": 3.0, "count": 1.0}
    for bad, msg in [("synth:", "no synthetic task"), ("synth:nope", "unknown synthetic task 'nope'"),
                     ("synth:ground=x", "not a number"), ("synth:ground=0", "must be > 0")]:
        with pytest.raises(ValueError, match=msg):
            parse_mix(bad)


def _stream(own_ckpt, seed=0, chunk=6, **sample_kw):
    from qwenvl.model.weights import load_model
    from qwenvl.processing import Processor

    proc = Processor.from_pretrained(own_ckpt)
    config = load_model(own_ckpt).config
    opts = DataOptions(max_len=2048, pack=True, batch_size=2, chunk=chunk, seed=seed)
    return SynthStream(parse_mix("synth:ground,count,point"), proc, config, opts,
                       sample_kw={"size_range": (56, 168), **sample_kw})


def _text_first(ex) -> bool:
    return ex.messages[0]["content"][0]["type"] == "text"


def test_synth_options_per_task(own_ckpt):
    """A task's own options override the shared ones for it alone (box questions asked text first, as
    `qwenvl ground` asks them, while counting keeps either order)."""
    s = _stream(own_ckpt, chunk=40, order="media_first", per_task={"ground": {"order": "text_first"}})
    order = {}
    for _, ex in s.examples(0, 40):
        order.setdefault(ex.task, set()).add(_text_first(ex))
    assert order["ground"] == {True} and order["count"] == {False} and order["point"] == {False}
    assert task_options({"order": "random", "turns": 2, "per_task": {"point": {"turns": 1}}}, "point") == \
        {"order": "random", "turns": 1}
    with pytest.raises(ValueError, match="per_task: unknown synthetic task 'grond'"):
        _stream(own_ckpt, per_task={"grond": {"order": "text_first"}})


def test_synth_stream_is_deterministic_and_resumes_exactly(own_ckpt):
    a, b = _stream(own_ckpt), _stream(own_ckpt)
    first = [a.next() for _ in range(5)]
    again = [b.next() for _ in range(5)]
    for x, y in zip(first, again):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.pixel_values, y.pixel_values)
    state = a.state()
    want = [a.next() for _ in range(3)]
    c = _stream(own_ckpt)
    c.load_state(state)
    for x, y in zip(want, [c.next() for _ in range(3)]):
        assert torch.equal(x.input_ids, y.input_ids)
    other = _stream(own_ckpt, seed=1).next()
    assert not torch.equal(other.input_ids[:, :64], first[0].input_ids[:, :64])


def test_synth_answers_are_in_the_processors_input_pixels(own_ckpt):
    """The boxes a synthetic example teaches must be in the pixels of the image the model sees."""
    s = _stream(own_ckpt)
    for where, ex in s.examples(0, 8):
        batch = s.processor(ex.messages, add_generation_prompt=False)
        assert tuple(batch.media[0][0].input_size) == tuple(ex.input_size), where


def test_curriculum_switches_stage_by_steps_and_resumes(own_ckpt, sft_data):
    class Fake:
        def __init__(self, name):
            self.name, self.n = name, 0

        def next(self):
            self.n += 1
            return (self.name, self.n)

        def state(self):
            return {"n": self.n}

        def load_state(self, s):
            self.n = s["n"]

    cur = Curriculum([(2, Fake("a")), (1, Fake("b"))], grad_accum=2)
    got = [cur.next()[0] for _ in range(7)]
    assert got == ["a"] * 4 + ["b"] * 3  # the last stage runs on past its end
    again = Curriculum([(2, Fake("a")), (1, Fake("b"))], grad_accum=2)
    again.load_state(cur.state())
    assert again.next() == ("b", 4)


def test_synthetic_curriculum_with_generation_metrics(own_ckpt, tmp_path):
    curriculum = [{"steps": 1, "data": "synth:count"}, {"steps": 1, "data": "synth:ground,count"}]
    s = train(cfg(own_ckpt, "", tmp_path, curriculum=curriculum, pack=True, max_len=2048, chunk=4,
                  eval_data="synth:ground,count", eval_every=2, eval_generate=2, eval_max_new_tokens=8,
                  synth={"size_range": (56, 112)}, loss_weighting="reply"))
    assert s["steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"gen_ground_acc@0.5", "gen_count_exact"} <= rows[1].keys()
    assert all(0.0 <= rows[1][k] <= 1.0 for k in ("gen_ground_acc@0.5", "gen_count_exact"))


def test_make_stream_refuses_synth_for_dpo(own_ckpt):
    with pytest.raises(ValueError, match="preference"):
        make_stream("synth:ground", None, None, DataOptions(), 0, 1, 0, True)


def test_recipe_file_and_max_minutes(own_ckpt, sft_data, tmp_path):
    from qwenvl.cli.main import main

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"model": str(own_ckpt), "data": str(sft_data), "max_steps": 50, "lr": 1e-3,
                                  "save_every": 1, "batch_size": 2}))
    out = tmp_path / "run"
    # --max-minutes 0.0001 stops after the first step; the command line's --out wins over the recipe.
    rc = main(["train", "--recipe", str(recipe), "--out", str(out), "--max-minutes", "0.0001", "--no-progress",
               "--no-export"])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    assert 1 <= len(rows) < 50
    assert (out / "checkpoints" / "latest").exists()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"max_stepz": 3}))
    assert main(["train", "--recipe", str(bad), "--out", str(out)]) == 1


def test_a_synthetic_chunk_lowers_the_loss(own_ckpt, tmp_path):
    """A few steps of the default model's recipe shape (synthetic stream, packing, reply weighting) learn."""
    s = train(cfg(own_ckpt, "synth:count=2,ground", tmp_path, max_steps=10, lr=1e-2, min_lr_ratio=1.0, pack=True,
                  max_len=2048, chunk=8, batch_size=2, loss_weighting="reply", synth={"size_range": (56, 112)}))
    first, last = sum(s["losses"][:2]) / 2, sum(s["losses"][-2:]) / 2
    assert last < 0.7 * first, s["losses"]
