"""The demo's SFT data: the multiple-choice turns ask each image's shape and colour exactly as the
easy-vqa MC form's prompts do, answered with the letter of the image's own shape or colour; they open
a conversation of their own (nothing before them names the answer), the image's other conversation
opens with one of its easy-vqa questions, and `multiple_choice` sets how many rounds there are."""
import json
from collections import Counter, defaultdict

import pytest

from lmm.data.easyvqa import COLORS, MC_ROUNDS, SHAPES, image_facts, prepare
from lmm.data.easyvqa_forms import COLOR_QUESTION, SHAPE_QUESTION
from lmm.eval.benchmark import MULTIPLE_CHOICE
from lmm.eval.choices import LETTERS
from lmm.eval.mmbench import MMBench
from tests.conftest import compose_config


def mc_turns(record: dict) -> list[tuple[str, list[str], str, str]]:
    """(question, options, answer letter, the turn's text) of each lettered turn, parsed from the text."""
    turns = record["conversations"]
    out = []
    for human, gpt in zip(turns[::2], turns[1::2]):
        lines = human["value"].removeprefix("<image>\n").split("\n")
        if lines[-1] == MULTIPLE_CHOICE:
            options = [line.split(". ", 1)[1] for line in lines[1:-1]]
            assert [line[:3] for line in lines[1:-1]] == [f"{L}. " for L in LETTERS[:len(options)]]
            out.append((lines[0], options, gpt["value"], "\n".join(lines)))
    return out


def facts(records: list[dict]) -> dict:
    """Shape and colour from the image's own easy-vqa questions (its non-lettered turns)."""
    turns = [t for r in records for t in r["conversations"]]
    return image_facts([(h["value"].removeprefix("<image>\n"), g["value"]) for h, g in zip(turns[::2], turns[1::2])
                        if not h["value"].endswith(MULTIPLE_CHOICE)])


def check_rounds(root, rounds: int) -> None:
    sft = json.loads((root / "sft.json").read_text())
    mc = MMBench(questions=str(root / "eval" / "mc.tsv"))
    by_image = defaultdict(list)
    for record in sft:
        by_image[record["image"]].append(record)
    assert len(by_image) == 4000
    unknown = 0
    for image, records in by_image.items():
        known, turns = facts(records), [t for r in records for t in mc_turns(r)]
        if len(known) < 2 or not rounds:   # its questions do not tell both (no caption), or no rounds asked
            unknown += len(known) < 2
            assert not turns and len(records) == 1 and records[0]["id"] == f"easyvqa-{image[7:-4].replace('/', '-')}"
            continue
        lettered, rest = records
        n = 2 * rounds
        assert lettered["id"].endswith("-lettered") and mc_turns(lettered) == turns, image
        # the lettered turns open their conversation: no turn before them can name the answer
        assert all(h["value"].endswith(MULTIPLE_CHOICE) for h in lettered["conversations"][:2 * n:2])
        assert not any(h["value"].endswith(MULTIPLE_CHOICE) for h in (lettered["conversations"] + rest["conversations"])[2 * n::2])
        assert rest["conversations"][0]["value"].startswith("<image>\n")   # an easy-vqa question opens the other
        assert Counter(q for q, *_ in turns) == {SHAPE_QUESTION: rounds, COLOR_QUESTION: rounds}, image
        for question, options, letter, text in turns:
            kind, pool = ("shape", SHAPES) if question == SHAPE_QUESTION else ("color", COLORS)
            assert len(options) == (3 if kind == "shape" else 4) and set(options) <= set(pool)
            assert options[LETTERS.index(letter)] == known[kind]   # the letter names the image's own shape/colour
            # the training turn is the evaluation's prompt for these options, character for character
            assert text == mc.prompt({"question": question, "hint": None, "options": options}, 0)
    if rounds:
        assert 0 < unknown == json.loads((root / "manifest.json").read_text())["images_without_caption"] < 500
        assert len(sft) == 2 * 4000 - unknown


def test_lettered_turns_open_their_own_conversation_as_the_mc_form_asks_them(data_dir):
    root = data_dir / "easyvqa"
    # the session's data is the demo's: built with the rounds the demo's data config asks for
    rounds = compose_config("train", []).data.prepare.multiple_choice
    assert json.loads((root / "manifest.json").read_text())["multiple_choice"] == rounds == MC_ROUNDS
    check_rounds(root, rounds)
    # the gold letter is spread over the positions (a letter bias in the data would be learnt)
    letters = Counter(t[2] for r in json.loads((root / "sft.json").read_text()) for t in mc_turns(r)
                      if t[0] == COLOR_QUESTION)
    assert set(letters) == set("ABCD") and min(letters.values()) > sum(letters.values()) / 4 * 0.85


@pytest.mark.slow
def test_rounds_are_counted_recorded_and_rebuilt(tmp_path):
    root = prepare(tmp_path / "easyvqa", multiple_choice=2)
    assert json.loads((root / "manifest.json").read_text())["multiple_choice"] == 2
    check_rounds(root, 2)
    assert prepare(root) == root and json.loads((root / "manifest.json").read_text())["multiple_choice"] == 2
    prepare(root, multiple_choice=False)   # another choice rebuilds the folder
    assert json.loads((root / "manifest.json").read_text())["multiple_choice"] == 0
    check_rounds(root, 0)   # one conversation per image, no lettered turn
    with pytest.raises(ValueError, match="number of multiple-choice rounds"):
        prepare(root, multiple_choice=-1)
