"""Multiple-choice answer extraction, offline (no LLM judge). Each function returns (letter | None, rule),
so reports can count how many answers each rule handled."""

from __future__ import annotations

import re

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def extract_choice(text: str, options: dict[str, str] | None = None, letters: str | None = None
                   ) -> tuple[str | None, str]:
    """Generic extractor (AI2D, MMBench, MMStar, MVBench), tried in this order:
    exact          the whole answer is a letter: "B", "(B)", "B.", "B)"
    leading_letter the answer starts with one: "B. cat", "(B) cat", "B: cat"
    answer_phrase  "Answer: C", "the answer is (C)", "correct option is C", "Best option:(C)"
    paren_letter   exactly one distinct "(X)" in the text
    option_text    exactly one option's text occurs in the answer (case-insensitive)
    unparsed       nothing above; scored as wrong (no random guess)."""
    letters = letters or ("".join(sorted(options)) if options else "ABCD")
    cls = f"[{re.escape(letters)}]"
    s = text.strip()
    m = re.fullmatch(rf"[\(\[]?\s*({cls})\s*[\)\]]?[.:]?", s)
    if m:
        return m.group(1), "exact"
    m = re.match(rf"[\(\[]?({cls})(?:[\)\]][.:]?|[.:])(?:\s|$)", s)
    if m:
        return m.group(1), "leading_letter"
    # "answer" phrases first: in "Option A is wrong, the answer is B" the answer phrase is the conclusion.
    for word in ("[Aa]nswer", "(?:[Oo]ption|[Cc]hoice)"):
        m = re.search(rf"{word}(?:\s+is|\s+would\s+be)?\s*:?\s*\**\s*[\(\[]?({cls})(?![A-Za-z])", s)
        if m:
            return m.group(1), "answer_phrase"
    found = set(re.findall(rf"\(({cls})\)", s))
    if len(found) == 1:
        return found.pop(), "paren_letter"
    if options:
        low = s.lower()
        hits = [k for k, v in options.items() if str(v).strip() and str(v).strip().lower() in low]
        if len(hits) == 1:
            return hits[0], "option_text"
    return None, "unparsed"


def extract_choice_mmmu(text: str, options: dict[str, str]) -> tuple[str | None, str]:
    """The official MMMU `parse_multi_choice_response`, except that no candidate gives None ("unparsed",
    wrong) instead of random.choice, which makes scores non-reproducible."""
    all_choices = list(options)
    response = text
    for ch in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(ch)
    response = " " + response + " "
    candidates, with_brackets, by_index = [], False, True
    for c in all_choices:
        if f"({c})" in response:
            candidates.append(c)
            with_brackets = True
    if not candidates:
        for c in all_choices:
            if f" {c} " in response:
                candidates.append(c)
    if not candidates:
        for c in all_choices:   # "B." inside a sentence (added by lmms-eval's copy; harmless for letters)
            if f"{c}." in response:
                candidates.append(c)
    rule = "paren_letter" if with_brackets else "letter"
    if not candidates and len(response.split()) > 5:
        for c, ans in options.items():
            if str(ans).lower() in response.lower():
                candidates.append(c)
                by_index = False
        rule = "option_text"
    if not candidates:
        return None, "unparsed"
    if len(candidates) == 1:
        return candidates[0], rule
    # Several candidates: the one mentioned last wins.
    if by_index:
        pattern = "({})" if with_brackets else " {} "
        pos = [response.rfind(pattern.format(c)) for c in candidates]
    else:
        pos = [response.lower().rfind(str(options[c]).lower()) for c in candidates]
    return candidates[pos.index(max(pos))], rule + "_last"


_VIDEOMME_PREFIXES = ["The best answer is", "The correct answer is", "The answer is", "The answer",
                      "The best option is", "The correct option is", "Best answer:", "Best option:", "Answer:",
                      "Option:"]


def extract_choice_videomme(text: str) -> tuple[str | None, str]:
    """The Video-MME authors' `extract_characters_regex`: drop answer prefixes, then the first capital
    A-D; long answers (>10 words) with no A-D give nothing. (VLMEvalKit's copy loses four prefixes to
    missing commas; here each prefix is its own string, as in the authors' script.)"""
    s = text.strip()
    for p in _VIDEOMME_PREFIXES:
        s = s.replace(p, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return None, "unparsed"
    m = re.search(r"[ABCD]", s)
    return (m.group(0), "first_capital") if m else (None, "unparsed")
