"""MMBench as lmms-eval 0.7.3 asks and scores it (`evaluation.convention=lmms_eval`): its deterministic
`mmbench_en_dev_static` task, which needs no judge model.

Prompt (`mmbench_doc_to_text`): "<hint> <question> There are several options:" then one "A. <option>"
line per option, then an empty line and the multiple-choice suffix (its yaml's suffix opens with a
newline and its code adds another); without a hint, "<question> There are...". LLaVA-1.5 puts the hint,
the question and the options on their own lines, and the suffix right after them.

Reading an answer, per rotation of a question (`MMBench_Evaluator.eval_sub_data`):
  1. `infer`: a letter A-E standing alone as a word, when exactly one does (but not when "A" is one of
     more than three words: it may be the article); else a letter in exactly one of the wrappings
     "X." "X," "X:" "X)" "X)." "(X)" "(X)." ":X" ":X," ":X." ":X)" ":X)." (tried in that order); else the one
     option whose text occurs in the lower-cased answer.
  2. If any rotation's inferred letter is wrong, the question is wrong.
  3. Each rotation left unread goes to `extract_letter` (lmms-eval's `extract_mcq_answer`), which must
     give the right letter.
A question is right when every rotation is.
"""
from __future__ import annotations

from collections.abc import Sequence

from lmm.eval.choices import LETTERS

OPTIONS_HEADER = "There are several options:"
_INFER_LETTERS = "ABCDE"   # what lmms-eval's option reader looks for, whatever the question's option count
_WRAPPINGS = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""), (":", ","),
              (":", "."), (":", ")"), (":", ")."))
# lmms-eval's answer phrases for its letter extractor, in its order (a letter after the first occurrence of
# any of them is a candidate).
_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
            "best answer is", "the correct option is", "correct option is", "the best option is",
            "best option is", "the choice is", "choice is", "the correct choice is", "correct choice is",
            "i choose", "i select", "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:",
            "答案是", "答案为", "选", "答えは")
# Candidate kinds, most trusted first: a letter opening or closing the answer, after a phrase, "(X)", "X.",
# "X:", "X)", "X ", and any occurrence at all (only when nothing else matched).
_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
         "space": 2, "fallback": 0}


def prompt(question: str, hint: str | None, options: Sequence[str], suffix: str | None) -> str:
    lines = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))
    body = f"{question} {OPTIONS_HEADER}\n{lines}".rstrip("\n")
    body = f"{hint} {body}" if hint is not None else body
    return f"{body}\n\n{suffix}" if suffix else body


def _infer_letter(answer: str) -> str | None:
    words = [w.strip() for w in answer.split()]

    def hits(prefix: str = "", suffix: str = "") -> list[str]:
        return [c for c in _INFER_LETTERS if f"{prefix}{c}{suffix}" in words]

    alone = hits()
    # A lone "A" among more than three words may be the article: then only wrapped letters count.
    if len(alone) == 1 and not ("A" in words and len(words) > 3):
        return alone[0]
    for prefix, suffix in _WRAPPINGS:
        found = hits(prefix, suffix)
        if len(found) == 1:
            return found[0]
    return None


def _infer_text(answer: str, options: Sequence[str]) -> str | None:
    answer = answer.lower()
    found = [LETTERS[i] for i, text in enumerate(options[:4]) if str(text).lower() in answer]
    return found[0] if len(found) == 1 else None


def infer(answer: str, options: Sequence[str]) -> str | None:
    """Step 1: the letter lmms-eval reads without its extractor, or None."""
    return _infer_letter(answer) or _infer_text(answer, options)


def extract_letter(response: str, letters: Sequence[str]) -> str | None:
    """Step 3: lmms-eval's best-ranked letter candidate (the last occurrence within the best kind), or None."""
    if not response.strip():
        return None
    text = response.strip()
    for mark in ",.!?;:'\"":
        text = text.strip(mark)
    text = f" {text} "
    found: list[tuple[int, int, str]] = []   # (rank, position, letter)

    def add(kind: str, position: int, letter: str) -> None:
        found.append((_RANK[kind], position, letter))

    for kind, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                          ("space", "{} ")):
        for c in letters:
            if pattern.format(c) in text:
                add(kind, text.rfind(pattern.format(c)), c)
    lower = text.lower()
    for phrase in _PHRASES:
        at = lower.find(phrase)
        if at != -1:
            for c in letters:
                position = text.find(c, at + len(phrase))
                if position != -1:
                    add("phrase", position, c)
    bare = text.strip()
    for c in letters:
        if bare.startswith(c) and (len(bare) == 1 or not bare[1].isalpha()):
            add("start", 0, c)
        if bare.endswith(c) and (len(bare) == 1 or not bare[-2].isalpha()):
            add("end", len(text) - 1, c)
    if not found:
        for c in letters:
            if c in text:
                add("fallback", text.rfind(c), c)
    if not found:
        return None
    # Highest rank first, then the later position; Python's sort is stable, as lmms-eval's, for full ties.
    found.sort(key=lambda f: (f[0], f[1]), reverse=True)
    return found[0][2]


def question_hit(rotations: Sequence[tuple[str, Sequence[str], str]]) -> tuple[bool, list[str | None]]:
    """rotations: (answer, options as shown, gold letter as shown). Returns (right, letter read per rotation;
    None where nothing was read, or where step 2 decided before step 3 ran)."""
    read = [infer(answer, shown) for answer, shown, _ in rotations]
    if any(r is not None and r != gold for r, (_, _, gold) in zip(read, rotations)):
        return False, read
    for i, (answer, shown, gold) in enumerate(rotations):
        if read[i] is None:
            read[i] = extract_letter(answer, LETTERS[: min(len(shown), 4)])
            if read[i] != gold:
                return False, read
    return True, read
