"""Answer normalisation and soft accuracy, computed the way the VQA-family reference scorers compute them.

Two answer processors:

* `normalize_answer` is what the official VQA scorer (GT-Vision-Lab/VQA, vqaEval.py) does to a predicted
  answer: tabs/newlines to spaces, strip, punctuation (`process_punctuation`), then lower case, number words
  to digits, articles dropped and apostrophe-less contractions restored (`process_digit_article`).
* `evalai_answer` is the EvalAI/MMF processor LLaVA uses to score TextVQA and to clean VQAv2 answers before
  submitting them: a tokenising step first (lower case, commas and question marks dropped, "'s" split off),
  then the same steps as above.

Human answers are treated differently by the two scorers: the VQA scorer applies only the punctuation step,
and only when the human answers disagree (`vqa_accuracy`); the TextVQA scorer runs the full EvalAI
processor on every human answer (`textvqa_accuracy`).
"""
from __future__ import annotations

import re
from collections.abc import Sequence

NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# Apostrophe and colon are kept on purpose (possessives, times such as 2:50); so is the period, handled apart.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
_DIGIT_COMMA = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")          # a period not followed by a digit (decimals survive)
# The reference passes re.UNICODE (== 32) in the position of sub()'s `count`, so only the first 32 such
# periods of an answer are removed. Kept for exactness; it only matters for very long generations.
_PERIOD_LIMIT = 32

# Contractions the reference restores when written without an apostrophe. Every spelling that misses exactly
# one of the apostrophes is looked up (so "couldnt've" and "couldn'tve" both give "couldn't've", but
# "couldntve" stays as it is), which reproduces the reference's lowercase table.
_CONTRACTED = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't", "don't", "hadn't",
    "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd", "how'll", "how's", "isn't", "it'd",
    "it'd've", "it'll", "ma'am", "mightn't", "mightn't've", "might've", "mustn't", "must've", "needn't",
    "not've", "o'clock", "oughtn't", "'ow's'at", "shan't", "she'd've", "should've", "shouldn't", "shouldn't've",
    "somebody'd've", "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll", "someone's",
    "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've", "there're", "there's",
    "they'd", "they'd've", "they'll", "they're", "they've", "'twas", "wasn't", "we'd've", "we've", "weren't",
    "what'll", "what're", "what's", "what've", "when's", "where'd", "where's", "where've", "who'd", "who'd've",
    "who'll", "who's", "who've", "why'll", "why're", "why's", "won't", "would've", "wouldn't", "wouldn't've",
    "y'all", "y'all'll", "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)


def _contraction_table() -> dict[str, str]:
    table = {}
    for word in _CONTRACTED:
        for i, char in enumerate(word):
            if char == "'":
                table[word[:i] + word[i + 1:]] = word
    # The reference's one backwards entry: it turns "somebody'd" into "somebodyd" (and has no "somebodyd" key).
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contraction_table()


def process_punctuation(text: str) -> str:
    """The reference's punctuation step. Whether a mark touches a space is decided on the text as given,
    not as it is being rewritten: a mark touching a space anywhere (or any digit,digit comma in the text)
    is deleted everywhere, otherwise each occurrence becomes a space. Then periods not followed by a
    digit are deleted. Case is left alone (the lower-casing happens in `process_digit_article`)."""
    strip_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if strip_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_LIMIT)


def process_digit_article(text: str) -> str:
    """Lower case, split on whitespace, number words to digits, articles dropped, contractions restored."""
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(answer: str) -> str:
    """The official VQA scorer's processing of a predicted answer."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def evalai_answer(answer: str) -> str:
    """The EvalAI processor (LLaVA's TextVQA scorer, LLaVA's VQAv2 submission clean-up): lower case, commas
    and question marks deleted, "'s" split into its own word, then `normalize_answer`'s steps."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_answer(text)


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals the (any) normalised gold answer."""
    golds = [gold] if isinstance(gold, str) else gold
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def leave_one_out(prediction: str, answers: Sequence[str]) -> float:
    """Soft accuracy of an already-processed prediction against already-processed human answers: for each
    human left out, min(#other humans who gave the prediction / 3, 1), averaged over the left-out humans.
    With one answer there is nobody left to agree, so the score is 0 (as in the reference)."""
    if not answers:
        raise ValueError("soft accuracy needs at least one human answer")
    count = sum(a == prediction for a in answers)
    return sum(min(1.0, (count - (a == prediction)) / 3) for a in answers) / len(answers)


def vqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """The official VQA scorer on one question: the prediction fully normalised; the human answers compared
    as given when they all agree, else after the punctuation step only (no lower-casing, digits, articles
    or contractions: the released annotations are already in that form)."""
    answers = list(human_answers)
    if len(set(answers)) > 1:
        answers = [process_punctuation(a) for a in answers]
    return leave_one_out(normalize_answer(prediction), answers)


def textvqa_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """LLaVA's TextVQA scorer (MMF's TextVQAAccuracyEvaluator) on one question: both sides through
    `evalai_answer`, then the leave-one-out soft accuracy."""
    return leave_one_out(evalai_answer(prediction), [evalai_answer(a) for a in human_answers])
