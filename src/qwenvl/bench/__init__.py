"""Benchmarks: `qwenvl bench` (inference, this project against transformers on the same weights)."""
