"""Score a predictions.jsonl against a task's annotations: metrics, sample counts, rule counts."""

from __future__ import annotations

from collections import Counter

from .registry import SampleScore, Task


def index_predictions(predictions: list[dict]) -> dict[str, dict]:
    """id -> prediction; ids compare as strings (annotations may hold 12 or "12"); the last line wins."""
    return {str(p["id"]): p for p in predictions if "id" in p}


def score(task: Task, records: list[dict], predictions: list[dict]) -> dict:
    preds = index_predictions(predictions)
    samples: list[SampleScore] = []
    rules: Counter = Counter()
    missing = 0
    for rec in records:
        pred = preds.get(str(rec["id"]))
        if pred is None or pred.get("prediction") is None:
            missing += 1
        s = task.score_sample(rec, pred)   # a missing prediction scores as wrong, rule "missing"
        if pred is None or pred.get("prediction") is None:
            s.rule = "missing"
        rules[s.rule] += 1
        samples.append(s)
    known = {str(r["id"]) for r in records}
    return {
        "task": task.name,
        "metrics": {k: round(v, 4) for k, v in task.aggregate(records, samples).items()},
        "num_samples": len(records),
        "num_predictions": len(records) - missing,
        "missing": missing,
        "unmatched_predictions": sum(1 for k in preds if k not in known),
        "rules": dict(rules.most_common()),
    }


def format_table(report: dict) -> str:
    lines = [f"task: {report['task']}   samples: {report['num_samples']}   predictions: "
             f"{report['num_predictions']}   missing (scored wrong): {report['missing']}"]
    if report.get("unmatched_predictions"):
        lines.append(f"predictions with ids not in the annotations (ignored): {report['unmatched_predictions']}")
    width = max([len(k) for k in report["metrics"]] + [6])
    lines.append(f"{'metric':<{width}}  value")
    for k, v in report["metrics"].items():
        lines.append(f"{k:<{width}}  {v:.2f}")
    lines.append("rules: " + ", ".join(f"{k}={v}" for k, v in report["rules"].items()))
    return "\n".join(lines)
