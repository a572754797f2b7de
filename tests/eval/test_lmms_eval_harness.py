"""lmms-eval itself (the `lmms` extra) runs our adapter on a tiny local task: found through the
`lmms_eval.models` entry point by the `lmms-eval` command line, in the chat layout (0.7's default) and
the simple one (--force_simple). Skipped when lmms-eval is not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# not imported here: lmms-eval sets process-wide state on import (PIL's LOAD_TRUNCATED_IMAGES, loggers)
# that other tests would then run under; it runs in its own process below
if importlib.util.find_spec("lmms_eval") is None:
    pytest.skip("lmms-eval is not installed (the `lmms` extra)", allow_module_level=True)

ROOT = Path(__file__).parents[2]

UTILS = '''
from PIL import Image

def doc_to_visual(doc):
    if doc["video"]:
        return [doc["video"]]
    return [Image.open(doc["image"]).convert("RGB")]

def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]

def doc_to_messages(doc, lmms_eval_specific_kwargs=None):
    if doc["video"]:   # a clip window, as lmms-eval's temporal tasks give one
        visual = {"type": "video", "url": doc["video"], "start_time": doc["start"], "end_time": doc["end"]}
    else:
        visual = {"type": "image", "url": doc["image"]}
    return [{"role": "user", "content": [visual, {"type": "text", "text": doc["question"]}]}]
'''

TASK = '''
task: qwenvl_tiny
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_messages: !function utils.doc_to_messages
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
'''


def write_video(path: Path, n: int, fps: int, side: int) -> Path:
    """An mpeg4 clip whose frame k is filled with grey level 15 * k."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = side, side, "yuv420p"
        for k in range(n):
            frame = np.full((side, side, 3), 15 * k, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmms_task")
    rows = []
    for i in range(2):
        img = d / f"img{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(img)
        rows.append({"id": i, "image": str(img), "video": "", "start": None, "end": None,
                     "question": f"What is in image {i}?", "answer": "A"})
    # 2 s of 8 fps frames, each frame's colours its index; the chat layout asks about 0.5 s .. 1.5 s
    video = write_video(d / "clip.mp4", 16, fps=8, side=56)
    rows.append({"id": 2, "image": "", "video": str(video), "start": 0.5, "end": 1.5,
                 "question": "What happens in the clip?", "answer": "A"})
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "utils.py").write_text(UTILS)
    (d / "qwenvl_tiny.yaml").write_text(TASK.format(data=d / "data.jsonl"))
    # what `pip install qwenvl` declares: the lmms_eval.models entry point (pyproject.toml), here as a
    # dist-info on the path so that the test does not depend on how qwenvl was installed
    ep = d / "site" / "qwenvl_entry-0.0.dist-info"
    ep.mkdir(parents=True)
    (ep / "METADATA").write_text("Metadata-Version: 2.1\nName: qwenvl-entry\nVersion: 0.0\n")
    import tomllib
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["lmms_eval.models"]
    (ep / "entry_points.txt").write_text("[lmms_eval.models]\n" + "".join(f"{k} = {v}\n" for k, v in target.items()))
    return d


@pytest.mark.parametrize("force_simple", [False, True])
def test_lmms_eval_cli_runs_the_adapter(task_dir, own_ckpt, tmp_path, force_simple):
    import qwenvl

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(task_dir / "site"), str(ROOT / "src"),
                                                         os.environ.get("PYTHONPATH", "")]),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "qwenvl",
           "--model_args", f"pretrained={own_ckpt},dtype=float32,device=cpu,max_new_tokens=3",
           "--tasks", "qwenvl_tiny", "--include_path", str(task_dir), "--batch_size", "1",
           "--output_path", str(out), "--log_samples"] + (["--force_simple"] if force_simple else [])
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # (lmms-eval logs a failed evaluation and still exits 0: the samples file is the proof)
    samples = [json.loads(line) for f in out.rglob("*samples_qwenvl_tiny.jsonl") for line in f.read_text().splitlines()]
    assert len(samples) == 3, list(out.rglob("*"))
    # the answers are what our pipeline gives for the same conversation (greedy, 3 tokens); the chat
    # layout's video keeps lmms-eval's start_time/end_time as our video_start/video_end, the simple
    # layout has no window (doc_to_visual gives the path only)
    pipe = qwenvl.load(own_ckpt, dtype="float32")
    by_id = {s["doc_id"]: s for s in samples}
    rows = [json.loads(x) for x in (task_dir / "data.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        if row["video"]:
            visual = {"type": "video", "video": row["video"]}
            if not force_simple:
                visual.update(video_start=row["start"], video_end=row["end"])
        else:
            visual = {"type": "image", "image": Image.open(row["image"]).convert("RGB") if force_simple else row["image"]}
        want = pipe.chat([{"role": "user", "content": [visual, {"type": "text", "text": row["question"]}]}],
                         max_new_tokens=3, temperature=0).text
        got = by_id[i]["filtered_resps"]
        got = got[0] if isinstance(got, list) else got
        assert got == want, (i, got, want)
    assert "qwenvl_tiny" in r.stdout and "exact_match" in r.stdout   # lmms-eval's results table
