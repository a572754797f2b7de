"""String metrics: ANLS (DocVQA/InfoVQA), relaxed accuracy (ChartQA), VQA accuracy (TextVQA), numbers."""

from __future__ import annotations

import re


# ------------------------------------------------------------------------------------------- ANLS
def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(prediction: str, answers: list[str], threshold: float = 0.5) -> float:
    """Official DocVQA rule: distances on lower-cased, whitespace-collapsed strings, but divided by the
    length of the *raw* strings; best answer wins; a score below the threshold becomes 0."""
    if not answers:
        return 0.0
    det = ' '.join(prediction.strip().lower().split())
    values = []
    for gt_raw in answers:
        gt = ' '.join(str(gt_raw).strip().lower().split())
        length = max(len(str(gt_raw).upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else levenshtein(gt, det) / length)
    score = 1.0 - min(values)
    return 0.0 if score < threshold else score


# ------------------------------------------------------------------------------ relaxed accuracy
def to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0   # "12%" and 0.12 are the same answer
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(prediction: str, target: str, tolerance: float = 0.05) -> bool:
    """pix2struct / ChartQA rule: numbers within 5% of a non-zero target; otherwise case-insensitive
    exact match. "1,000" and "$5" are not numbers (float() rejects them), and a target of 0 needs an
    exact string match: both as in the official code."""
    prediction, target = prediction.strip(), str(target)
    p, t = to_float(prediction), to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= tolerance
    return prediction.lower() == target.lower()


# ---------------------------------------------------------------------------------- VQA accuracy
# EvalAI / official VQA answer normalisation (also used by TextVQA). Order of the steps matters.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've",
    "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll",
    "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBER_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
          "?", "!"]


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # The official code passes re.UNICODE (=32) as the *count* argument; kept for identical results.
    return _PERIOD_STRIP.sub("", out, 32)


def _process_digit_article(text: str) -> str:
    words = [_NUMBER_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def vqa_normalize(text: str) -> str:
    """EvalAIAnswerProcessor: lower, drop , and ?, split 's, whitespace, punctuation, digits/articles."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """min(#other humans agreeing / 3, 1), averaged over the 10 leave-one-out subsets of the answers."""
    if not answers:
        return 0.0
    pred = vqa_normalize(prediction)
    gts = [vqa_normalize(str(a)) for a in answers]
    accs = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        accs.append(min(1.0, matches / 3.0))
    return sum(accs) / len(accs)


# ---------------------------------------------------------------------------------------- numbers
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
NUMBER_WORDS["none"] = 0
# A whole number as a token: "1" is never found inside "10" or "1.5", and "1,000" is one number.
_NUMBER_RE = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?(?![\d]|\.\d|,\d)")
_WORD_RE = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b")


def parse_count(text: str) -> tuple[int | None, str]:
    """A count from an answer -> (value, rule). "exact": the whole answer is one number or number word
    (trailing period allowed); "regex_number": the last whole number (or number word) in a sentence;
    "unparsed": none found."""
    s = text.strip().lower().rstrip(".").strip()
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+|\d+", s):
        return int(s.replace(",", "")), "exact"
    if s in NUMBER_WORDS:
        return NUMBER_WORDS[s], "exact"
    found = [(m.start(), int(m.group(1).replace(",", ""))) for m in _NUMBER_RE.finditer(s)]
    found += [(m.start(), NUMBER_WORDS[m.group(1)]) for m in _WORD_RE.finditer(s)]
    if not found:
        return None, "unparsed"
    # The last number is the conclusion in "2 rows of 5, so 10 in total".
    return max(found)[1], "regex_number"
