"""Training fixtures: tiny SFT and preference data sets beside their images."""

from __future__ import annotations

from pathlib import Path

import pytest

from train_util import ANSWERS, sft_records, write_images, write_jsonl

from qwenvl.model.weights import load_model
from qwenvl.processing import Processor


@pytest.fixture(scope="session")
def proc(own_ckpt):
    """The processor of the project-written tiny checkpoint."""
    return Processor.from_pretrained(own_ckpt)


@pytest.fixture(scope="session")
def config(own_ckpt):
    return load_model(own_ckpt).config


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sft_data")
    images = write_images(d / "images", 4)
    return write_jsonl(d / "train.jsonl", sft_records(images, 8))


@pytest.fixture(scope="session")
def pref_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pref_data")
    images = write_images(d / "images", 2)
    recs = []
    for i in range(4):
        recs.append({"image": images[i % 2], "prompt": "<image>\nWhat is this?",
                     "chosen": ANSWERS[i], "rejected": ANSWERS[i + 4]})
    return write_jsonl(d / "pref.jsonl", recs)
