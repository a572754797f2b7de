"""Plain-words errors for directories that are not (whole) Qwen2.5-VL checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwenvl.config import PRESETS, QwenVLConfig
from qwenvl.model.weights import load_model, random_model, save_model


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type is 'llama'"):
        load_model(tmp_path)


def test_missing_shard(tiny_ckpt, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    (d / "model-00002-of-00010.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00010"):
        load_model(d)


def test_partial_shard(tiny_ckpt, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    f = d / "model-00003-of-00010.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match="model-00003-of-00010"):
        load_model(d)


def _edit_one_tensor(d, fn):
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name, shard = next(iter(index["weight_map"].items()))
    tensors = load_file(d / shard)
    fn(tensors, name, index, shard)
    save_file(tensors, d / shard, metadata={"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return name


def test_wrong_shape(tiny_ckpt, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    name = _edit_one_tensor(d, lambda t, n, i, s: t.__setitem__(n, torch.zeros(3, 3)))
    with pytest.raises(ValueError, match=f"{name}: shape \\(3, 3\\)"):
        load_model(d)


def test_unexpected_and_missing_keys(tiny_ckpt, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)

    def add(t, n, index, shard):
        t["model.extra.weight"] = torch.zeros(2)
        index["weight_map"]["model.extra.weight"] = shard
    _edit_one_tensor(d, add)
    with pytest.raises(ValueError, match="unexpected tensors.*model.extra.weight"):
        load_model(d)

    d2 = tmp_path / "c2"
    shutil.copytree(tiny_ckpt, d2)

    def drop(t, n, index, shard):
        del t[n]
        del index["weight_map"][n]
    name = _edit_one_tensor(d2, drop)
    with pytest.raises(ValueError, match="missing tensors"):
        load_model(d2)


def test_config_layouts_and_presets():
    old = PRESETS["7b"].to_hf_dict()
    assert QwenVLConfig.from_hf_dict(old) == PRESETS["7b"]
    assert PRESETS["3b"].text.tie_word_embeddings and PRESETS["3b"].vision.tokens_per_second == 2
    assert PRESETS["72b"].vision.intermediate_size == 3456 and PRESETS["7b"].vision.intermediate_size == 3420
    # a bare 4.x config without tokens_per_second takes the transformers class default (4)
    bare = {k: v for k, v in old.items()}
    bare["vision_config"] = {k: v for k, v in old["vision_config"].items() if k != "tokens_per_second"}
    assert QwenVLConfig.from_hf_dict(bare).vision.tokens_per_second == 4


def test_save_and_reload_round_trip(tiny_ckpt, tmp_path):
    m = load_model(tiny_ckpt)
    save_model(m, tmp_path / "out", max_shard_bytes=100_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    m2 = load_model(tmp_path / "out")
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_random_model_from_config():
    from qwenvl.tiny import tiny_config, token_ids, build_tokenizer
    cfg = tiny_config(token_ids(build_tokenizer()), vocab_size=600)
    m = random_model(cfg)
    assert m.lm_head.weight.shape == (600, 64)
