"""VQA accuracy: exact match after normalisation, overall and by question type.

Normalisation (applied to predictions and answers alike): lowercase; number words become digits
("three" → "3"); apostrophes and thousands separators are deleted ("it's" → "its", "1,000" →
"1000"); other punctuation becomes a space except a decimal point between digits; the articles
"a", "an", "the" are dropped; whitespace is collapsed. So "Three." == "3" and "A red bus" ==
"red bus", but "two dogs" != "2".

>>> normalize_answer("The  Two zebras!")
'2 zebras'
>>> vqa_accuracy(["three", "no"], [["3"], "yes"], ["count", "yes/no"])["overall"]
0.5
"""

from __future__ import annotations

import re
from collections import defaultdict

from fmrilm.errors import InputError

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
ARTICLES = {"a", "an", "the"}
# Deleted outright, so the word stays one token: apostrophes and commas inside numbers.
_JOIN = re.compile(r"['\u2019]|(?<=\d),(?=\d)")
# Any other punctuation character, except a decimal point inside a number (2.5).
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")


def normalize_answer(text: str) -> str:
    """The canonical form compared by :func:`vqa_accuracy` (see module docstring)."""
    words = _PUNCT.sub(" ", _JOIN.sub("", str(text).lower())).split()
    return " ".join(NUMBER_WORDS.get(w, w) for w in words if w not in ARTICLES)


def answer_matches(prediction: str, answers) -> bool:
    """Whether `prediction` equals (after normalisation) the answer or any of a list of answers."""
    accepted = [answers] if isinstance(answers, str) else list(answers)
    target = normalize_answer(prediction)
    return any(target == normalize_answer(a) for a in accepted)


def vqa_accuracy(predictions, answers, question_types=None) -> dict:
    """Exact-match accuracy overall and per question type.

    Parameters
    ----------
    predictions : list of str
    answers : list of (str or list of str)
        The answer, or all accepted answers, per question.
    question_types : list of str, optional
        E.g. the ``type`` field of the task world's QA rows ("count", "color", "yes/no", ...).

    Returns
    -------
    dict
        ``{"overall": float, "n": int, "by_type": {type: {"accuracy": float, "n": int}},
        "hits": [bool per question]}``.
    """
    predictions, answers = list(predictions), list(answers)
    types = ["all"] * len(predictions) if question_types is None else list(question_types)
    if not len(predictions) == len(answers) == len(types):
        raise InputError("vqa", "rows", f"{len(predictions)} predictions, {len(answers)} answers, {len(types)} types")
    if not predictions:
        raise InputError("vqa", "rows", "no questions to score")
    hits = [answer_matches(p, a) for p, a in zip(predictions, answers)]
    by_type = defaultdict(list)
    for t, hit in zip(types, hits):
        by_type[t].append(hit)
    return {"overall": sum(hits) / len(hits), "n": len(hits),
            "by_type": {t: {"accuracy": sum(h) / len(h), "n": len(h)} for t, h in sorted(by_type.items())},
            "hits": hits}
