"""Fixtures for the processing tests: the tiny tokenizer/processor files (no model), our Processor,
the transformers 4.51.3 processor over the same files (the oracle), and short clips encoded with PyAV
whose frames carry their own index (left half: index % 10, right half: index // 10, in steps of 25)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwenvl.processing import Processor
from qwenvl.tiny import write_assets

from media_util import write_video


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("proc_assets")
    write_assets(out)
    return out


@pytest.fixture(scope="session")
def proc(assets) -> Processor:
    return Processor.from_pretrained(assets)


@pytest.fixture(scope="session")
def hf_proc(assets):
    transformers = pytest.importorskip("transformers")
    import transformers.utils.logging as hf_logging
    hf_logging.set_verbosity_error()
    return transformers.AutoProcessor.from_pretrained(assets)   # slow image processor: the default here


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """3 s at 30 fps, 64x48, mp4 (the container records the frame count)."""
    return write_video(tmp_path_factory.mktemp("clips") / "clip.mp4", 90)


@pytest.fixture(scope="session")
def clip_mkv(tmp_path_factory) -> Path:
    """The same in Matroska, which does not record the frame count (it is counted by demuxing)."""
    return write_video(tmp_path_factory.mktemp("clips") / "clip.mkv", 90)
