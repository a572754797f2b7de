"""scripts/build_default_model.py's own steps (the recipe chunks themselves run in tests/train)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwenvl.model.weights import load_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_default_model.py"


@pytest.fixture(scope="module")
def build():
    spec = importlib.util.spec_from_file_location("build_default_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_grow_keeps_the_function_and_adds_trainable_layers(build, own_ckpt, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "m").symlink_to(own_ckpt, target_is_directory=True)
    build.grow(out, "m", 5)
    old, new = load_model(own_ckpt), load_model(out / "m-deep5")
    n = old.config.text.num_hidden_layers
    assert new.config.text.num_hidden_layers == 5 > n
    # everything but the weights travels with the grown model (tokenizer, processor, template)
    names = {f.name for f in (out / "m-deep5").iterdir()}
    assert {"tokenizer.json", "preprocessor_config.json", "chat_template.json"} <= names
    assert not any(f.startswith("model-") for f in names)          # no stale shard of the old model
    torch.manual_seed(0)
    ids = torch.randint(0, old.config.text.vocab_size - 10, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(new(ids).logits, old(ids).logits, rtol=0, atol=1e-5)
    # the new layers are not inert: their projections in are random, so gradients reach the zeroed ones
    new.train()
    new(ids).logits.float().logsumexp(-1).mean().backward()
    fresh = [layer for layer in new.language_model.layers if layer.self_attn.o_proj.weight.count_nonzero() == 0]
    assert len(fresh) == 5 - n
    assert all(float(layer.mlp.down_proj.weight.grad.abs().sum()) > 0 for layer in fresh)


def test_grow_refuses_a_shallower_model(build, own_ckpt, tmp_path):
    (tmp_path / "m").symlink_to(own_ckpt, target_is_directory=True)
    with pytest.raises(SystemExit, match="already has"):
        build.grow(tmp_path, "m", 1)


def test_every_chunk_recipe_is_a_valid_training_config(build):
    """Each chunk's recipe is what `qwenvl train --recipe` takes, its data mixes name real tasks, and every
    task of every stage draws an example with the options that stage gives it (a typo fails here, not an
    hour into a run)."""
    import random

    from qwenvl import synth
    from qwenvl.train.loop import TrainConfig
    from qwenvl.train.sources import SYNTH_PREFIX, parse_mix, task_options

    budget = {"min_pixels": build.MIN_PIXELS, "max_pixels": build.MAX_PIXELS,
              "video_max_pixels": build.VIDEO_MAX_PIXELS}
    for name, (start, recipe, dest) in build.CHUNKS.items():
        TrainConfig(**{"data": None, **recipe, "model": start, "out": dest})
        stages = recipe.get("curriculum") or [{"data": recipe["data"]}]
        for stage in stages + [{"data": recipe["eval_data"]}]:
            assert stage["data"].startswith(SYNTH_PREFIX), (name, stage)
            kw = {**budget, **(recipe.get("synth") or {}), **(stage.get("synth") or {})}
            assert set(kw.get("per_task") or {}) <= set(synth.TASKS), name
            for task in parse_mix(stage["data"]):
                ex = synth.sample(task, random.Random(name), **task_options(kw, task))
                assert ex.task == task and ex.targets, (name, task)


def test_export_refuses_a_chunk_still_training(build, tmp_path):
    """A run still going may be writing its next checkpoint, so `export` of it stops before reading any, naming
    the chunk; a run with a similar name going does not count."""
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path / "train33.json")])
    try:
        with pytest.raises(SystemExit, match="train33 is still training"):
            build.export(tmp_path, "train33")
        with pytest.raises(FileNotFoundError):      # train3 is not running: it goes on (to its missing config)
            build.export(tmp_path, "train3")
    finally:
        busy.kill()
