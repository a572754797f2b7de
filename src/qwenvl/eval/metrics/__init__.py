"""Metric functions, each following a named official scorer (see docs/eval.md)."""
