"""`--lora` writes a peft adapter in transformers' module names: it loads in PeftModel on
transformers 4.51.3 and in `qwenvl.load(base, adapter=...)`, both giving the merged export's logits."""

from __future__ import annotations

import json

import pytest
import torch

import qwenvl
from qwenvl.model.lora import apply_adapter
from qwenvl.model.weights import load_model
from qwenvl.processing import Processor
from qwenvl.train.data import read_records
from qwenvl.train.loop import TrainConfig, train


@pytest.fixture(scope="module")
def lora_run(own_ckpt, sft_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_run")
    s = train(TrainConfig(model=str(own_ckpt), data=str(sft_data), out=str(out), max_steps=3, lr=3e-3,
                          batch_size=2, progress=False, export=True, fps_range=None, lora=True, lora_r=4,
                          lora_alpha=8))
    return s, out


def batch_for(path, sft_data):
    proc = Processor.from_pretrained(path)
    return proc(read_records(sft_data)[0].messages, add_generation_prompt=False)


def test_adapter_files_name_transformers_modules(lora_run):
    s, out = lora_run
    adapter = out / "adapter"
    assert s["adapter"] == str(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert cfg["modules_to_save"] == ["visual.merger"]      # sft trains the merger in full beside the adapters
    from safetensors.torch import load_file
    keys = load_file(str(adapter / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight" in keys
    assert not any("language_model" in k or ".default." in k for k in keys)


def test_peft_on_transformers_gives_the_merged_logits(lora_run, own_ckpt, sft_data):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    _, out = lora_run
    kw = dict(torch_dtype=torch.float32, attn_implementation="eager")
    base = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(own_ckpt, **kw)
    with _no_missing_keys():
        adapted = peft.PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(out / "final", **kw).eval()
    plain = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(own_ckpt, **kw).eval()
    batch = batch_for(own_ckpt, sft_data)
    with torch.no_grad():
        a, m, p = adapted(**batch).logits, merged(**batch).logits, plain(**batch).logits
    assert (a - m).abs().max().item() <= 1e-5
    assert (m - p).abs().max().item() > 1e-3          # the adapter does change the model


class _no_missing_keys:
    """peft warns (does not fail) when adapter keys match no module: make that a failure."""
    def __enter__(self):
        import warnings
        self.cm = warnings.catch_warnings(record=True)
        self.seen = self.cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        bad = [str(w.message) for w in self.seen if "missing" in str(w.message).lower()
               or "unexpected" in str(w.message).lower()]
        assert not bad, bad


def test_qwenvl_load_with_adapter_gives_the_merged_logits(lora_run, own_ckpt, sft_data):
    _, out = lora_run
    batch = batch_for(own_ckpt, sft_data)
    with torch.no_grad():
        a = qwenvl.load(own_ckpt, adapter=out / "adapter").model(**batch).logits
        m = qwenvl.load(out / "final").model(**batch).logits
        p = qwenvl.load(own_ckpt).model(**batch).logits
    assert (a - m).abs().max().item() <= 1e-5
    assert (m - p).abs().max().item() > 1e-3


def test_bad_adapters_are_clear_errors(lora_run, own_ckpt, tmp_path):
    _, out = lora_run
    with pytest.raises(ValueError, match="not a peft adapter: no adapter_config.json"):
        apply_adapter(load_model(own_ckpt), tmp_path)
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    bad = tmp_path / "dora"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    (bad / "adapter_model.safetensors").write_bytes((out / "adapter" / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        apply_adapter(load_model(own_ckpt), bad)
    from safetensors.torch import save_file
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 8)},
              str(bad / "adapter_model.safetensors"))
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has no matching lora_B"):
        apply_adapter(load_model(own_ckpt), bad)
