"""The training loop on a tiny checkpoint: packing equivalence, memorisation, DPO, resume, export, LoRA, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from qwenvl.model.weights import load_model
from qwenvl.processing import Processor
from qwenvl.train.data import encode, read_records
from qwenvl.train.loop import TrainConfig, train
from qwenvl.train.pack import collate, plan_rows
from qwenvl.train.step import Policy, run


def cfg(own_ckpt, data, out, **kw) -> TrainConfig:
    base = dict(model=str(own_ckpt), data=str(data), out=str(out), max_steps=4, lr=3e-3, batch_size=2,
                progress=False, export=False, fps_range=None)
    return TrainConfig(**{**base, **kw})


def test_packed_and_unpacked_loss_and_gradients_are_equal(own_ckpt, sft_data):
    model = load_model(own_ckpt)
    proc = Processor.from_pretrained(own_ckpt)
    samples = [encode(proc, r.messages, model.config, r.where) for r in read_records(sft_data)[:6]]
    policy = Policy(model)

    def loss_and_grads(rows):
        model.zero_grad()
        b = collate(rows, pad_id=0)
        logp, _ = run(policy, b)
        loss = -logp.sum() / b.n_supervised  # token-level mean over every supervised token
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    unpacked = plan_rows([[s] for s in samples], 4096, pack=False)
    packed = plan_rows([[s] for s in samples], 4096, pack=True)
    assert len(unpacked) == 6 and len(packed) == 1
    l1, g1 = loss_and_grads(unpacked)
    l2, g2 = loss_and_grads(packed)
    torch.testing.assert_close(l1, l2, rtol=1e-5, atol=1e-6)
    assert g1.keys() == g2.keys()
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-6, msg=n)
    assert g1["visual.blocks.0.attn.qkv.weight"].abs().sum() > 0


def test_loss_falls_on_a_memorisation_set(own_ckpt, sft_data, tmp_path):
    s = train(cfg(own_ckpt, sft_data, tmp_path, max_steps=12, batch_size=8, pack=True, stage="multimodal",
                  lr=1e-2, min_lr_ratio=1.0))
    assert s["losses"][-1] < 0.5 * s["losses"][0]
    assert 0 < s["packing_efficiency"] <= 1
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "tokens_per_s", "grad_norm", "packing_efficiency"} <= lines[0].keys()


def test_stages_freeze_what_they_should(own_ckpt, sft_data, tmp_path):
    s = train(cfg(own_ckpt, sft_data, tmp_path, max_steps=1, stage="vision"))
    assert s["trainable"]["llm"] == 0 and s["trainable"]["vision"] > 0 and s["trainable"]["merger"] > 0
    s = train(cfg(own_ckpt, sft_data, tmp_path / "b", max_steps=1, stage="sft"))
    assert s["trainable"]["vision"] == 0 and s["trainable"]["llm"] > 0


def test_dpo_raises_the_margin(own_ckpt, pref_data, tmp_path):
    train(cfg(own_ckpt, pref_data, tmp_path, stage="dpo", max_steps=6, lr=1e-3, sft_weight=0.1))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    assert abs(rows[0]["margin"]) < 1e-4          # policy == reference at the first step
    assert rows[-1]["margin"] > 0.05 and rows[-1]["accuracy"] == 1.0


def test_kill_and_resume_reproduces_the_losses(own_ckpt, sft_data, tmp_path, monkeypatch):
    kw = dict(max_steps=5, save_every=2, batch_size=3, chunk=4, grad_accum=2, pack=True, max_len=300)
    full = train(cfg(own_ckpt, sft_data, tmp_path / "full", **kw))["losses"]

    import qwenvl.train.loop as loop
    real = loop.Trainer.counts
    calls = {"n": 0}

    def dies_in_step_4(self, batches):  # the process is killed during step 4, after the step-2 save
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, batches)

    monkeypatch.setattr(loop.Trainer, "counts", dies_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(own_ckpt, sft_data, tmp_path / "cut", **kw))
    monkeypatch.setattr(loop.Trainer, "counts", real)
    assert (tmp_path / "cut" / "checkpoints" / "latest").read_text() == "step-000002"
    resumed = train(cfg(own_ckpt, sft_data, tmp_path / "cut", resume=True, **kw))["losses"]
    assert resumed == pytest.approx(full[2:], rel=1e-6)


def test_export_loads_in_transformers_with_the_same_logits(own_ckpt, sft_data, tmp_path):
    s = train(cfg(own_ckpt, sft_data, tmp_path, max_steps=2, export=True))
    final = tmp_path / "final"
    assert s["final"] == str(final)
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "preprocessor_config.json", "chat_template.json"):
        assert (final / f).exists(), f
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        final, torch_dtype=torch.float32, attn_implementation="eager").eval()
    transformers.AutoProcessor.from_pretrained(final)  # the processor files load too
    ours = load_model(final)
    base = load_model(own_ckpt)
    proc = Processor.from_pretrained(final)
    rec = read_records(sft_data)[0]
    batch = proc(rec.messages, add_generation_prompt=False)
    with torch.no_grad():
        a = hf(**batch).logits
        b = ours(**batch).logits
        c = base(**batch).logits
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (b - c).abs().max() > 1e-3  # and it did train


def test_lora_trains_adapters_and_exports_merged(own_ckpt, sft_data, tmp_path):
    s = train(cfg(own_ckpt, sft_data, tmp_path, max_steps=3, lora=True, lora_r=4, export=True))
    base = sum(p.numel() for n, p in load_model(own_ckpt).named_parameters() if not n.startswith("visual."))
    assert 0 < s["trainable"]["llm"] < base / 4
    assert s["losses"][-1] < s["losses"][0]
    merged = load_model(tmp_path / "final")  # plain keys: adapters merged into the weights
    ref = load_model(own_ckpt)
    w = "language_model.layers.0.self_attn.q_proj.weight"
    assert (merged.state_dict()[w] - ref.state_dict()[w]).abs().max() > 0


def test_cli(own_ckpt, sft_data, tmp_path):
    from qwenvl.cli.main import main
    rc = main(["train", "--stage", "sft", "--model", str(own_ckpt), "--data", str(sft_data), "--out", str(tmp_path),
               "--max-steps", "2", "--lr", "1e-3", "--pack", "--max-len", "512", "--batch-size", "2",
               "--eval-data", str(sft_data), "--eval-every", "1", "--no-progress"])
    assert rc == 0
    assert (tmp_path / "final" / "model.safetensors").exists()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "eval_loss" in rows[0]
