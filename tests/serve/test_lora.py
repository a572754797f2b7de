"""`serve --lora NAME=PATH`: adapters served by model name (the base with the LoRA merged), as vLLM does."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

import qwenvl
from qwenvl.cli.serve import lora_args
from serve_util import running_server

TEXT = [{"role": "user", "content": "Hello there"}]


def write_adapter(path, base, seed=0, scale=3.0):
    """A peft LoRA directory (transformers module names) with large random factors on two layers."""
    from safetensors.torch import save_file

    cfg = json.loads((base / "config.json").read_text())
    hidden = cfg.get("hidden_size") or cfg["text_config"]["hidden_size"]
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for proj in ("q_proj", "o_proj"):
        key = f"base_model.model.model.layers.0.self_attn.{proj}"
        out_dim = hidden
        tensors[f"{key}.lora_A.weight"] = torch.randn(2, hidden, generator=g) * scale
        tensors[f"{key}.lora_B.weight"] = torch.randn(out_dim, 2, generator=g) * scale
    path.mkdir()
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj", "o_proj"],
        "base_model_name_or_path": str(base), "bias": "none"}))
    return path


def test_adapters_are_served_by_model_name(pipe, tiny_ckpt, tmp_path):
    path = write_adapter(tmp_path / "a1", tiny_ckpt)
    tuned = qwenvl.load(tiny_ckpt, dtype="float32", adapter=path)
    want_base = pipe.chat(TEXT, max_new_tokens=6, temperature=0).text
    want_tuned = tuned.chat(TEXT, max_new_tokens=6, temperature=0).text
    assert want_base != want_tuned   # the adapter changes the answer
    with running_server(pipe, {"tuned": tuned}, model_name="base") as (url, _, _):
        cards = httpx.get(f"{url}/v1/models").json()["data"]
        assert [c["id"] for c in cards] == ["base", "tuned"] and cards[1]["parent"] == "base"
        assert cards[1]["root"] == str(path) and cards[0]["root"] == str(tiny_ckpt)
        assert httpx.get(f"{url}/v1/models/tuned").json()["id"] == "tuned"

        def ask(model):
            r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                           json={"model": model, "messages": TEXT, "max_tokens": 6, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()

        a, b = ask("tuned"), ask("base")
        assert a["model"] == "tuned" and a["choices"][0]["message"]["content"] == want_tuned
        assert b["model"] == "base" and b["choices"][0]["message"]["content"] == want_base
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "tuned", "messages": TEXT, "max_tokens": 4, "temperature": 0, "stream": True})
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert {c["model"] for c in chunks} == {"tuned"}
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == \
            tuned.chat(TEXT, max_new_tokens=4, temperature=0).text


def test_lora_flag_is_checked_before_loading(tiny_ckpt, tmp_path):
    path = write_adapter(tmp_path / "a", tiny_ckpt)
    assert lora_args([f"x={path}", f"y={path}"], "base") == {"x": str(path), "y": str(path)}
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        lora_args([str(path)], "base")
    with pytest.raises(ValueError, match="'base' is already served"):
        lora_args([f"base={path}"], "base")
    with pytest.raises(ValueError, match="no adapter_config.json"):
        lora_args([f"x={tmp_path}"], "base")
