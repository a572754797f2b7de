"""The reference model's own shortcuts compute what the plain definition computes.

- window attention batched by window length == one attention call per window (a Python loop);
- mixed precision (bf16 weights, float32 activations) == the same bf16 weights upcast to a float32 model,
  and the compute-dtype policy that picks it;
- memory-mapped loading == safetensors' reader; released pages leave memory.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from qwenvl.model import layers, vision
from qwenvl.model.vision import Segments, segment_attention, vision_layout
from qwenvl.tiny import build_tokenizer, tiny_config, token_ids


@pytest.fixture(scope="module")
def cfg():
    tok = build_tokenizer()
    return tiny_config(token_ids(tok), vocab_size=tok.get_vocab_size() + 6)


def per_window_attention(q, k, v, lengths):
    out, start = [], 0
    for n in lengths:
        s = slice(start, start + n)
        o = F.scaled_dot_product_attention(q[s].transpose(0, 1), k[s].transpose(0, 1), v[s].transpose(0, 1))
        out.append(o.transpose(0, 1))
        start += n
    return torch.cat(out)


@pytest.mark.parametrize("max_runs", [64, 0])  # in place per run of equal windows; gathered per length
@pytest.mark.parametrize("grid", [(1, 10, 14), (2, 16, 22), (1, 36, 8)])
def test_batched_windows_equal_per_window_loop(grid, max_runs, monkeypatch):
    monkeypatch.setattr(vision, "MAX_RUNS", max_runs)
    layout = vision_layout((grid,), 2, 4)
    lengths = []
    for g in layout.windows.groups:  # reconstruct the window lengths in sequence order
        lengths += [(int(row[0]), g.shape[1]) for row in g]
    lengths = [n for _, n in sorted(lengths)]
    N = grid[0] * grid[1] * grid[2]
    assert sum(lengths) == N and len(set(lengths)) > 1  # edge windows of other sizes are covered
    q, k, v = (torch.randn(N, 4, 16) for _ in range(3))
    ref = per_window_attention(q, k, v, lengths)
    assert torch.allclose(segment_attention(q, k, v, layout.windows), ref, atol=1e-5)
    frames = per_window_attention(q, k, v, [grid[1] * grid[2]] * grid[0])
    assert torch.allclose(segment_attention(q, k, v, layout.frames), frames, atol=1e-5)


def test_segments_from_lengths():
    s = Segments.from_lengths([3, 2, 3])
    assert [g.tolist() for g in s.groups] == [[[0, 1, 2], [5, 6, 7]], [[3, 4]]]
    assert s.runs == ((0, 1, 3), (3, 1, 2), (5, 1, 3))
    assert Segments.from_lengths([4, 4, 4, 2, 4, 4]).runs == ((0, 3, 4), (12, 1, 2), (14, 2, 4))


def test_mixed_precision_model_equals_float32_copy(cfg, monkeypatch):
    """Force the CPU-without-bf16 policy: a bf16 model computing in float32 == its float32 copy (tower exactly,
    decoder up to the bf16 KV cache and the bf16 rounding of the tower's output)."""
    from qwenvl.model.weights import random_model
    import qwenvl.model.text as text
    import qwenvl.model.vision as vision
    monkeypatch.setattr(text, "compute_dtype", lambda dtype, device: torch.float32)
    monkeypatch.setattr(vision, "compute_dtype", lambda dtype, device: torch.float32)
    m16 = random_model(cfg, torch.bfloat16, seed=3)
    m32 = copy.deepcopy(m16).float()
    grid = torch.tensor([[1, 8, 12]])
    px = torch.randn(96, 1176)
    with torch.no_grad():
        a, b = m16.visual(px, grid).float(), m32.visual(px, grid)
        assert float((a - b).norm() / b.norm()) < 1e-2  # the output is returned in bf16
        ids = torch.randint(0, 500, (1, 20))
        la, lb = m16(ids).logits, m32(ids).logits
    assert la.dtype == torch.float32
    assert float((la - lb).norm() / lb.norm()) < 1e-5


@pytest.mark.parametrize("native", [True, False])
def test_compute_dtype_policy(native, monkeypatch):
    """Half-precision weights compute in float32 exactly on a CPU without half-precision matrix instructions,
    and the decoder's activations follow: a bf16 model's hidden states come out in that dtype."""
    from qwenvl.model.weights import random_model
    monkeypatch.setattr(layers, "_cpu_has_native", lambda dtype: native)
    half = torch.bfloat16 if native else torch.float32
    assert layers.compute_dtype(torch.bfloat16, "cpu") == half
    assert layers.compute_dtype(torch.float16, torch.device("cpu")) == (torch.float16 if native else torch.float32)
    assert layers.compute_dtype(torch.float32, "cpu") == torch.float32
    assert layers.compute_dtype(torch.bfloat16, "meta") == torch.bfloat16  # other devices: storage = compute
    tok_cfg = tiny_config(token_ids(build_tokenizer()), vocab_size=600)
    model = random_model(tok_cfg, torch.bfloat16, seed=0)
    with torch.no_grad():
        hidden = model.language_model(model.language_model.embed_tokens(torch.tensor([[1, 2, 3]])),
                                      torch.arange(3).view(1, 1, 3).expand(3, 1, 3))
    assert hidden.dtype == half


def test_mapped_loading_equals_safetensors(cfg, tmp_path):
    from safetensors.torch import load_file
    from qwenvl.model.mapped import MappedSafetensors
    from qwenvl.model.weights import random_model, save_model
    save_model(random_model(cfg, torch.bfloat16), tmp_path, max_shard_bytes=50_000)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) > 1
    for f in files:
        ref = load_file(f)
        mapped = MappedSafetensors(f)
        assert set(mapped.keys()) == set(ref)
        for k, t in ref.items():
            assert torch.equal(mapped.get_tensor(k), t), k


def rss_file_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise RuntimeError("no RssFile in /proc/self/status")


def test_release_pages_of_a_mapped_tensor(tmp_path):
    """A released tensor's pages leave memory; its neighbours in the same file keep their values."""
    from safetensors.torch import save_file
    from qwenvl.model.mapped import MappedSafetensors, release_pages
    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(3, 1000, generator=g), "big": torch.randn(2048, 1024, generator=g),
               "b": torch.randn(7, 333, generator=g)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    mapped = MappedSafetensors(tmp_path / "w.safetensors")
    views = {k: mapped.get_tensor(k) for k in tensors}
    assert all(torch.equal(views[k], t) for k, t in tensors.items())  # touches every page
    before = rss_file_kb()
    release_pages(views["big"])
    freed = before - rss_file_kb()
    assert freed * 1024 > 0.9 * tensors["big"].numel() * 4
    assert torch.equal(views["a"], tensors["a"]) and torch.equal(views["b"], tensors["b"])
    release_pages(torch.randn(100))  # not mapped: left alone
