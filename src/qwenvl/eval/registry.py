"""Task registry: one module per benchmark under qwenvl.eval.benchmarks registers its Task with @register.

A Task knows three things about its benchmark: how to read the released annotations (`load`), how to
ask the model (`messages`), and how to score one answer (`score_sample`) and a whole run (`aggregate`).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path

from . import data

TASKS: dict[str, type["Task"]] = {}


def register(*names: str):
    """Class decorator: make the task available under each name (e.g. refcoco, refcoco+, refcocog)."""
    def deco(cls):
        for name in names:
            TASKS[name] = cls
        return cls
    return deco


def _import_all() -> None:
    from . import benchmarks
    for mod in pkgutil.iter_modules(benchmarks.__path__):
        importlib.import_module(f"{benchmarks.__name__}.{mod.name}")


def task_names() -> list[str]:
    _import_all()
    return sorted(TASKS)


def get_task(name: str) -> "Task":
    _import_all()
    key = name.lower()
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[key](key)


@dataclass
class SampleScore:
    """The score of one answer: metric values (each averaged over samples by default) and the rule that
    turned the raw text into the compared answer, so a report can say which rule produced the score."""
    values: dict[str, float]
    rule: str
    group: dict[str, str] = field(default_factory=dict)   # breakdown keys, e.g. {"type": "icon"}
    extra: object = None     # whatever a task's aggregate needs beyond values (e.g. ODinW's detections)


class Task:
    # Fields searched, in order, for the benchmark's own sample id; the row index is the fallback.
    id_keys: tuple[str, ...] = ("id", "question_id", "questionId", "index")
    spatial = False          # predictions record the resized input size (coordinates live there)
    video = False            # predictions record the sampling fps
    max_new_tokens = 128
    metrics: tuple[str, ...] = ("accuracy",)   # the headline metric(s), in %, first is the main one

    def __init__(self, name: str):
        self.name = name

    # ------------------------------------------------------------------ data
    def load(self, path: str | Path, media_dir: str | None = None) -> list[dict]:
        """Released annotations -> list of records, each with an "id". media_dir: where relative image and
        video paths live, when not beside the annotation file (also used to read original image sizes)."""
        rows = data.load_table(path)
        if media_dir:
            for r in rows:
                r["_media_dir"] = str(media_dir)
        return self.assign_ids(self.prepare(rows))

    def prepare(self, rows: list[dict]) -> list[dict]:
        """Task-specific reshaping of raw rows (explode lists, rename fields); identity by default."""
        return rows

    def assign_ids(self, rows: list[dict]) -> list[dict]:
        for i, row in enumerate(rows):
            if "id" not in row or row["id"] in (None, ""):
                row["id"] = next((row[k] for k in self.id_keys if row.get(k) not in (None, "")), i)
        return rows

    # ------------------------------------------------------------ generation
    def messages(self, rec: dict, ctx: "data.MediaContext") -> list[dict]:
        raise NotImplementedError

    # ---------------------------------------------------------------- scoring
    def score_sample(self, rec: dict, pred: dict | None) -> SampleScore:
        raise NotImplementedError

    def aggregate(self, recs: list[dict], samples: list[SampleScore]) -> dict[str, float]:
        """Default: mean of each value over all samples, in %, plus per-group breakdowns."""
        return mean_metrics(samples)


def mean_metrics(samples: list[SampleScore], scale: float = 100.0) -> dict[str, float]:
    out: dict[str, float] = {}
    if not samples or not samples[0].values:
        return out
    for key in samples[0].values:
        out[key] = scale * sum(s.values[key] for s in samples) / len(samples)
    groups: dict[str, list[SampleScore]] = {}
    for s in samples:
        for gk, gv in s.group.items():
            groups.setdefault(f"{gk}={gv}", []).append(s)
    main = next(iter(samples[0].values))
    for g, ss in sorted(groups.items()):
        out[f"{main}[{g}]"] = scale * sum(s.values[main] for s in ss) / len(ss)
    return out
