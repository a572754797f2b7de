"""FSDP2 under torchrun (2 CPU processes, gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import socket
import torch

from qwenvl.model.weights import load_model


def losses(out):
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in x]


def test_two_processes_match_one(own_ckpt, sft_data, tmp_path):
    common = ["train", "--model", str(own_ckpt), "--data", str(sft_data), "--max-steps", "3", "--lr", "3e-3",
              "--stage", "multimodal", "--batch-size", "1", "--no-progress", "--fixed-fps"]
    from qwenvl.cli.main import main
    assert main(common + ["--out", str(tmp_path / "one"), "--grad-accum", "2"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "qwenvl.cli.main", *common, "--out", str(tmp_path / "two"), "--save-every", "2"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    assert (tmp_path / "two" / "checkpoints" / "step-000003" / ".metadata").exists()  # a distributed checkpoint
    a, b = load_model(tmp_path / "one" / "final"), load_model(tmp_path / "two" / "final")
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5, msg=n)


def free_port() -> int:
    """A port nobody listens on now: a fixed one collides with another run (or its TIME_WAIT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
