"""Answer normalisation and accuracy in the manner of the VQA evaluation.

Normalisation, following the steps the VQA challenge's scorer applies: newlines/tabs to spaces;
each punctuation mark removed where it touches a space (or the text has a digit,digit comma) and
replaced by a space elsewhere; periods removed unless a digit follows; lower case; number words
to digits; articles (a, an, the) dropped; contractions written without apostrophe restored.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
CONTRACTIONS = {w.replace("'", ""): w for w in (
    "ain't", "aren't", "can't", "couldn't", "didn't", "doesn't", "don't", "hadn't", "hasn't", "haven't", "he'd",
    "he'll", "he's", "i'd", "i'll", "i'm", "i've", "isn't", "it'd", "it'll", "it's", "let's", "ma'am", "mightn't",
    "mustn't", "o'clock", "shan't", "she'd", "she'll", "she's", "shouldn't", "that's", "there's", "they'd",
    "they'll", "they're", "they've", "wasn't", "we'd", "we'll", "we're", "we've", "weren't", "what's", "where's",
    "who's", "won't", "wouldn't", "you'd", "you'll", "you're", "you've")}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_DIGIT_COMMA = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")


def _strip_punctuation(text: str) -> str:
    has_digit_comma = bool(_DIGIT_COMMA.search(text))
    for p in PUNCTUATION:
        touches_space = (p + " ") in text or (" " + p) in text
        text = text.replace(p, "" if touches_space or has_digit_comma else " ")
    return _PERIOD.sub("", text)


def normalize_answer(answer: str) -> str:
    text = _strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals the (any) normalised gold answer."""
    golds = [gold] if isinstance(gold, str) else gold
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy: min(#humans who gave the answer / 3, 1), averaged over the 10 leave-one-out
    subsets of the (usually 10) human answers."""
    pred = normalize_answer(prediction)
    answers = [normalize_answer(a) for a in human_answers]
    if len(answers) < 2:
        return float(answers == [pred])
    scores = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1:]
        scores.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(scores) / len(scores)
