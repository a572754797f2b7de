"""Benchmark evaluation: generation (resumable) and scoring with the official rules, reporting which
extraction rule produced each score. See docs/eval.md.

    from qwenvl.eval import get_task, score, run
    task = get_task("docvqa")
    report = score(task, task.load("val_v1.0.json"), read_jsonl("predictions.jsonl"))
"""

from .data import MediaContext, load_table, read_jsonl
from .registry import TASKS, SampleScore, Task, get_task, register, task_names
from .runner import run
from .scoring import format_table, score

__all__ = ["TASKS", "Task", "SampleScore", "register", "get_task", "task_names", "score", "run", "format_table",
           "MediaContext", "load_table", "read_jsonl"]
