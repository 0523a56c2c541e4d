"""`evaluation.convention=lmms_eval` against lmms-eval 0.7.3's own task utilities (tests/reference_lmms_eval.py).

Scorers: on 10,000 random and fuzzed predictions each, lmm's benchmarks scoring under the `lmms_eval`
convention give exactly the numbers of lmms-eval's `process_results` and aggregation functions, and the
default `llava` convention gives LLaVA's (checked in tests/test_fidelity_scorers.py). Where the two
conventions disagree on these predictions is asserted too, so a convention that silently fell back
to the other would fail.

Prompts: each task's `doc_to_text` with its default `lmms_eval_specific_kwargs` (read from its yaml)
builds the same prompt as lmm's benchmark, so the conventions differ only in scoring.
"""
from __future__ import annotations

import json
import random
import re

import pytest

from lmm.eval.gqa import GQA, lmms_eval_match
from lmm.eval.metrics import textvqa_accuracy
from lmm.eval.mme import MME
from lmm.eval.pope import POPE
from lmm.eval.scienceqa import ScienceQA, build_prompt
from lmm.eval.textvqa import textvqa_prompt
from lmm.eval.vqav2 import lmms_eval_vqa_accuracy
from tests.test_fidelity_scorers import fuzz

lmms = pytest.importorskip("tests.reference_lmms_eval")

N = 10_000
SHORT = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def predictions() -> list[str]:
    rng = random.Random(31)
    # fuzz() and answers a model gives to these benchmarks, in the spellings that split the conventions
    extra = ["yes", "no", "Yes.", "No.", "y", "n", "Y", "yes, there is", "no there isn't", " no", "noo", "nope",
             "A", "a", "B.", "b.", "C.D", "The answer is B.", "(A)", "E", "e", "red.", "Red!", "the bus", "two",
             "2", "it's red", "its", "coca-cola", "Coca Cola", "10,000", "3.5"]
    return [rng.choice(extra) if rng.random() < 0.4 else fuzz(rng) for _ in range(N)]


def kwargs_of(task: str, file: str) -> dict:
    """A task yaml's default lmms_eval_specific_kwargs (its `!function` tags are not needed here)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load(lmms.task_yaml(task, file), Loader=Loader)["lmms_eval_specific_kwargs"]["default"]


# ---- scorers ------------------------------------------------------------------------------------------


def test_pope_equals_lmms_eval(predictions, tmp_path):
    rng = random.Random(32)
    splits = ["random", "popular", "adversarial"]
    rows = {s: [] for s in splits}
    for k, p in enumerate(predictions):
        rows[splits[k % 3]].append({"question_id": k, "image": "x.jpg", "text": "Is there a dog?",
                                    "label": rng.choice(["yes", "no"]), "answer": p})
    for s in splits:
        (tmp_path / f"pope_{s}.json").write_text("".join(json.dumps(r) + "\n" for r in rows[s]))
    bench = POPE(annotation_pattern=str(tmp_path / "pope_{split}.json"), image_root=str(tmp_path))
    answers = {f"{s}/{r['question_id']}": r["answer"] for s in splits for r in rows[s]}

    def reference(docs):
        results = [lmms.pope.pope_process_results({"question_id": d["question_id"], "answer": d["label"]},
                                                  [d["answer"]])["pope_accuracy"] for d in docs]
        return {"accuracy": lmms.pope.pope_aggregate_accuracy(results),
                "precision": lmms.pope.pope_aggregate_precision(results),
                "recall": lmms.pope.pope_aggregate_recall(results), "f1": lmms.pope.pope_aggregate_f1_score(results),
                "yes_ratio": lmms.pope.pope_aggregate_yes_ratio(results)}

    assert bench.use_convention("lmms_eval") == "lmms_eval"
    ours, _ = bench.score(answers)
    for s in splits:   # lmms-eval's pope_random / pope_pop / pope_adv tasks
        assert {k: ours[s][k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")} == reference(rows[s])
    pooled = reference([r for s in splits for r in rows[s]])   # its `pope` task
    assert (ours["f1"], ours["accuracy"]) == (pooled["f1"], pooled["accuracy"])
    bench.use_convention("llava")
    assert bench.score(answers)[0]["f1"] != ours["f1"]   # the conventions differ on these answers


def test_mme_equals_lmms_eval(predictions, tmp_path):
    rng = random.Random(33)
    tasks = ["existence", "count", "OCR", "code_reasoning", "text_translation"]
    docs = []
    for k in range(0, N, 2):   # two questions per image, as MME has
        task = tasks[k % len(tasks)]
        (tmp_path / task).mkdir(exist_ok=True)
        (tmp_path / task / f"{k:05d}.png").touch()   # scoring never opens the image
        lines = []
        for j in range(2):
            gold = rng.choice(["Yes", "No"])
            lines.append(f"Is it {k}-{j}? Please answer yes or no.\t{gold}")
            docs.append({"key": f"{task}/{k:05d}/{j}", "question_id": f"{task}/{k:05d}.png", "category": task,
                         "answer": gold, "pred": predictions[k + j]})
        (tmp_path / task / f"{k:05d}.txt").write_text("\n".join(lines) + "\n")
    bench = MME(root=str(tmp_path), tasks=tasks)
    bench.use_convention("lmms_eval")
    ours, _ = bench.score({d["key"]: d["pred"] for d in docs})
    processed = [lmms.mme.mme_process_results(d, [d["pred"]]) for d in docs]
    perception = [v for r in processed for k, v in r.items() if k == "mme_perception_score"]
    cognition = [v for r in processed for k, v in r.items() if k == "mme_cognition_score"]
    assert ours["perception"] == pytest.approx(lmms.mme.mme_aggregate_results(perception), abs=1e-9)
    assert ours["cognition"] == pytest.approx(lmms.mme.mme_aggregate_results(cognition), abs=1e-9)
    assert [lmms.mme.parse_pred_ans(p) for p in predictions] == [
        __import__("lmm.eval.mme", fromlist=["x"]).parse_yes_no_lmms_eval(p) for p in predictions]
    bench.use_convention("llava")
    assert bench.score({d["key"]: d["pred"] for d in docs})[0]["perception"] != ours["perception"]


def test_gqa_equals_lmms_eval(predictions, tmp_path):
    rng = random.Random(34)
    golds = ["yes", "no", "red", "left", "the bus", "coca-cola", "t-shirt", "10,000", "3.5", "man's"]
    questions = {str(k): {"imageId": "i", "question": "What?", "answer": rng.choice(golds), "isBalanced": True,
                          "types": {"structural": rng.choice(["query", "verify"]), "semantic": "attr"}}
                 for k in range(N)}
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps(questions))
    bench = GQA(questions=str(path), image_root=str(tmp_path))
    answers = dict(zip(questions, predictions))
    bench.use_convention("lmms_eval")
    ours, _ = bench.score(answers)
    reference = lmms.exact_match_hf_evaluate(predictions=predictions, references=[q["answer"] for q in questions.values()],
                                             ignore_case=True, ignore_punctuation=True)["exact_match"]
    assert ours["accuracy"] == pytest.approx(reference, abs=1e-12)
    assert [lmms_eval_match(p, q["answer"]) for p, q in zip(predictions, questions.values())] == [
        bool(lmms.exact_match_hf_evaluate(predictions=[p], references=[q["answer"]], ignore_case=True,
                                          ignore_punctuation=True)["exact_match"])
        for p, q in zip(predictions, questions.values())]
    bench.use_convention("llava")
    assert bench.score(answers)[0]["accuracy"] != ours["accuracy"]


def human_answers(rng: random.Random, prediction: str) -> list[str]:
    pool = ["yes", "no", "2", "two", "stop", "Coca-Cola", "coca cola", "the bus", "10,000", "a dog", "3.5", "it's",
            "Yes", "red."]
    return [rng.choice(pool + [prediction]) for _ in range(10)]


def test_vqav2_equals_lmms_eval(predictions):
    rng = random.Random(35)
    differ = 0
    for p in predictions:
        gts = human_answers(rng, p)
        doc = {"question_id": 1, "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(gts)]}
        reference = lmms.vqav2.vqav2_process_results(doc, [p])["exact_match"]
        assert lmms_eval_vqa_accuracy(p, gts) == pytest.approx(reference, abs=1e-12), (p, gts)
        from lmm.eval.metrics import evalai_answer, vqa_accuracy
        differ += vqa_accuracy(evalai_answer(p), gts) != pytest.approx(reference, abs=1e-12)
    assert differ > 0


def test_textvqa_equals_lmms_eval(predictions):
    """lmms-eval's TextVQA scorer is LLaVA's: the one lmm scorer must equal both."""
    rng = random.Random(36)
    for p in predictions:
        gts = human_answers(rng, p)
        reference = lmms.textvqa.textvqa_process_results({"question_id": 1, "answers": list(gts)}, [p])["exact_match"]
        assert textvqa_accuracy(p, gts) == pytest.approx(reference, abs=1e-12), (p, gts)


def test_scienceqa_equals_lmms_eval(predictions, tmp_path):
    rng = random.Random(37)
    problems = {}
    for k in range(N):
        n = rng.randint(2, 5)
        problems[str(k)] = {"question": "q", "choices": [f"c{i}" for i in range(n)], "answer": rng.randrange(n),
                            "hint": "", "image": "image.png"}
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    bench = ScienceQA(problems=str(tmp_path / "problems.json"), pid_splits=str(tmp_path / "pid_splits.json"),
                      image_root=str(tmp_path))
    answers = dict(zip(problems, predictions))
    bench.use_convention("lmms_eval")
    ours, records = bench.score(answers)
    reference = [lmms.sqa.sqa_process_results(p, [answers[k]])["exact_match"] for k, p in problems.items()]
    assert [float(r["correct"]) for r in records] == reference
    assert ours["accuracy"] == pytest.approx(sum(reference) / N, abs=1e-12)
    bench.use_convention("llava")
    assert bench.score(answers)[0]["accuracy"] != ours["accuracy"]


def test_an_unknown_convention_lists_the_valid_ones():
    bench = ScienceQA(problems="p.json", pid_splits="s.json", image_root=".")
    with pytest.raises(ValueError, match="llava, lmms_eval"):
        bench.use_convention("lmms-eval")


# ---- prompts ------------------------------------------------------------------------------------------

QUESTIONS = ["What color is the bus?", "Is there a dog 😀 in the image?", "What is written on the sign «STOP»?",
             "How many people are there?"]


def test_short_answer_prompts_equal_lmms_eval(tmp_path):
    for task, file in (("pope", "pope.yaml"), ("gqa", "gqa.yaml"), ("vqav2", "_default_template_vqav2_yaml")):
        assert kwargs_of(task, file)["post_prompt"] == SHORT
    pope_rows = [{"question_id": k, "image": "x.jpg", "text": q, "label": "yes"} for k, q in enumerate(QUESTIONS)]
    (tmp_path / "pope_random.json").write_text("".join(json.dumps(r) + "\n" for r in pope_rows))
    pope = POPE(annotation_pattern=str(tmp_path / "pope_{split}.json"), image_root=str(tmp_path), splits=["random"])
    kwargs = kwargs_of("pope", "pope.yaml")
    assert [r.prompt for r in pope.requests()] == [lmms.pope.pope_doc_to_text({"question": q}, kwargs)
                                                  for q in QUESTIONS]
    gqa = {str(k): {"imageId": "i", "question": q, "answer": "a"} for k, q in enumerate(QUESTIONS)}
    (tmp_path / "gqa.json").write_text(json.dumps(gqa))
    kwargs = kwargs_of("gqa", "gqa.yaml")
    assert [r.prompt for r in GQA(questions=str(tmp_path / "gqa.json"), image_root=str(tmp_path)).requests()] == [
        lmms.gqa_doc_to_text({"question": q}, kwargs) for q in QUESTIONS]


def test_mme_prompt_equals_lmms_eval(tmp_path):
    kwargs = kwargs_of("mme", "mme.yaml")
    bench = MME(root=str(tmp_path))
    for q in QUESTIONS:
        official = f"{q} Please answer yes or no."
        assert bench.prompt(official) == lmms.mme.mme_doc_to_text({"question": official}, kwargs)


def test_textvqa_and_scienceqa_prompts_equal_lmms_eval():
    kwargs = kwargs_of("textvqa", "_default_template_textvqa_yaml")
    tokens = ["STOP", "coca", "cola", "東京"]
    for q in ("what is written on the sign?", "what brand is this camera?"):
        doc = {"question": q, "ocr_tokens": tokens}
        assert textvqa_prompt(q, None, SHORT.strip()) == lmms.textvqa.textvqa_doc_to_text(doc, kwargs)
        with_ocr = lmms.textvqa.textvqa_doc_to_text(doc, {**kwargs, "ocr": True})
        assert textvqa_prompt(q, tokens, SHORT.strip()) == with_ocr
    kwargs = kwargs_of("scienceqa", "scienceqa_img.yaml")
    for hint in ("", "The magnets attract."):
        doc = {"hint": hint, "question": "Which is a mammal?", "choices": ["cat", "trout", "frog 😀"]}
        assert build_prompt(doc, re.sub(r"^\n", "", kwargs["post_prompt"])) == lmms.sqa.sqa_doc_to_text(doc, kwargs)


# ---- MMBench (the judge-free mmbench_en_dev_static task) ----------------------------------------------

OPTION_TEXTS = ["a cat", "a dog", "red", "blue", "Paris", "the left one", "2", "A", "none of these", "東京"]


def mmbench_questions(rng: random.Random, n_questions: int) -> list[dict]:
    out = []
    for k in range(n_questions):
        n = rng.randint(2, 4)
        out.append({"index": k, "question": f"Which one {k}?", "hint": rng.choice([None, "Look closely."]),
                    "options": rng.sample(OPTION_TEXTS, n), "gold": rng.randrange(n)})
    return out


def write_tsv(path, questions) -> None:
    import base64
    import io

    from tests.test_fidelity_eval_scripts import photo

    buf = io.BytesIO()
    photo(32, 24, 0).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    lines = ["index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tl2-category\tsplit\timage"]
    for q in questions:
        options = q["options"] + [""] * (4 - len(q["options"]))
        lines.append("\t".join([str(q["index"]), q["question"], q["hint"] or "", *options, "ABCD"[q["gold"]], "cat",
                                "l2", "dev", image]))
    path.write_text("\n".join(lines) + "\n")


def lmms_doc(q: dict, shift: int) -> dict:
    """The lmms-lab MMBench row of one rotation (index + shift * 1e6, options rotated, answer relabelled)."""
    n = len(q["options"])
    shown = q["options"][shift:] + q["options"][:shift]
    doc = {"index": q["index"] + shift * 1_000_000, "question": q["question"],
           "hint": q["hint"] if q["hint"] is not None else float("nan"), "answer": "ABCD"[(q["gold"] - shift) % n],
           "category": "cat", "L2-category": "l2", "source": "s", "split": "dev"}
    doc.update({c: (shown[i] if i < n else float("nan")) for i, c in enumerate("ABCD")})
    return doc


def test_mmbench_prompt_equals_lmms_eval(tmp_path):
    from lmm.eval.mmbench import MMBench

    questions = mmbench_questions(random.Random(38), 40)
    write_tsv(tmp_path / "mmbench.tsv", questions)
    bench = MMBench(questions=str(tmp_path / "mmbench.tsv"))
    bench.use_convention("lmms_eval")
    kwargs = kwargs_of("mmbench", "_default_template_mmbench_en_yaml")
    reference = [lmms.mmbench.mmbench_doc_to_text(lmms_doc(q, r), kwargs)
                 for q in questions for r in range(len(q["options"]))]
    assert [r.prompt for r in bench.requests()] == reference
    bench.use_convention("llava")
    assert bench.requests()[0].prompt != reference[0]


def test_mmbench_reading_equals_lmms_eval(predictions):
    from lmm.eval import mmbench_lmms_eval as ours

    rng = random.Random(39)
    evaluator = lmms.mmbench.mmbench_evaluator
    for p in predictions + [f"{rng.choice(OPTION_TEXTS)} {rng.choice(['', 'A', '(B)', 'C.'])}" for _ in range(2000)]:
        options = rng.sample(OPTION_TEXTS, rng.randint(2, 4))
        choices = dict(zip("ABCD", options))
        assert ours.infer(p, options) == (evaluator.can_infer(p, dict(choices)) or None), (p, options)
        letters = sorted(choices)
        assert ours.extract_letter(p, letters) == (lmms.mcq.extract_mcq_answer(p, choices=letters) or None), p


def test_mmbench_equals_lmms_eval_static(predictions, tmp_path):
    """Circular accuracy over ~10,000 answers (every rotation of ~3,300 questions) equals
    `MMBench_Evaluator.eval_result(..., "static")`."""
    import contextlib
    import io

    from lmm.eval.mmbench import MMBench

    rng = random.Random(40)
    questions = mmbench_questions(rng, 3300)
    write_tsv(tmp_path / "mmbench.tsv", questions)
    bench = MMBench(questions=str(tmp_path / "mmbench.tsv"))
    bench.use_convention("lmms_eval")
    pool = iter(predictions)
    answers, rows = {}, []
    for q in questions:
        for r in range(len(q["options"])):
            shown = q["options"][r:] + q["options"][:r]
            gold = "ABCD"[(q["gold"] - r) % len(shown)]
            # half the answers say the right letter or text (most questions would be wrong at random)
            answer = next(pool) if rng.random() < 0.5 else rng.choice([gold, f"{gold}.", shown["ABCD".index(gold)]])
            answers[f"{q['index']}/{r}"] = answer
            doc = lmms_doc(q, r)
            rows.append(lmms.mmbench.mmbench_process_results(doc, [answer])["gpt_eval_score"])
    ours, _ = bench.score(answers)
    with contextlib.redirect_stdout(io.StringIO()):
        overall, _, _ = lmms.mmbench.mmbench_evaluator.eval_result(rows, eval_method="static")
    assert len(rows) > 9000 and 0.05 < ours["accuracy"] < 0.95
    assert ours["accuracy"] == pytest.approx(overall, abs=1e-12)
    bench.use_convention("llava")
    assert bench.score(answers)[0]["accuracy"] != ours["accuracy"]
