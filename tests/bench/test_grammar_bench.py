"""Smoke test of the grammar-library comparison (no timing assertions)."""

from __future__ import annotations

import pytest

from qwenvl.bench import grammar


def test_grammar_bench_runs_and_the_document_fits_the_schema(capsys):
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(__import__("json").loads(grammar.DOC), grammar.SCHEMA)
    grammar.main(["--vocab", "512"])
    out = capsys.readouterr().out
    assert "vocabulary 534 tokens" in out
    assert "llguidance" in out and "per token median" in out
