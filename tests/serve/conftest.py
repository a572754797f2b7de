"""Fixtures for the server tests (helpers live in serve_util.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")


@pytest.fixture(scope="session")
def pipe(tiny_ckpt):
    import qwenvl
    return qwenvl.load(tiny_ckpt, dtype="float32")
