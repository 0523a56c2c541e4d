"""Option letters for multiple-choice prompts, and reading the chosen option back out of a free answer.

`match_option` is this project's own rule set (used by MMBench); ScienceQA keeps LLaVA's stricter
parser in `lmm.eval.scienceqa` so that its numbers stay comparable with the paper.
"""
from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

LETTERS = string.ascii_uppercase


def is_missing(value) -> bool:
    """An absent cell: None, NaN, blank, or the text 'nan'/'none' that a pandas round trip leaves behind
    (LLaVA's MMBench loader reads these as absent as well, so its prompts and ours have the same options)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in {"", "nan", "none"}


def format_options(options: Sequence[str]) -> str:
    """'A. first\\nB. second...', the layout LLaVA-1.5's ScienceQA and MMBench prompts use."""
    return "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))


def rotate(options: Sequence, shift: int) -> list:
    """Options moved `shift` places to the left: position p then shows original option (p + shift) % n."""
    shift %= max(len(options), 1)
    return list(options[shift:]) + list(options[:shift])


# Characters a model may wrap an answer in ("**B**", "`B`", quotes); removed before matching.
_WRAPPING = "*`'\" \t\n"
# The whole answer is one letter, possibly bracketed or followed by a period/colon: "B", "(B)", "b.", "[C]".
_BARE = re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:]?$")
# The answer opens with a letter and a delimiter, then text: "B. a cat", "(B) a cat", "B) a cat", "B: a cat".
_LEADING = re.compile(r"^(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])[.):])\s+\S")
# "The answer is B", "Answer: (C)", "option D", "the correct choice would be A." (keyword in any case,
# the letter upper case so that "the answer is a cat" is not read as option A).
_PHRASE = re.compile(r"(?i:\b(?:answer|option|choice)\b)(?:\s+(?:is|would\s+be|should\s+be))?\s*:?\s*"
                     r"[(\[]?([A-Z])(?=$|[\s.,;:!?)\]])")
# A bracketed letter anywhere: "... so I pick (B)".
_BRACKETED = re.compile(r"\(([A-Z])\)")


def _normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def _single(indices, n: int) -> int | None:
    """The one option every hit agrees on, if it is a valid option; None for none, several, or out of range."""
    distinct = set(indices)
    if len(distinct) != 1:
        return None
    (index,) = distinct
    return index if 0 <= index < n else None


def match_option(answer: str, options: Sequence[str]) -> int | None:
    """The index of the option a free answer chooses, or None when no rule finds exactly one.

    Rules, first hit wins: the whole answer is one letter; the answer starts with "B." / "(B)" / "B)" /
    "B:"; phrases such as "the answer is B" (all of them must name the same letter); the answer equals
    exactly one option's text (case, spacing and a final period ignored); bracketed letters "(B)"
    anywhere, all the same; exactly one option's text appears in the answer as whole words. A letter
    beyond the options, or an answer naming two options, is unresolved rather than guessed.
    """
    n = len(options)
    text = answer.strip(_WRAPPING)
    if not text:
        return None
    if m := _BARE.match(text):
        return _single([LETTERS.index(m.group(1).upper())], n)
    if m := _LEADING.match(text):
        return _single([LETTERS.index(next(g for g in m.groups() if g))], n)
    if hits := _PHRASE.findall(text):
        return _single([LETTERS.index(h) for h in hits], n)
    normalised = _normalise(text)
    equal = [i for i, option in enumerate(options) if _normalise(str(option)) == normalised]
    if equal:
        return equal[0] if len(equal) == 1 else None
    if hits := _BRACKETED.findall(text):
        return _single([LETTERS.index(h) for h in hits], n)
    contained = [i for i, option in enumerate(options) if (o := _normalise(str(option)))
                 and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", normalised)]
    return contained[0] if len(contained) == 1 else None
