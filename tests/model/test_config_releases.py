"""config.json as each transformers release writes it. The files in hf_configs/ were written by those
releases (`AutoConfig.from_pretrained(d).save_pretrained(d2)` on one tiny 4.51.3 config, transformers
4.51.3 / 4.52.4 / 4.56.2 / 4.57.6 / 5.24.0): 4.52-4.56 add a nested text_config holding
`"image_token_id": null, "video_token_id": null`; 4.57 drops those; 5.x keeps the text fields only in
text_config with rope_theta inside rope_parameters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import qwenvl
from qwenvl.config import QwenVLConfig

HERE = Path(__file__).parent / "hf_configs"
RELEASES = ["4.51.3", "4.52.4", "4.56.2", "4.57.6", "5.24.0"]


def release_config(version: str) -> dict:
    return json.loads((HERE / f"{version}.json").read_text())


def test_the_files_have_each_release_layout():
    nested_nulls = {v: release_config(v).get("text_config", {}).get("image_token_id", "absent") for v in RELEASES}
    assert nested_nulls == {"4.51.3": "absent", "4.52.4": None, "4.56.2": None, "4.57.6": "absent",
                            "5.24.0": "absent"}
    assert "hidden_size" not in release_config("5.24.0")
    assert "rope_theta" in release_config("5.24.0")["text_config"]["rope_parameters"]


@pytest.mark.parametrize("version", RELEASES[1:])
def test_every_release_reads_as_4_51(version):
    ref = QwenVLConfig.from_hf_dict(release_config("4.51.3"))
    got = QwenVLConfig.from_hf_dict(release_config(version))
    assert got == ref
    assert (got.image_token_id, got.video_token_id) == (524, 525)


def test_nulls_never_hide_a_value_and_the_nested_text_config_wins():
    d = release_config("4.52.4")
    d["text_config"]["num_hidden_layers"] = 3  # 4.52+: the text model is built from text_config
    d["text_config"]["eos_token_id"] = None
    d["vision_config"]["tokens_per_second"] = None
    c = QwenVLConfig.from_hf_dict(d)
    assert c.text.num_hidden_layers == 3 and c.eos_token_id == 514 and c.vision.tokens_per_second == 4


def _reshaped(ours: dict, version: str) -> dict:
    """Our checkpoint's config.json in `version`'s layout: the release file with our values put where
    that release keeps them (the release files and our tiny checkpoint differ only in vocab_size and the stored dtype)."""
    out = release_config(version)
    for d in (out, out.get("text_config", {})):
        if "vocab_size" in d:
            d["vocab_size"] = ours["vocab_size"]
    return out


@pytest.mark.parametrize("version", RELEASES)
def test_a_checkpoint_in_each_layout_gives_the_same_logits(tiny_ckpt, tmp_path, version):
    ours = json.loads((tiny_ckpt / "config.json").read_text())
    ref = release_config("4.51.3")
    same = {k for k in ours if k not in ("transformers_version", "vocab_size", "torch_dtype")}
    assert {k: ours[k] for k in same} == {k: ref[k] for k in same}  # so _reshaped changes the layout only

    d = tmp_path / version
    shutil.copytree(tiny_ckpt, d)
    (d / "config.json").write_text(json.dumps(_reshaped(ours, version)))
    base, other = qwenvl.load(tiny_ckpt), qwenvl.load(d)
    assert other.model.config == base.model.config
    ids = torch.tensor([[5, 9, 11, 40, 7]])
    with torch.no_grad():
        torch.testing.assert_close(other.model(input_ids=ids).logits, base.model(input_ids=ids).logits,
                                   rtol=0, atol=0)
    # and a text chat, which failed on 4.52-4.56 layouts ('bool' object has no attribute 'sum')
    r = other.chat([{"role": "user", "content": "Hi"}], max_new_tokens=3, temperature=0)
    assert r.text == base.chat([{"role": "user", "content": "Hi"}], max_new_tokens=3, temperature=0).text
