"""Records, labels, packing and the stream: what the model is trained on."""

from __future__ import annotations


import pytest
import torch

from qwenvl.train.data import BadRecord, DataOptions, Stream, encode, parse_record, read_records
from qwenvl.train.pack import IGNORE, best_fit_decreasing, collate, plan_rows

from train_util import write_images, write_jsonl


def supervised_text(sample, tok) -> str:
    labels = torch.cat([sample.targets.new_full((1,), IGNORE), sample.targets[:-1]])  # unshift
    return tok.decode(sample.input_ids[labels != IGNORE].tolist())


def test_labels_cover_exactly_the_assistant_replies(proc, config, tmp_path):
    images = write_images(tmp_path / "images", 1)
    rec = parse_record({"image": images[0], "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a red square"},
        {"from": "human", "value": "And the colour?"}, {"from": "gpt", "value": "blue, green"}]}, tmp_path, "x:1")
    s = encode(proc, rec.messages, config, rec.where)
    assert supervised_text(s, proc.tokenizer) == "a red square<|im_end|>\nblue, green<|im_end|>\n"
    # the ids are the inference processor's, without a generation prompt; media expanded
    ref = proc(rec.messages, add_generation_prompt=False)
    assert torch.equal(s.input_ids, ref["input_ids"][0])
    assert int((s.input_ids == config.image_token_id).sum()) == int(ref["image_grid_thw"].prod()) // 4
    # the last position has nothing to predict; positions are this sample's own
    assert s.targets[-1] == IGNORE and s.positions.shape == (3, len(s)) and s.positions[0, 0] == 0


def test_both_formats_and_relative_paths_give_the_same_sample(proc, config, tmp_path):
    images = write_images(tmp_path / "images", 2)
    qwen = {"image": images, "conversations": [{"from": "human", "value": "<image><image>Compare."},
                                                {"from": "gpt", "value": "left"}]}
    msgs = {"messages": [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / images[0])},
                                                      {"type": "image", "image": images[1]},
                                                      {"type": "text", "text": "Compare."}]},
                         {"role": "assistant", "content": "left"}]}
    a, b = (encode(proc, parse_record(r, tmp_path, "x:1").messages, config) for r in (qwen, msgs))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.pixel_values, b.pixel_values)


def test_bad_records_are_reported_with_file_and_line(tmp_path, capsys):
    images = write_images(tmp_path / "images", 1)
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    ok = {"image": images[0], "conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "a"}]}
    path = write_jsonl(tmp_path / "d.jsonl", [
        ok,
        {**ok, "image": "images/missing.png"},                                   # line 2: missing file
        {**ok, "image": [images[0], images[0]]},                                  # line 3: 2 files, 1 tag
        {"conversations": [{"from": "human", "value": "hi"}]},                     # line 4: nothing to learn
    ])
    with open(path, "a") as f:
        f.write("{not json\n")                                                    # line 5
    records = read_records(path, on_bad="skip")
    assert len(records) == 1
    err = capsys.readouterr().err
    for line, what in [(2, "not found"), (3, "tag"), (4, "assistant"), (5, "JSON")]:
        assert f"d.jsonl:{line}:" in err and what in err
    with pytest.raises(BadRecord, match=r"d.jsonl:2: media file not found"):
        read_records(path, on_bad="fail")


def test_undecodable_media_is_a_bad_record(proc, config, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"image": "broken.png", "conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "a"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "yes"}]}])
    records = read_records(path)
    stream = Stream(records, proc, config, DataOptions(batch_size=1, fps_range=None))
    for _ in range(3):  # the bad one is skipped every epoch, never silently
        assert stream.next().n_samples == 1
    assert "d.jsonl:1: cannot process" in capsys.readouterr().err
    with pytest.raises(BadRecord, match="d.jsonl:1"):
        Stream(records, proc, config, DataOptions(batch_size=2, on_bad="fail")).next()


def test_best_fit_decreasing():
    lengths = [7, 5, 4, 3, 3, 2, 2, 1]
    bins = best_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 3  # 27 tokens: the optimum for capacity 10


def test_collate_packs_and_masks_blocks(proc, config, sft_data):
    records = read_records(sft_data)
    samples = [encode(proc, r.messages, config, r.where) for r in records[:4]]
    rows = plan_rows([[s] for s in samples], max_len=4096, pack=True)
    assert len(rows) == 1
    b = collate(rows, pad_id=0)
    from qwenvl.train.pack import block_causal_mask
    m = block_causal_mask(b.segments)[0, 0]
    n0 = len(rows[0][0])
    assert m[n0, n0] and not m[n0, n0 - 1]          # the second sample cannot see the first
    assert b.positions[0, 0, n0] == 0                # and its positions restart
    assert b.n_supervised == sum(s.n_supervised for s in samples)


def test_video_records_get_a_drawn_fps(proc, config, tmp_path):
    av = pytest.importorskip("av")
    import numpy as np
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=8)
        s.width, s.height, s.pix_fmt = 56, 56, "yuv420p"
        for i in range(32):
            frame = av.VideoFrame.from_ndarray(np.full((56, 56, 3), i * 7, dtype=np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode())
    records = read_records(write_jsonl(tmp_path / "v.jsonl", [
        {"video": "clip.mp4", "conversations": [{"from": "human", "value": "<video>What happens?"},
                                                 {"from": "gpt", "value": "it brightens"}]}] * 6))
    stream = Stream(records, proc, config, DataOptions(batch_size=1, fps_range=(0.5, 4.0), seed=1))
    seen = set()
    for _ in range(6):
        b = stream.next()
        t = int(b.grid_thw[0, 0])
        assert int((b.input_ids == config.video_token_id).sum()) == int(b.grid_thw.prod()) // 4
        seen.add(t)
    assert len(seen) > 1  # varied temporal density
