"""easy-vqa's test set written in three real benchmark formats, so the demo is scored by the same
loaders and scorers as the paper's benchmarks:

    eval/vqa_questions.json, eval/vqa_annotations.json   VQAv2 format: every test question, its answer
        given by all ten "humans" (so VQA accuracy is exact match); answer_type is the question's kind
        (color, shape, yes/no), so the per-answer-type breakdown is the per-kind accuracy
    eval/pope/easyvqa_pope_{shape,color}.json           POPE format: per test image one question about
        its shape (or colour) with answer yes and one about another shape (colour) with answer no
    eval/mc.tsv                                          MMBench format (base64 images): per test image
        "what shape ..." over the three shapes and "what color ..." over four colours, options shuffled

The demo's SFT conversations ask each train image's shape and colour in this form too
(`lmm.data.easyvqa.prepare(multiple_choice=True)`, its default). A model that answers the option's text
instead of its letter is read by the MMBench scorer's option matching, as a LLaVA model answering that way.
"""
from __future__ import annotations

import base64
import csv
import json
import random
from pathlib import Path

SHAPE_QUESTION = "what shape is in the image?"
COLOR_QUESTION = "what color is the shape?"
LETTERS = "ABCD"


def choices(kind: str, gold: str, shapes, colors, rng: random.Random) -> list[str]:
    """The options of a multiple-choice question: every shape, or the colour and three others."""
    pool = list(shapes) if kind == "shape" else [gold, *rng.sample([c for c in colors if c != gold], 3)]
    rng.shuffle(pool)
    return pool


def write_forms(root: Path, test: dict, facts_of, kind_of, shapes, colors, seed: int = 0) -> dict:
    """`test`: image id -> [(question, answer)]; returns counts for the manifest."""
    rng = random.Random(seed)
    out = root / "eval"
    (out / "pope").mkdir(parents=True, exist_ok=True)
    questions, annotations, qid = [], [], 0
    for i in sorted(test):
        for q, a in test[i]:
            questions.append({"image_id": i, "question": q, "question_id": qid})
            annotations.append({"question_id": qid, "image_id": i, "question_type": kind_of(a),
                                "answer_type": kind_of(a), "multiple_choice_answer": a,
                                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                            for k in range(10)]})
            qid += 1
    (out / "vqa_questions.json").write_text(json.dumps({"data_subtype": "test", "questions": questions}))
    (out / "vqa_annotations.json").write_text(json.dumps({"data_subtype": "test", "annotations": annotations}))

    pope = {"shape": [], "color": []}
    mc_rows, no_facts = [], 0
    for i in sorted(test):
        facts = facts_of(test[i])
        if len(facts) < 2:
            no_facts += 1
            continue
        image = f"{i}.png"
        other_shape = rng.choice([s for s in shapes if s != facts["shape"]])
        other_color = rng.choice([c for c in colors if c != facts["color"]])
        for split, text_yes, text_no in (
                ("shape", f"is there a {facts['shape']} in the image?", f"is there a {other_shape} in the image?"),
                ("color", f"is there a {facts['color']} shape in the image?",
                 f"is there a {other_color} shape in the image?")):
            pair = [(text_yes, "yes"), (text_no, "no")]
            rng.shuffle(pair)
            for text, label in pair:
                pope[split].append({"question_id": len(pope[split]), "image": image, "text": text, "label": label})
        encoded = base64.b64encode((root / "images" / "test" / image).read_bytes()).decode()
        for kind, question in (("shape", SHAPE_QUESTION), ("color", COLOR_QUESTION)):
            options = choices(kind, facts[kind], shapes, colors, rng)
            row = {"index": len(mc_rows), "question": question, "hint": "",
                   **{LETTERS[k]: (options[k] if k < len(options) else "") for k in range(4)},
                   "answer": LETTERS[options.index(facts[kind])], "category": kind, "l2-category": kind,
                   "split": "test", "image": encoded}
            mc_rows.append(row)
    for split, rows in pope.items():
        with (out / "pope" / f"easyvqa_pope_{split}.json").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    with (out / "mc.tsv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(mc_rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(mc_rows)
    return {"vqa_questions": qid, "pope_questions": {s: len(r) for s, r in pope.items()},
            "mc_questions": len(mc_rows), "test_images_without_facts": no_facts}
