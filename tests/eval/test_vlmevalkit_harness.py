"""VLMEvalKit itself (`ms-vlmeval`) runs our model class on a tiny local dataset: its runner (vlmeval/run.py,
started through `python -m qwenvl.eval.adapters.vlmevalkit`, which registers qwenvl in supported_VLM
first) finds `$LMUData/<name>.tsv`, takes it as a custom MCQ dataset, dumps the base64 images, builds the
prompts, calls our generate, writes the prediction file and scores it with exact matching.
Skipped when vlmeval cannot be imported.

VLMEvalKit imports torchvision at import time. Where the main environment has none that works (a CPU
torch with only CUDA torchvision builds reachable), QWENVL_VLMEVAL_PYTHONPATH names extra PYTHONPATH
entries for VLMEvalKit's process only (docs/eval.md says how that torchvision was installed here)."""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# not imported here: vlmeval changes process-wide state on import (it turns off TLS certificate checks
# for the whole process, sets up logging) that other tests would then run under
if importlib.util.find_spec("vlmeval") is None:
    pytest.skip("VLMEvalKit is not installed (pip install ms-vlmeval, see docs/eval.md)", allow_module_level=True)

ROOT = Path(__file__).parents[2]
DATASET = "qwenvl_tiny_mcq"
QUESTIONS = ["Which colour fills most of the picture?", "What shape is drawn?"]
OPTIONS = [("red", "blue"), ("circle", "square")]


def harness_env(extra: dict | None = None) -> dict:
    paths = [os.environ.get("QWENVL_VLMEVAL_PYTHONPATH", ""), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "HF_HUB_OFFLINE": "1",
            **(extra or {})}


@pytest.fixture(scope="module")
def vlmeval_importable():
    probe = subprocess.run([sys.executable, "-c", "import vlmeval.config, vlmeval.dataset, vlmeval.run"],
                           env=harness_env(), capture_output=True, text=True, timeout=600)
    if probe.returncode != 0:
        pytest.skip("vlmeval is installed but does not import: " + probe.stderr.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def lmudata(tmp_path_factory):
    """A custom MCQ dataset as VLMEvalKit reads one: $LMUData/<name>.tsv with index, question, A, B,
    answer and a base64 image per row."""
    d = tmp_path_factory.mktemp("LMUData")
    with open(d / f"{DATASET}.tsv", "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image", "question", "A", "B", "answer", "category"])
        for i, (q, (a, b)) in enumerate(zip(QUESTIONS, OPTIONS)):
            buf = io.BytesIO()
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(buf, "PNG")
            w.writerow([i, base64.b64encode(buf.getvalue()).decode(), q, a, b, "A", "tiny"])
    return d


def read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.parametrize("how", ["args", "config"])
def test_vlmevalkit_runner_runs_the_model(vlmeval_importable, lmudata, own_ckpt, tmp_path, how):
    import qwenvl

    work = tmp_path / "outputs"
    env = harness_env({"LMUData": str(lmudata), "PRED_FORMAT": "tsv", "EVAL_FORMAT": "csv"})
    cmd = [sys.executable, "-m", "qwenvl.eval.adapters.vlmevalkit"]
    if how == "args":    # --model-args for our class, the rest is run.py's
        cmd += ["--model-args", f"model_path={own_ckpt},dtype=float32,device=cpu,max_new_tokens=3",
                "--model", "qwenvl", "--data", DATASET]
    else:                # run.py's --config file: a model entry without "class" is supported_VLM[name](**kwargs)
        config = {"model": {"qwenvl": {"model_path": str(own_ckpt), "dtype": "float32", "device": "cpu",
                                       "max_new_tokens": 3}},
                  "data": {DATASET: {"class": "CustomMCQDataset", "dataset": DATASET}}}
        (tmp_path / "eval.json").write_text(json.dumps(config))
        cmd += ["--config", str(tmp_path / "eval.json")]
    cmd += ["--work-dir", str(work), "--judge", "exact_matching"]
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    log = r.stdout[-3000:] + r.stderr[-3000:]
    assert r.returncode == 0, log
    # (run.py logs a failed model x dataset combination and still exits 0: the files are the proof)
    pred = work / "qwenvl" / f"qwenvl_{DATASET}.tsv"
    assert pred.exists(), (log, sorted(str(p) for p in work.rglob("*")))
    rows = {int(row["index"]): row for row in read_tsv(pred)}
    assert sorted(rows) == [0, 1]
    # the predictions are what our pipeline answers for the message VLMEvalKit builds: the image it
    # dumped from the base64 column, then its MCQ prompt (ImageMCQDataset.build_prompt's layout)
    pipe = qwenvl.load(own_ckpt, dtype="float32")
    for i, (q, (a, b)) in enumerate(zip(QUESTIONS, OPTIONS)):
        image = lmudata / "images" / DATASET / f"{i}.png"
        assert image.exists(), sorted(str(p) for p in lmudata.rglob("*"))
        prompt = (f"Question: {q}\nOptions:\nA. {a}\nB. {b}\n"
                  "Please select the correct answer from the options above. \n")
        want = pipe.chat([{"role": "user", "content": [{"type": "image", "image": str(image)},
                                                       {"type": "text", "text": prompt}]}],
                         max_new_tokens=3, temperature=0).text
        assert rows[i]["prediction"] == want, (i, rows[i]["prediction"], want)
    # and the runner scored them: an accuracy file for the dataset
    scores = [p for p in work.rglob(f"qwenvl_{DATASET}*") if p.suffix == ".csv"]
    assert scores, sorted(str(p) for p in work.rglob("*"))
