"""Scorers against LLaVA-1.5's own scripts (llava-torch), on 10,000 random and fuzzed predictions each:
`eval_pope.py` (POPE), `m4c_evaluator.py` (TextVQA accuracy and the EvalAI answer processor that
VQAv2's server and TextVQA use), `eval_science_qa.py` (ScienceQA, run as the script it is).
lmm must give exactly their numbers, prediction by prediction."""
from __future__ import annotations

import contextlib
import io
import json
import random
import re
import runpy
import sys

import pytest

from lmm.eval.metrics import evalai_answer, textvqa_accuracy
from lmm.eval.pope import binary_metrics, parse_yes_no
from lmm.eval.scienceqa import parse_choice

pytest.importorskip("tests.reference_llava")
eval_pope = pytest.importorskip("llava.eval.eval_pope")
m4c = pytest.importorskip("llava.eval.m4c_evaluator")

N = 10_000
PIECES = ["yes", "Yes", "YES", "no", "No", "NO", "not", "Not", "no.", "No,", "yes.", "there", "is", "a", "dog",
          "in", "the", "image", "There", "isn't", "cannot", "none", ".", ",", "!", "?", "'", "\"", "-", "/", ":",
          "2", "two", "10,000", "3.5", "a.m.", "an", "the", "won't", "dont", "Dr.", "it's", "its", "  ", "\n",
          "A", "B", "C", "D", "E", "F", "(B)", "B.", "The answer is", "The answer is C.", "é", "東京", "😀", ""]


def fuzz(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return rng.choice(PIECES)
    words = [rng.choice(PIECES) for _ in range(rng.randint(0, 8))]
    sep = rng.choice([" ", " ", "", ", ", ". "])
    return sep.join(words)


@pytest.fixture(scope="module")
def predictions() -> list[str]:
    rng = random.Random(11)
    return [fuzz(rng) for _ in range(N)]


def test_pope_equals_eval_pope(predictions, tmp_path):
    rng = random.Random(12)
    labels = [rng.choice(["yes", "no"]) for _ in predictions]
    label_file = tmp_path / "labels.jsonl"
    label_file.write_text("".join(json.dumps({"label": lab}) + "\n" for lab in labels))
    answers = [{"text": p} for p in predictions]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        eval_pope.eval_pope(answers, str(label_file))  # rewrites each answer's text to its parse; prints metrics
    assert [parse_yes_no(p) for p in predictions] == [a["text"] for a in answers]
    printed = dict(re.findall(r"^(Accuracy|Precision|Recall|F1 score|Yes ratio): (\S+)$", out.getvalue(), re.MULTILINE))
    ours = binary_metrics([parse_yes_no(p) == "yes" for p in predictions], [lab == "yes" for lab in labels])
    assert {k: float(v) for k, v in printed.items()} == {
        "Accuracy": ours["accuracy"], "Precision": ours["precision"], "Recall": ours["recall"],
        "F1 score": ours["f1"], "Yes ratio": ours["yes_ratio"]}


def test_evalai_processor_equals_m4c(predictions):
    processor = m4c.EvalAIAnswerProcessor()
    assert [evalai_answer(p) for p in predictions] == [processor(p) for p in predictions]


def test_textvqa_accuracy_equals_m4c(predictions):
    rng = random.Random(13)
    pool = ["yes", "no", "2", "two", "stop", "Coca-Cola", "coca cola", "the bus", "10,000", "a dog", "3.5"]
    gts = [[rng.choice(pool + [p]) for _ in range(10)] for p in predictions]
    pred_list = [{"pred_answer": p, "gt_answers": g} for p, g in zip(predictions, gts)]
    reference = m4c.TextVQAAccuracyEvaluator().eval_pred_list(pred_list)
    ours = sum(textvqa_accuracy(p, g) for p, g in zip(predictions, gts)) / len(predictions)
    assert ours == pytest.approx(reference, abs=1e-12)


def test_scienceqa_equals_eval_science_qa(predictions, tmp_path, monkeypatch):
    """The script itself (its logic lives under `__main__`), on a problems file of our making."""
    rng = random.Random(14)
    problems, results = {}, []
    for k, p in enumerate(predictions):
        n = rng.randint(2, 5)
        problems[str(k)] = {"choices": [f"c{i}" for i in range(n)], "answer": rng.randrange(n), "image": None}
        results.append({"question_id": str(k), "text": p, "prompt": "<image>\nq" if k % 2 else "q"})
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    monkeypatch.setattr(sys, "argv", ["eval_science_qa.py", "--base-dir", str(tmp_path), "--result-file",
                                      str(tmp_path / "answers.jsonl"), "--output-file", str(tmp_path / "out.json"),
                                      "--output-result", str(tmp_path / "result.json")])
    with contextlib.redirect_stdout(io.StringIO()):
        runpy.run_module("llava.eval.eval_science_qa", run_name="__main__")
    reference = json.loads((tmp_path / "result.json").read_text())
    ours = {k: parse_choice(p, len(problems[k]["choices"])) for k, p in zip(problems, predictions)}
    assert {k: (-1 if v is None else v) for k, v in ours.items()} == reference["results"]
    correct = sum(ours[k] == problems[k]["answer"] for k in problems)
    assert correct == reference["correct"] and reference["count"] == N
