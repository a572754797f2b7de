"""The native decoding step (fast/native_decode.py, fast/cpu/decode.c) computes what the model's own layers
compute, on every weight format it reads, and leaves everything else to them."""

from __future__ import annotations

import copy

import pytest
import torch

from qwenvl.engine.engine import Engine, Sequence, generate
from qwenvl.engine.sampling import SamplingParams
from qwenvl.fast import cpu as kernels
from qwenvl.fast import native_decode, prepare
from qwenvl.fast.native_decode import NativeDecoder
from qwenvl.model import layers, text
from qwenvl.model.weights import random_model
from qwenvl.tiny import build_tokenizer, tiny_config, token_ids

pytestmark = pytest.mark.skipif(not kernels.available(), reason="native kernels not buildable here")


@pytest.fixture(autouse=True)
def float32_compute(monkeypatch):
    """bf16 weights under float32 activations, as on a CPU without bf16 matrix instructions (this one or not)."""
    for mod in (layers, text, native_decode):
        monkeypatch.setattr(mod, "compute_dtype", lambda dtype, device: torch.float32)


def tiny_model(weights: str = "bf16", seed: int = 5, fuse: bool = True):
    tok = build_tokenizer()
    model = random_model(tiny_config(token_ids(tok), vocab_size=tok.get_vocab_size() + 6), torch.bfloat16, seed=seed)
    with torch.no_grad():  # random biases and norms: a zero bias or a unit norm would hide a wrong one
        for name, p in model.language_model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p, dtype=torch.float32) * 0.1 + (1 if "norm" in name else 0))
    if fuse:  # as qwenvl.load prepares it
        prepare(model, {"int8": "int8", "int8-row-major": "int8", "int4": "int4"}.get(weights))
    return model


def prefill(model, cache, lengths: dict[int, int], seed=0):
    """Prompts of the given lengths into the given cache rows; returns their last hidden states."""
    g = torch.Generator().manual_seed(seed)
    lm = model.language_model
    with torch.inference_mode():
        for row, L in lengths.items():
            ids = torch.randint(0, 400, (1, L), generator=g)
            causal = torch.ones(L, L, dtype=torch.bool).tril()[None, None]
            lm(lm.embed_tokens(ids), torch.arange(L).expand(3, 1, L), causal, cache, torch.tensor([row]))


def one_step(decoder, model, cache, rows: list[int], seed=1):
    g = torch.Generator().manual_seed(seed)
    lm = model.language_model
    with torch.inference_mode():
        r = torch.tensor(rows)
        lengths = cache.lengths[r]
        S = int(lengths.max()) + 1
        mask = (torch.arange(S)[None] <= lengths[:, None])[:, None, None, :]
        ids = torch.randint(0, 400, (len(rows), 1), generator=g)
        positions = (lengths + 7).view(1, -1, 1).expand(3, -1, 1)  # some MRoPE delta
        return decoder(lm.embed_tokens(ids), positions, mask, cache, r)


@pytest.mark.parametrize("weights", ["bf16", "int8", "int8-row-major", "int4"])
@pytest.mark.parametrize("rows", [[0, 2], [1], [0, 1, 2]])
def test_a_native_step_equals_the_model_step(weights, rows, monkeypatch):
    """Rows of different lengths, not consecutive or consecutive: same hidden states, same keys and values
    written at the same places, same lengths; int8 weights packed or row-major; int4 weights."""
    if weights == "int8-row-major":
        monkeypatch.setattr(kernels, "packable", lambda q: False)
    model = tiny_model(weights)
    if weights.startswith("int8"):
        qkv = model.language_model.layers[0].self_attn.qkv_proj
        assert qkv.kernel_weight.dim() == (2 if weights == "int8-row-major" else 4)
    cache = model.new_cache(3, 40)
    prefill(model, cache, {0: 9, 1: 5, 2: 13})
    ref_cache = copy.deepcopy(cache)
    calls = []
    monkeypatch.setattr(native_decode, "decode_layers", lambda *a, f=native_decode.decode_layers: calls.append(1) or f(*a))
    native = one_step(NativeDecoder(model.language_model), model, cache, rows)
    assert calls
    ref = one_step(model.language_model, model, ref_cache, rows)
    torch.testing.assert_close(native, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(cache.lengths, ref_cache.lengths)
    torch.testing.assert_close(cache.k, ref_cache.k)
    torch.testing.assert_close(cache.v, ref_cache.v)


def test_engine_greedy_tokens_are_the_same_with_and_without_it():
    """Two prompts decoding together through the engine, 8 steps: the same tokens as the model's layers."""
    model = tiny_model("bf16", seed=7)

    def run(native: bool):
        engine = Engine(model, max_batch=2, max_len=64)
        if not native:
            engine.decoder = model.language_model
        seqs = [Sequence(prompt_ids=list(range(10 + i, 20 + 3 * i)),
                         params=SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)) for i in range(2)]
        for _ in generate(engine, seqs):
            pass
        assert isinstance(engine.decoder, NativeDecoder) == native
        return [s.output_ids for s in seqs]

    assert run(True) == run(False)


@pytest.mark.parametrize("case", ["unfused", "float32 weights", "prefill"])
def test_everything_else_goes_to_the_model(case, monkeypatch):
    model = tiny_model("bf16", fuse=case != "unfused")
    if case == "float32 weights":
        model.float()
    decoder = NativeDecoder(model.language_model)
    assert (decoder.specs is None) == (case != "prefill")
    monkeypatch.setattr(native_decode, "decode_layers", lambda *a: pytest.fail("native step on an unsupported input"))
    cache = model.new_cache(1, 40)
    ref_cache = copy.deepcopy(cache)
    if case == "prefill":
        prefill(model, cache, {0: 6}, seed=3)
        with torch.inference_mode():
            lm = model.language_model
            ids = torch.randint(0, 400, (1, 6), generator=torch.Generator().manual_seed(3))
            causal = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
            decoder(lm.embed_tokens(ids), torch.arange(6).expand(3, 1, 6), causal, ref_cache, torch.tensor([0]))
        torch.testing.assert_close(cache.k, ref_cache.k)
        return
    prefill(model, cache, {0: 6})
    prefill(model, ref_cache, {0: 6})
    torch.testing.assert_close(one_step(decoder, model, cache, [0]), one_step(model.language_model, model,
                                                                              ref_cache, [0]))


def test_a_full_cache_is_an_error_not_a_write_past_it():
    model = tiny_model("bf16")
    cache = model.new_cache(1, 8)
    prefill(model, cache, {0: 8})
    before = cache.k.clone()
    with pytest.raises(ValueError, match="KV cache full"):
        one_step(NativeDecoder(model.language_model), model, cache, [0])
    assert torch.equal(cache.k, before) and int(cache.lengths[0]) == 8

