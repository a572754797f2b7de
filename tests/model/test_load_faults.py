"""Damaged checkpoints: every fault is a one-line CheckpointError (a ValueError) naming the file and
what is wrong, never a raw traceback, a later ZeroDivisionError or a silently wrong model."""

from __future__ import annotations

import json
import random
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import qwenvl
from qwenvl.config import QwenVLConfig
from qwenvl.errors import CheckpointError
from qwenvl.model.weights import load_model, random_model, save_model
from qwenvl.tiny import tiny_config, write_assets

W = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One model.safetensors (no index), with the tokenizer and processor files qwenvl.load needs."""
    d = tmp_path_factory.mktemp("single")
    ids, vocab = write_assets(d)
    save_model(random_model(tiny_config(ids, vocab_size=vocab + 6)), d)
    return d


@pytest.fixture
def ckpt(base, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(base, d)
    return d


def one_line(e: pytest.ExceptionInfo, *parts: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, (p, msg)
    return msg


# ------------------------------------------------------------------------------------- safetensors bytes

def test_zero_byte_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    one_line(e, "model.safetensors", "empty file")


def test_huge_header_length(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    one_line(e, "model.safetensors", f"header length {2**62}")


def _rewrite_header(f, edit):
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_offsets_past_the_end(ckpt):
    f = ckpt / "model.safetensors"
    size = f.stat().st_size
    _rewrite_header(f, lambda h: h[W].__setitem__("data_offsets", [h[W]["data_offsets"][0], size * 2]))
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    one_line(e, "model.safetensors", W, "truncated")


def test_offsets_that_do_not_match_the_shape(ckpt):
    f = ckpt / "model.safetensors"
    _rewrite_header(f, lambda h: h[W].__setitem__("shape", [2, 2]))
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    one_line(e, "model.safetensors", W, "expected")


@pytest.mark.parametrize("seed", range(3))
def test_random_truncations_are_clear_errors(ckpt, seed):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    rng = random.Random(seed)
    # cuts in the length field, the header and the data (the last bytes are the last tensor's)
    cuts = [rng.randrange(1, 8), rng.randrange(8, 8 + n), *(rng.randrange(8 + n, len(data)) for _ in range(6))]
    for cut in cuts:
        f.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as e:
            load_model(ckpt)
        one_line(e, "model.safetensors")


def test_random_header_bytes_are_clear_errors(ckpt):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    rng = random.Random(0)
    outcomes = set()
    for _ in range(40):
        b = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            b[8 + rng.randrange(n)] = rng.randrange(256)
        f.write_bytes(bytes(b))
        try:
            load_model(ckpt)
            outcomes.add("loaded")  # a flipped byte in padding or a digit that keeps the table valid
        except CheckpointError as e:
            assert "\n" not in str(e)
            outcomes.add("refused")
    assert "refused" in outcomes


def test_a_tensor_missing_from_its_shard(tiny_ckpt, tmp_path):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in index["weight_map"].values() if s != shard)
    index["weight_map"][name] = other  # the index says the tensor is in a shard that lacks it
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    one_line(e, other, name, "not in the file")


@pytest.mark.parametrize("index", ["[]", "{", '{"weight_map": []}', '{"weight_map": {"x": "../../etc/passwd"}}'])
def test_bad_index(tiny_ckpt, tmp_path, index):
    d = tmp_path / "c"
    shutil.copytree(tiny_ckpt, d)
    (d / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    one_line(e, "model.safetensors.index.json")


# ------------------------------------------------------------------------------------------ weights

def _set_tensor(ckpt, name, value):
    f = ckpt / "model.safetensors"
    tensors = load_file(f)
    tensors[name] = value(tensors[name])
    save_file(tensors, f, metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int8])
def test_integer_or_bool_weights_are_refused(ckpt, dtype):
    _set_tensor(ckpt, W, lambda t: torch.ones(t.shape, dtype=dtype))
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    one_line(e, "model.safetensors", W, str(dtype).removeprefix("torch."), "floating-point")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_unless_the_check_is_off(ckpt, bad, monkeypatch):
    def poison(t):
        t = t.clone()
        t[1, 2] = bad
        return t
    _set_tensor(ckpt, W, poison)
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    one_line(e, "model.safetensors", W, "NaN or infinite")
    with pytest.raises(CheckpointError):
        qwenvl.load(ckpt)
    m = load_model(ckpt, check_weights=False)
    assert not torch.isfinite(m.state_dict()["language_model.layers.0.self_attn.q_proj.weight"]).all()
    qwenvl.load(ckpt, check_weights=False)
    monkeypatch.setenv("QWENVL_CHECK_WEIGHTS", "0")
    load_model(ckpt)


def test_float16_overflow_is_named(ckpt):
    _set_tensor(ckpt, W, lambda t: t.clone().fill_(1e6))
    load_model(ckpt)  # finite in float32
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt, dtype=torch.float16)
    one_line(e, W, "overflows to infinity in float16")


def test_shape_mismatch_names_the_tensor_and_file(ckpt):
    _set_tensor(ckpt, W, lambda t: torch.zeros(3, 5))
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    one_line(e, "model.safetensors", W, "(3, 5)")


# ------------------------------------------------------------------------------------------ config.json

def _config(ckpt):
    return json.loads((ckpt / "config.json").read_text())


def _write_config(ckpt, cfg):
    (ckpt / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))


def _vision(field, value):
    return lambda c: c["vision_config"].__setitem__(field, value)


def _text(field, value):
    return lambda c: c.__setitem__(field, value)


CONFIG_FAULTS = {
    "a list": ("[]", "must be a JSON object"),
    "empty object": ("{}", "missing required field"),
    "only model_type": ('{"model_type": "qwen2_5_vl"}', "missing required field"),
    "not JSON": ("{\"hidden_size\": 64", "not valid JSON"),
    "not UTF-8": ("\xff\xfe", "not valid JSON"),
    "string for a number": (_text("hidden_size", "64"), "hidden_size must be a positive integer, got '64'"),
    "zero heads": (_text("num_attention_heads", 0), "num_attention_heads must be a positive integer, got 0"),
    "bool for a number": (_text("num_hidden_layers", True), "num_hidden_layers must be a positive integer"),
    "float layers": (_text("num_hidden_layers", 2.5), "num_hidden_layers must be a positive integer"),
    "heads not dividing hidden": (_text("num_attention_heads", 3), "num_attention_heads"),
    "kv heads not dividing": (_text("num_key_value_heads", 3), "num_key_value_heads must be a divisor"),
    "negative eps": (_text("rms_norm_eps", -1e-6), "rms_norm_eps must be a positive finite number"),
    "nan theta": (_text("rope_theta", float("nan")), "rope_theta must be a positive finite number"),
    "no vocab": (_text("vocab_size", None), "missing required field(s) vocab_size"),
    "unknown activation": (_text("hidden_act", "relu6"), "hidden_act must be one of"),
    "image id past vocab": (_text("image_token_id", 10**6), "image_token_id must be a token id below vocab_size"),
    "string image id": (_text("image_token_id", "524"), "image_token_id"),
    "mrope of strings": (lambda c: c["rope_scaling"].__setitem__("mrope_section", ["2", 3, 3]), "mrope_section"),
    "mrope sum": (lambda c: c["rope_scaling"].__setitem__("mrope_section", [2, 2, 2]), "mrope_section"),
    "rope not an object": (_text("rope_scaling", [1]), "rope_scaling / rope_parameters must be a JSON object"),
    "vision not an object": (_text("vision_config", "big"), "vision_config must be a JSON object"),
    "zero patch": (_vision("patch_size", 0), "vision_config.patch_size must be a positive integer, got 0"),
    "zero merge": (_vision("spatial_merge_size", 0), "vision_config.spatial_merge_size"),
    "vision heads not dividing": (_vision("num_heads", 3), "vision_config.hidden_size must be num_heads"),
    "tiny window": (_vision("window_size", 14), "vision_config.window_size"),
    "full-attention block past depth": (_vision("fullatt_block_indexes", [1, 9]), "fullatt_block_indexes"),
    "string depth": (_vision("depth", "4"), "vision_config.depth must be a positive integer, got '4'"),
    "out size mismatch": (_vision("out_hidden_size", 32), "vision_config.out_hidden_size must be the text hidden_size"),
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS)
def test_impossible_configs_are_refused_naming_the_field(ckpt, fault):
    change, expected = CONFIG_FAULTS[fault]
    if isinstance(change, str):
        (ckpt / "config.json").write_bytes(change.encode("latin-1"))
    else:
        cfg = _config(ckpt)
        change(cfg)
        _write_config(ckpt, cfg)
    with pytest.raises(CheckpointError) as e:
        load_model(ckpt)
    one_line(e, str(ckpt / "config.json"), expected)


def test_fuzzed_config_values_load_or_are_refused(ckpt):
    """Any value in any field: the config is read or refused with a CheckpointError, nothing else; a
    config that is read builds a model whose forward pass runs (no ZeroDivisionError later)."""
    cfg = _config(ckpt)
    values = [0, -1, 1, 3, 2.5, "7", "", None, True, [], {}, [1, 2], 1e30, 10**20]
    fields = [("top", k) for k, v in cfg.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    fields += [("vision", k) for k, v in cfg["vision_config"].items() if not isinstance(v, str)]
    rng = random.Random(0)
    read = 0
    for where, k in fields:
        for v in rng.sample(values, 5):
            c = json.loads(json.dumps(cfg))
            (c if where == "top" else c["vision_config"])[k] = v
            try:
                parsed = QwenVLConfig.from_hf_dict(c)
            except CheckpointError as e:
                assert "\n" not in str(e)
                continue
            read += 1
            with torch.device("meta"):
                from qwenvl.model.qwen25vl import QwenVL
                QwenVL(parsed)  # builds: every size is usable
    assert read > 0


def test_patch_size_zero_no_longer_loads_then_divides_by_zero(ckpt):
    cfg = _config(ckpt)
    cfg["vision_config"]["patch_size"] = 0
    _write_config(ckpt, cfg)
    with pytest.raises(CheckpointError, match="patch_size"):
        qwenvl.load(ckpt)


@pytest.mark.parametrize("field,value", [("patch_size", 0), ("patch_size", 16), ("merge_size", "2"),
                                         ("max_pixels", -5)])
def test_preprocessor_config_must_match_the_tower(ckpt, field, value):
    f = ckpt / "preprocessor_config.json"
    cfg = json.loads(f.read_text())
    cfg[field] = value
    f.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        qwenvl.load(ckpt)
    one_line(e, "preprocessor_config.json", field)
