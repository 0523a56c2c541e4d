"""Scorers against LLaVA-1.5's own scripts (llava-torch), on 10,000 random and fuzzed predictions each:
`eval_pope.py` (POPE), `m4c_evaluator.py` (TextVQA accuracy and the EvalAI answer processor that
VQAv2's server and TextVQA use), `eval_science_qa.py` (ScienceQA, run as the script it is),
`eval_textvqa.py` (its prompt parser and scorer on lmm's prompts and answers).
lmm must give exactly their numbers, prediction by prediction.

GQA's official eval.py and MME's calculation tool are not in the wheel: their procedure is replayed
from its description on the files lmm writes for them (the last two tests)."""
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


@pytest.mark.parametrize("ocr", [True, False])
def test_textvqa_equals_eval_textvqa(predictions, tmp_path, monkeypatch, ocr):
    """LLaVA's eval_textvqa.py, given lmm's prompts and answers in its result-file layout: its
    `prompt_processor` must read each prompt back to the question, and its accuracy equal lmm's."""
    from lmm.eval.textvqa import TextVQA

    script = pytest.importorskip("llava.eval.eval_textvqa")
    rng = random.Random(15)
    pool = ["yes", "no", "2", "stop", "Coca-Cola", "coca cola", "the bus", "10,000", "dakota", "3.5"]
    words = ["what", "is", "the", "brand", "of", "this", "camera", "written", "on", "sign", "who"]
    data, ocr_data = [], []
    for k, p in enumerate(predictions[:2000]):
        image_id = f"{k:016x}"   # one question per image: LLaVA looks answers up by (image, question)
        question = " ".join(rng.choice(words) for _ in range(rng.randint(2, 7))) + "?"
        data.append({"question_id": k, "image_id": image_id, "question": question,
                     "answers": [rng.choice(pool + [p]) for _ in range(10)]})
        ocr_data.append({"image_id": image_id, "ocr_tokens": [rng.choice(pool) for _ in range(rng.randint(0, 4))]})
    (tmp_path / "val.json").write_text(json.dumps({"data": data}))
    (tmp_path / "ocr.json").write_text(json.dumps({"data": ocr_data}))
    bench = TextVQA(questions=str(tmp_path / "val.json"), image_root=str(tmp_path), ocr=ocr,
                    ocr_tokens=str(tmp_path / "ocr.json") if ocr else None)
    answers = {r.key: p for r, p in zip(bench.requests(), predictions)}
    ours, _ = bench.score(answers)
    result_file = tmp_path / "answers.jsonl"   # model_vqa_loader's layout; LLaVA's question_id is the image id
    result_file.write_text("".join(json.dumps({"question_id": q["image_id"], "prompt": r.prompt,
                                               "text": answers[r.key]}) + "\n"
                                   for q, r in zip(data, bench.requests())))
    seen = []

    class Recording(script.TextVQAAccuracyEvaluator):
        def eval_pred_list(self, pred_list):
            seen.append(super().eval_pred_list(pred_list))
            return seen[-1]

    monkeypatch.setattr(script, "TextVQAAccuracyEvaluator", Recording)
    with contextlib.redirect_stdout(io.StringIO()):
        script.eval_single(str(tmp_path / "val.json"), str(result_file))
    assert ours["n_scored"] == 2000 and ours["accuracy"] == pytest.approx(seen[0], abs=1e-12)


def test_gqa_equals_the_official_procedure(predictions, tmp_path):
    """GQA's scorer is not in the llava wheel. LLaVA-1.5's `convert_gqa_for_eval.py` writes each answer
    as `text.rstrip('.').lower()` into `[{"questionId", "prediction"}]`, and the official `eval.py`
    (--tier testdev_balanced) counts a balanced question right when its prediction equals the gold
    answer string. This replays that procedure (our transcription) on the file lmm writes."""
    from lmm.eval.gqa import GQA

    rng = random.Random(16)
    golds = ["yes", "no", "red", "left", "the bus", "t-shirt", "man's"]
    questions = {f"q{k}": {"imageId": "i", "question": "What?", "answer": rng.choice(golds),
                           "isBalanced": k % 7 != 0, "types": {"structural": "query", "semantic": "attr"}}
                 for k in range(N)}
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    bench = GQA(questions=str(tmp_path / "testdev_balanced_questions.json"), image_root=str(tmp_path))
    answers = dict(zip(questions, predictions))
    ours, records = bench.score(answers)
    (path,) = bench.write_files(answers, records, tmp_path / "out")
    submitted = {row["questionId"]: row["prediction"] for row in json.loads(path.read_text())}
    balanced = [k for k, q in questions.items() if q["isBalanced"]]   # the questions LLaVA's jsonl asks
    assert submitted == {k: answers[k].rstrip(".").lower() for k in balanced}
    official = sum(submitted[k] == questions[k]["answer"] for k in balanced) / len(balanced)
    assert ours["accuracy"] == official and ours["n_scored"] == len(balanced)


def test_mme_equals_the_calculation_tool(predictions, tmp_path):
    """MME's `eval_tool/calculation.py` is not in the llava wheel. It reads `<task>.txt` files of
    `image<TAB>question<TAB>gold<TAB>prediction` lines, two per image; lower-cases gold and prediction;
    reads the prediction as yes/no/other; per task adds 100 * accuracy and 100 * accuracy+ (both
    questions of an image right). This replays that procedure (our transcription) on the files lmm writes."""
    from lmm.eval.mme import MME, PERCEPTION

    rng = random.Random(17)
    tasks = ["existence", "OCR", "code_reasoning"]
    keys = []
    for k in range(0, N, 2):
        task = tasks[k % 3]
        (tmp_path / task).mkdir(exist_ok=True)
        (tmp_path / task / f"{k:05d}.jpg").touch()
        lines = [f"Is it {k} {j}? Please answer yes or no.\t{rng.choice(['Yes', 'No'])}" for j in range(2)]
        (tmp_path / task / f"{k:05d}.txt").write_text("\n".join(lines) + "\n")
        keys += [f"{task}/{k:05d}/0", f"{task}/{k:05d}/1"]
    bench = MME(root=str(tmp_path), tasks=tasks)
    answers = {key: p.replace("\n", " ") for key, p in zip(keys, predictions)}   # the file's lines are one answer
    ours, records = bench.score(answers)
    bench.write_files(answers, records, tmp_path / "out")
    scores = {}
    for task in tasks:
        lines = (tmp_path / "out" / "mme_results" / f"{task}.txt").read_text(encoding="utf-8").splitlines(True)
        right, plus = [], []
        for pair in (lines[i:i + 2] for i in range(0, len(lines), 2)):
            ok = []
            for line in pair:
                _, _, gold, pred = line.split("\t")
                pred = pred.lower()
                label = pred if pred in ("yes", "no") else next((w for w in ("yes", "no") if w in pred[:4]), "other")
                ok.append(label == gold.lower())
            right += ok
            plus.append(all(ok))
        scores[task] = 100 * sum(right) / len(right) + 100 * sum(plus) / len(plus)
    for task in tasks:
        assert ours[task]["score"] == pytest.approx(scores[task], abs=1e-9)
    assert ours["perception"] == pytest.approx(sum(scores[t] for t in tasks if t in PERCEPTION), abs=1e-9)
