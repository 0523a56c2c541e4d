"""Generated LLaVA-format records that stress the text pipeline: 1-8 rounds, the image at the start,
the end or the middle of its turn (or in a later turn), unicode, newlines and odd spacing, long
answers, text-only records, a leading assistant turn, and digits."""
from __future__ import annotations

import random

WORDS = ("what is the color of shape image picture there a an in on red blue green circle square triangle "  # noqa: SIM905 (a word list is easier to edit as one string)
         "describe detail left right top bottom many how does yes no answer photo person man dog street "
         "USER ASSISTANT system model").split()
UNICODE = ["café", "naïve", "Zürich", "東京", "猫が好き", "😀", "👍🏽", "—", "«quote»", "e\u0301", "Ωmega", "١٢٣", "ß"]


def _text(rng: random.Random, lo: int, hi: int) -> str:
    words = []
    for _ in range(rng.randint(lo, hi)):
        r = rng.random()
        words.append(rng.choice(UNICODE) if r < 0.08 else str(rng.randint(0, 99999)) if r < 0.14 else
                     rng.choice(WORDS).capitalize() if r < 0.2 else rng.choice(WORDS))
    text = " ".join(words)
    r = rng.random()
    if r < 0.1:
        text = text.replace(" ", "\n", 1)
    elif r < 0.15:
        text = text.replace(" ", "  ", 1)
    elif r < 0.2:
        text = " " + text + " "
    return text + rng.choice(["?", ".", "", "!", ":"])


def _with_image(rng: random.Random, text: str) -> str:
    where = rng.random()
    if where < 0.5:
        return "<image>\n" + text
    if where < 0.8:
        return text + "\n<image>"
    words = text.split(" ")
    k = rng.randint(0, len(words))
    return " ".join(words[:k] + ["<image>"] + words[k:])


def record(rng: random.Random, i: int, image: bool | None = None) -> dict:
    rounds = rng.choice([1, 1, 1, 2, 3, 4, 5, 6, 7, 8])
    image = rng.random() < 0.85 if image is None else image
    turns = []
    for r in range(rounds):
        turns.append({"from": "human", "value": _text(rng, 1, 20)})
        long = rng.random() < 0.1
        turns.append({"from": "gpt", "value": _text(rng, 60, 250) if long else _text(rng, 1, 25)})
    if image:
        k = 0 if rng.random() < 0.8 else 2 * rng.randrange(rounds)
        turns[k]["value"] = _with_image(rng, turns[k]["value"])
    if rng.random() < 0.03:
        turns.insert(0, {"from": "gpt", "value": "Hello! " + _text(rng, 1, 6)})
    out = {"id": f"r{i}", "conversations": turns}
    if image:
        out["image"] = f"images/{i}.jpg"
    return out


def records(n: int, seed: int = 0, image: bool | None = None) -> list[dict]:
    rng = random.Random(seed)
    return [record(rng, i, image) for i in range(n)]


def captions(n: int, seed: int = 0) -> list[dict]:
    """Pretrain records: one human turn with the image (and sometimes an instruction), one caption."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        question = rng.choice(["<image>", "<image>\n" + _text(rng, 2, 8), _text(rng, 2, 8) + "\n<image>"])
        out.append({"id": f"c{i}", "image": f"images/{i}.jpg",
                    "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": _text(rng, 3, 40)}]})
    return out
