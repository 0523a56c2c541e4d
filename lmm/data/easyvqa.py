"""The embedded default data set: the PyPI package `easy-vqa` converted to LLaVA-format files.

    <root>/images/{train,test}/<n>.png     the package's 64x64 images
    <root>/pretrain.json                   one caption per train image ("A blue rectangle.")
    <root>/sft.json                        the train images' questions as multi-turn conversations: an image
                                           whose shape and colour are known has two, the first opening with its
                                           lettered (multiple-choice) turns (see `conversations`)
    <root>/eval/                           the test set as VQAv2-, POPE- and MMBench-format files
                                           (lmm.data.easyvqa_forms)
    <root>/tokenizer/                      a byte-level BPE tokenizer trained on this corpus
    <root>/manifest.json                   written last; its presence means the folder is complete
"""
from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

from lmm.data.easyvqa_forms import COLOR_QUESTION, SHAPE_QUESTION, choices, write_forms
from lmm.data.templates import IMAGE_PLACEHOLDER, VICUNA_SYSTEM
from lmm.data.tokenizer_build import train_bpe_tokenizer
from lmm.eval.benchmark import MULTIPLE_CHOICE, with_suffix
from lmm.eval.choices import LETTERS, format_options

VERSION = 6
MC_ROUNDS = 1   # conf/data/easyvqa.yaml's multiple_choice: what a folder is built with when none is asked for
SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
# Strings every chat template in lmm.data.templates may emit, so the tokenizer learns them too.
TEMPLATE_TEXT = ["USER: ASSISTANT:", "[INST] <<SYS>>\n <</SYS>>\n\n [/INST]", VICUNA_SYSTEM,
                 "Answer the question using a single word or phrase."]


def question_kind(answer: str) -> str:
    return "shape" if answer in SHAPES else "color" if answer in COLORS else "yes/no"


def image_facts(questions: list[tuple[str, str]]) -> dict[str, str]:
    """Colour and shape of an image, read off its questions (the package stores neither).

    "what is the blue shape?" -> rectangle gives both; a yes/no question tells that a mentioned
    colour or shape is present when the answer is "yes" and the question has no negation
    ("not", "no"), or the answer is "no" and it has one.
    """
    facts = {}
    for q, a in questions:
        words = q.rstrip("?").split()
        colors = [w for w in words if w in COLORS]
        shapes = [w for w in words if w in SHAPES]
        if a in SHAPES:
            facts.update(shape=a, **({"color": colors[0]} if colors else {}))
        elif a in COLORS:
            facts.update(color=a, **({"shape": shapes[0]} if shapes else {}))
        elif (a == "yes") != ("not" in words or "no" in words):
            facts.update(**({"color": colors[0]} if colors else {}), **({"shape": shapes[0]} if shapes else {}))
    return facts


def _by_image(split: str):
    import easy_vqa

    texts, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    per_image = defaultdict(list)
    for q, a, i in zip(texts, answers, image_ids):
        per_image[i].append((q, a))
    return per_image, getattr(easy_vqa, f"get_{split}_image_paths")()


def mc_turns(facts: dict[str, str], rng: random.Random) -> list[tuple[str, str]]:
    """The image's shape and colour asked as the multiple-choice form asks them (the MMBench layout,
    LLaVA-1.5's letter suffix, options shuffled), answered with the letter."""
    turns = []
    for kind, question in (("shape", SHAPE_QUESTION), ("color", COLOR_QUESTION)):
        options = choices(kind, facts[kind], SHAPES, COLORS, rng)
        turns.append((with_suffix(f"{question}\n{format_options(options)}", MULTIPLE_CHOICE),
                      LETTERS[options.index(facts[kind])]))
    return turns


def conversations(questions: list, lettered: list) -> list[tuple[str, list]]:
    """(id suffix, turns) of the SFT conversations of one image. Without lettered turns: one, all its
    questions. With them: two, the first opening with the lettered turns and holding half of the
    questions, the second the rest.

    Why lettered turns open a conversation: the evaluation asks them in a conversation of their own,
    so the letter has to come from the image. Placed at a random turn, two thirds of them came after
    a turn whose text names the answer, and the model learnt to match the options against that text
    (training loss near 0; on the test set, a quarter of the colour questions answered right in
    every option order). Why two conversations: had every conversation opened with a lettered turn,
    no short or yes/no question would ever be asked first, as the VQA and POPE forms ask them (POPE
    F1 fell to 0.57). experiments/easyvqa_demo/README.md has the runs."""
    if not lettered:
        return [("", questions)]
    half = len(questions) // 2
    return [("-lettered", lettered + questions[:half])] + ([("", questions[half:])] if questions[half:] else [])


def prepare(root: str | Path, vocab_size: int = 512, seed: int = 0, multiple_choice: bool | int | None = None) -> Path:
    """Build the folder if it is missing, from another version, or built with another
    `multiple_choice` (the number of rounds in which an image's SFT conversations also ask its
    shape and colour as multiple-choice turns, each round with its own options and order; True is 1,
    False 0; None: whatever the folder holds, MC_ROUNDS (the demo's data) when building; the
    benchmarks pass None: their files are the same either way); returns the root."""
    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.is_file():
        built = json.loads(manifest.read_text())
        if built.get("version") == VERSION and multiple_choice in (None, built.get("multiple_choice")):
            return root
    multiple_choice = MC_ROUNDS if multiple_choice is None else int(multiple_choice)
    if multiple_choice < 0:
        raise ValueError(f"multiple_choice={multiple_choice}: give the number of multiple-choice rounds per "
                         "conversation (0 or false: none, 1 or true: one)")
    rng = random.Random(seed)
    train, train_paths = _by_image("train")
    test, test_paths = _by_image("test")
    for split, paths in (("train", train_paths), ("test", test_paths)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        for i, src in paths.items():
            shutil.copyfile(src, root / "images" / split / f"{i}.png")

    pretrain, sft, skipped = [], [], 0
    for i in sorted(train):
        facts = image_facts(train[i])
        image = f"images/train/{i}.png"
        if len(facts) == 2:  # every train image has a colour and a shape question in practice
            caption = f"A {facts['color']} {facts['shape']}."
            pretrain.append({"id": f"easyvqa-train-{i}-caption", "image": image, "conversations": [
                {"from": "human", "value": f"{IMAGE_PLACEHOLDER}\nDescribe the image briefly."},
                {"from": "gpt", "value": caption}]})
        else:
            skipped += 1
        questions = list(train[i])
        rng.shuffle(questions)
        lettered = [t for _ in range(multiple_choice if len(facts) == 2 else 0) for t in mc_turns(facts, rng)]
        rng.shuffle(lettered)
        for suffix, pairs in conversations(questions, lettered):
            turns = []
            for k, (q, a) in enumerate(pairs):
                turns += [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{q}" if k == 0 else q}, {"from": "gpt", "value": a}]
            sft.append({"id": f"easyvqa-train-{i}{suffix}", "image": image, "conversations": turns})

    forms = write_forms(root, test, image_facts, question_kind, SHAPES, COLORS, seed)
    (root / "pretrain.json").write_text(json.dumps(pretrain))
    (root / "sft.json").write_text(json.dumps(sft))

    # Answers follow "ASSISTANT:" after a space in the chat templates: learn them with it.
    corpus = [" " * (t["from"] == "gpt") + t["value"] for rec in pretrain + sft for t in rec["conversations"]]
    train_bpe_tokenizer(corpus + TEMPLATE_TEXT * 100, root / "tokenizer", vocab_size=vocab_size)
    manifest.write_text(json.dumps({"version": VERSION, "multiple_choice": multiple_choice, "pretrain": len(pretrain), "sft": len(sft),
                                    "images_without_caption": skipped, "eval": forms}, indent=2))
    return root
