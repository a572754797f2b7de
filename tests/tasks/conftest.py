"""Fixtures for the task tests."""

from __future__ import annotations

import sys
import types

import pytest

from task_fakes import ref_smart_resize


@pytest.fixture
def smart_resize(monkeypatch):
    """The processing module's smart_resize; while it is not written yet, the reference stands in."""
    try:
        from qwenvl.processing.image import smart_resize as real
        return real
    except ImportError:
        mod = types.ModuleType("qwenvl.processing.image")
        mod.smart_resize = ref_smart_resize
        monkeypatch.setitem(sys.modules, "qwenvl.processing.image", mod)
        return ref_smart_resize
