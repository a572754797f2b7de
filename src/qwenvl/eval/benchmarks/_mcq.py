"""Shared multiple-choice pieces: the option list in prompts, ground-truth letters, the generic scorer."""

from __future__ import annotations

from ..metrics.choice import LETTERS, extract_choice
from ..registry import SampleScore
from ._common import text_of

LETTER_PROMPT = "Answer with the option's letter from the given choices directly."


def option_lines(options: dict[str, str]) -> str:
    return "\n".join(f"{k}. {v}" for k, v in options.items())


def gt_letter(answer, options: dict[str, str]) -> str:
    """The answer as a letter: a letter already, an option index ("1" -> B), or an option's text."""
    a = str(answer).strip()
    if len(a) == 1 and a.upper() in LETTERS:
        return a.upper()
    if a.isdigit() and int(a) < len(options):
        return list(options)[int(a)]
    for k, v in options.items():
        if v.strip() == a:
            return k
    return a


def score_choice(pred, gt: str, options: dict[str, str] | None, letters: str | None = None,
                 group: dict | None = None) -> SampleScore:
    letter, rule = extract_choice(text_of(pred), options or None, letters)
    return SampleScore({"accuracy": float(letter is not None and letter == gt)}, rule, group or {})
