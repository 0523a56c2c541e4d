"""VQAv2, GQA and TextVQA: loaders on tiny files in the real formats, scorers on hand-made answers,
submission/prediction files, bad input, and the benchmark configs."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from lmm.eval.benchmark import SHORT_ANSWER
from lmm.eval.gqa import GQA
from lmm.eval.textvqa import TextVQA
from lmm.eval.vqav2 import VQAv2
from lmm.model.spec import build

CONF = Path(__file__).resolve().parents[1] / "conf" / "benchmark"


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), "red").save(path)
    return path


def write_json(path: Path, data) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def write_jsonl(path: Path, rows) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def humans(*groups):
    """VQA annotation answers from (answer, count) pairs."""
    answers = [a for a, n in groups for _ in range(n)]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


# ---------------------------------------------------------------- VQAv2

@pytest.fixture
def vqav2_val(tmp_path):
    root = tmp_path / "vqav2"
    for image_id in (42, 7):
        image(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    questions = write_json(root / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": "val2014",
        "questions": [{"image_id": 42, "question": "What color is the cat?", "question_id": 42000},
                      {"image_id": 42, "question": "How many cats?", "question_id": 42001},
                      {"image_id": 7, "question": "Is it sunny?", "question_id": 7000}]})
    annotations = write_json(root / "v2_mscoco_val2014_annotations.json", {"info": {}, "license": {}, "annotations": [
        {"question_id": 42000, "image_id": 42, "question_type": "what color is the", "answer_type": "other",
         "multiple_choice_answer": "gray", "answers": humans(("black", 2), ("gray", 8))},
        {"question_id": 42001, "image_id": 42, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": humans(("2", 10))},
        {"question_id": 7000, "image_id": 7, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "yes", "answers": humans(("yes", 10))},
    ]})
    return root, questions, annotations


def test_vqav2_official_files_scored_as_the_official_scorer(vqav2_val):
    root, questions, annotations = vqav2_val
    bench = VQAv2(questions, str(root / "val2014"), annotations=annotations)
    bench.check()
    requests = bench.requests()
    assert [r.key for r in requests] == ["42000", "42001", "7000"]
    assert requests[0].prompt == f"What color is the cat?\n{SHORT_ANSWER}"
    assert requests[2].images == [root / "val2014" / "COCO_val2014_000000000007.jpg"]
    # "Black." -> "black": 2 of 10 humans -> 0.6; "Two" -> "2": 10 of 10 -> 1; "No" vs ten "yes" -> 0.
    metrics, records = bench.score({"42000": "Black.", "42001": "Two", "7000": "No"})
    assert metrics["accuracy"] == pytest.approx((0.6 + 1 + 0) / 3)
    assert metrics["per_answer_type"] == {"number": {"accuracy": 1.0, "n": 1},
                                          "other": {"accuracy": pytest.approx(0.6), "n": 1},
                                          "yes/no": {"accuracy": 0.0, "n": 1}}
    assert metrics["n"] == 3 and metrics["n_missing"] == 0
    assert bench.columns(metrics) == {"VQAv2": pytest.approx(100 * 1.6 / 3)}  # 53.33
    first = records[0]
    assert first["question_id"] == 42000 and first["answer"] == "Black." and first["processed"] == "black"
    assert first["question"] == "What color is the cat?" and first["gold"][:2] == ["black", "black"]
    assert first["score"] == pytest.approx(0.6) and first["answer_type"] == "other"


def test_vqav2_missing_answers_and_limit(vqav2_val):
    root, questions, annotations = vqav2_val
    bench = VQAv2(questions, str(root / "val2014"), annotations=annotations, limit=2)
    assert [r.key for r in bench.requests()] == ["42000", "42001"]
    metrics, _ = bench.score({"42001": "2"})  # 42000 unanswered: scored as "" -> 0
    assert metrics == {"n": 2, "n_missing": 1, "accuracy": 0.5,
                       "per_answer_type": {"number": {"accuracy": 1.0, "n": 1}, "other": {"accuracy": 0.0, "n": 1}}}


def test_vqav2_scores_the_answer_as_llava_submits_it(tmp_path):
    # LLaVA uploads EvalAI-processed answers and the server applies the official scorer on top, so a
    # possessive is split ("man's" -> "man 's") and no longer matches ten humans' "man's": 0, where the
    # official scorer alone on the raw answer would give 1.
    image(tmp_path / "COCO_val2014_000000000001.jpg")
    questions = write_json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 1, "question": "Whose hat is it?", "question_id": 10}]})
    annotations = write_json(tmp_path / "a.json", {"annotations": [
        {"question_id": 10, "image_id": 1, "question_type": "whose", "answer_type": "other",
         "answers": humans(("man's", 10))}]})
    metrics, records = VQAv2(questions, str(tmp_path), annotations=annotations).score({"10": "Man's"})
    assert records[0]["processed"] == "man 's" and metrics["accuracy"] == 0.0


def test_vqav2_llava_jsonl_and_submission(tmp_path, caplog):
    root = tmp_path / "vqav2"
    image(root / "test2015" / "COCO_test2015_000000262144.jpg")
    suffixed = f"Is the ball flying towards the batter?\n{SHORT_ANSWER}"
    questions = write_jsonl(root / "llava_vqav2_mscoco_test-dev2015.jsonl", [
        {"question_id": 262144000, "image": "COCO_test2015_000000262144.jpg", "text": suffixed, "category": "default"},
        {"question_id": 262144002, "image": "COCO_test2015_000000262144.jpg", "text": "How many bats?",
         "category": "default"}])
    everything = write_jsonl(root / "llava_vqav2_mscoco_test2015.jsonl", [
        {"question_id": q, "image": "COCO_test2015_000000262144.jpg", "text": "?", "category": "default"}
        for q in (262144000, 262144001, 262144002)])
    bench = VQAv2(questions, str(root / "test2015"), submission_questions=everything)
    bench.check()
    requests = bench.requests()
    assert requests[0].prompt == suffixed  # the suffix is in the file already: not doubled
    assert requests[1].prompt == f"How many bats?\n{SHORT_ANSWER}"
    answers = {"262144000": "Yes.", "262144002": "two"}
    metrics, records = bench.score(answers)
    assert metrics == {"n": 2, "n_missing": 0} and bench.columns(metrics) == {}  # test-dev: the server scores
    assert records[0]["question"] == "Is the ball flying towards the batter?" and records[0]["score"] is None
    with caplog.at_level(logging.INFO, logger="lmm.eval.vqav2"):
        [path] = bench.write_files(answers, records, tmp_path / "out")
    # Every test2015 id, in that file's order, the missing one empty; answers cleaned by the EvalAI processor.
    assert json.loads(path.read_text()) == [{"question_id": 262144000, "answer": "yes"},
                                            {"question_id": 262144001, "answer": ""},
                                            {"question_id": 262144002, "answer": "2"}]
    assert "1 filled" in caplog.text
    # Without the full list: our questions only.
    bench = VQAv2(questions, str(root / "test2015"), suffix=None)
    assert bench.requests()[1].prompt == "How many bats?"
    [path] = bench.write_files(answers, [], tmp_path / "out2")
    assert [r["question_id"] for r in json.loads(path.read_text())] == [262144000, 262144002]


def test_vqav2_official_test_dev_images_live_in_test2015(tmp_path):
    image(tmp_path / "test2015" / "COCO_test2015_000000000001.jpg")
    questions = write_json(tmp_path / "q.json", {"data_subtype": "test-dev2015", "questions": [
        {"image_id": 1, "question": "What?", "question_id": 10}]})
    bench = VQAv2(questions, str(tmp_path / "test2015"))
    bench.check()
    assert bench.requests()[0].images == [tmp_path / "test2015" / "COCO_test2015_000000000001.jpg"]
    # Another data set in the same format: its own file names.
    image(tmp_path / "imgs" / "1.png")
    bench = VQAv2(questions, str(tmp_path / "imgs"), image_pattern="{image_id}.png")
    bench.check()


def test_vqav2_bad_input(tmp_path, vqav2_val):
    root, questions, annotations = vqav2_val
    with pytest.raises(FileNotFoundError, match="nope.json"):
        VQAv2(str(tmp_path / "nope.json"), str(root)).check()
    with pytest.raises(FileNotFoundError, match="2 of 2 images missing"):
        VQAv2(questions, str(tmp_path)).check()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": 1, "image": "a.jpg", "text": "q"}\n{not json\n')
    with pytest.raises(ValueError, match="bad.jsonl line 2"):
        VQAv2(str(bad), str(root)).requests()
    write_jsonl(bad, [{"question_id": 1, "text": "q"}])
    with pytest.raises(ValueError, match="line 1: missing field 'image'"):
        VQAv2(str(bad), str(root)).requests()
    write_jsonl(bad, [{"question_id": 1, "image": "a.jpg", "text": "q"}] * 2)
    with pytest.raises(ValueError, match="question id 1 appears twice"):
        VQAv2(str(bad), str(root)).requests()
    partial = write_json(tmp_path / "ann.json", {"annotations": json.loads(Path(annotations).read_text())[
        "annotations"][:2]})
    with pytest.raises(ValueError, match="question 7000.*no annotation"):
        VQAv2(questions, str(root / "val2014"), annotations=partial).check()


# ---------------------------------------------------------------- GQA

def gqa_question(image_id, question, answer, structural, semantic, balanced=True):
    return {"imageId": image_id, "question": question, "answer": answer, "fullAnswer": f"It is {answer}.",
            "isBalanced": balanced, "types": {"structural": structural, "semantic": semantic, "detailed": "x"},
            "groups": {"global": None, "local": "x"}, "entailed": [], "equivalent": [], "semantic": [],
            "semanticStr": "", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}}}


@pytest.fixture
def gqa_files(tmp_path):
    root = tmp_path / "gqa"
    for name in ("n1", "n2", "n3"):
        image(root / "data" / "images" / f"{name}.jpg")
    official = write_json(root / "data" / "testdev_balanced_questions.json", {
        "201": gqa_question("n1", "Is it overcast?", "no", "verify", "global"),
        "202": gqa_question("n2", "Who is wearing the dress?", "woman", "query", "rel"),
        "203": gqa_question("n2", "Is the bag open and black?", "no", "logical", "obj"),
        "204": gqa_question("n3", "Is the sky blue?", "yes", "verify", "attr", balanced=False),
        "205": gqa_question("n3", "What color is the cup?", "white", "query", "attr"),
    })
    return root, official


def test_gqa_official_file_scored_as_llava_and_the_official_eval(gqa_files, tmp_path):
    root, official = gqa_files
    bench = GQA(official, str(root / "data" / "images"))
    bench.check()
    requests = bench.requests()
    assert [r.key for r in requests] == ["201", "202", "203", "205"]  # the unbalanced question is not asked
    assert requests[0].prompt == f"Is it overcast?\n{SHORT_ANSWER}"
    assert requests[1].images == [root / "data" / "images" / "n2.jpg"]
    # LLaVA's clean-up is rstrip(".") + lower() only: "No.." -> "no" is right, "The woman" keeps its article.
    answers = {"201": "No.", "202": "The woman", "203": "No..", "205": "White"}
    metrics, records = bench.score(answers)
    assert metrics["accuracy"] == 0.75 and metrics["n_scored"] == 4 and metrics["n"] == 4
    assert metrics["binary"] == {"accuracy": 1.0, "n": 2} and metrics["open"] == {"accuracy": 0.5, "n": 2}
    assert metrics["per_structural_type"] == {"logical": {"accuracy": 1.0, "n": 1}, "query": {"accuracy": 0.5, "n": 2},
                                              "verify": {"accuracy": 1.0, "n": 1}}
    assert metrics["per_semantic_type"]["rel"] == {"accuracy": 0.0, "n": 1}
    assert bench.columns(metrics) == {"GQA": 75.0}
    assert records[1]["processed"] == "the woman" and records[1]["gold"] == "woman" and records[1]["score"] == 0.0
    [path] = bench.write_files(answers, records, tmp_path / "out")
    assert path.name == "testdev_balanced_predictions.json"
    assert json.loads(path.read_text()) == [{"questionId": "201", "prediction": "no"},
                                            {"questionId": "202", "prediction": "the woman"},
                                            {"questionId": "203", "prediction": "no"},
                                            {"questionId": "205", "prediction": "white"}]
    assert [r.key for r in GQA(official, str(root), limit=2).requests()] == ["201", "202"]


def test_gqa_llava_jsonl_with_official_answers(gqa_files):
    root, official = gqa_files
    questions = write_jsonl(root / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": "202", "image": "n2.jpg", "text": f"Who is wearing the dress?\n{SHORT_ANSWER}",
         "category": "default"},
        {"question_id": "201", "image": "n1.jpg", "text": f"Is it overcast?\n{SHORT_ANSWER}", "category": "default"}])
    bench = GQA(questions, str(root / "data" / "images"), annotations=official)
    bench.check()
    assert [r.prompt for r in bench.requests()] == [f"Who is wearing the dress?\n{SHORT_ANSWER}",
                                                    f"Is it overcast?\n{SHORT_ANSWER}"]
    metrics, records = bench.score({"202": "Woman", "201": "yes"})
    assert metrics["accuracy"] == 0.5 and records[0]["question"] == "Who is wearing the dress?"
    # Without the official file nothing can be scored, but predictions are still written.
    metrics, _ = GQA(questions, str(root / "data" / "images")).score({"202": "woman", "201": "no"})
    assert metrics == {"n": 2, "n_missing": 0}


def test_gqa_bad_input(gqa_files, tmp_path):
    root, official = gqa_files
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": "999", "image": "n1.jpg", "text": "?"}])
    with pytest.raises(ValueError, match="question 999 is not in this file"):
        GQA(questions, str(root / "data" / "images"), annotations=official).check()
    broken = write_json(tmp_path / "b.json", {"1": {"imageId": "n1", "question": "Q?", "answer": "no"}})
    with pytest.raises(ValueError, match="question 1: missing field 'types'"):
        GQA(broken, str(root / "data" / "images")).check()


# ---------------------------------------------------------------- TextVQA

@pytest.fixture
def textvqa_files(tmp_path):
    root = tmp_path / "textvqa"
    image(root / "train_images" / "img1.jpg")
    image(root / "train_images" / "img2.jpg")
    questions = write_json(root / "TextVQA_0.5.1_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
            {"question": "what is the brand of this camera?", "image_id": "img1", "image_classes": ["Camera"],
             "answers": ["dakota"] * 6 + ["dakota digital"] * 4, "question_id": 34602, "set_name": "val"},
            {"question": "what does the sign say?", "image_id": "img2", "image_classes": [],
             "answers": ["stop"] * 2 + ["STOP!"] + ["go"] * 7, "question_id": 34603, "set_name": "val"}]})
    ocr = write_json(root / "TextVQA_Rosetta_OCR_v0.2_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.2", "data": [
            {"image_id": "img1", "ocr_tokens": ["DAKOTA", "DIGITAL"], "set_name": "val",
             "ocr_info": [{"word": "DAKOTA", "bounding_box": {}}, {"word": "DIGITAL", "bounding_box": {}}]},
            {"image_id": "img2", "ocr_tokens": [], "ocr_info": [], "set_name": "val"}]})
    return root, questions, ocr


def test_textvqa_prompts_with_and_without_ocr(textvqa_files):
    root, questions, ocr = textvqa_files
    bench = TextVQA(questions, str(root / "train_images"), ocr_tokens=ocr)
    bench.check()
    requests = bench.requests()
    assert [r.key for r in requests] == ["34602", "34603"]
    assert requests[0].prompt == ("What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL\n"
                                  f"{SHORT_ANSWER}")
    # No token: LLaVA's file keeps the line, with its trailing space.
    assert requests[1].prompt == f"What does the sign say?\nReference OCR token: \n{SHORT_ANSWER}"
    assert requests[1].images == [root / "train_images" / "img2.jpg"]
    plain = TextVQA(questions, str(root / "train_images"), ocr=False)
    plain.check()
    assert plain.requests()[0].prompt == f"What is the brand of this camera?\n{SHORT_ANSWER}"


def test_textvqa_scored_as_llavas_reference(textvqa_files):
    root, questions, ocr = textvqa_files
    bench = TextVQA(questions, str(root / "train_images"), ocr_tokens=ocr)
    # "Dakota." -> "dakota": 6 of 10 -> 1.0. "Stop" -> "stop"; the humans' "STOP!" is normalised to "stop"
    # as well, so 3 of 10 agree -> 0.9. Mean 0.95.
    metrics, records = bench.score({"34602": "Dakota.", "34603": "Stop"})
    assert metrics["accuracy"] == pytest.approx(0.95) and metrics["n"] == 2 and metrics["n_missing"] == 0
    assert bench.columns(metrics) == {"TextVQA": pytest.approx(95.0)}
    assert records[1]["score"] == pytest.approx(0.9) and records[1]["processed"] == "stop"
    assert records[1]["question"] == "what does the sign say?" and len(records[1]["gold"]) == 10
    no_ocr = TextVQA(questions, str(root / "train_images"), ocr=False, limit=1)
    metrics, _ = no_ocr.score({"34602": "dakota"})
    assert no_ocr.columns(metrics) == {"TextVQA (no OCR)": 100.0}


def test_textvqa_bad_input(textvqa_files, tmp_path):
    root, questions, _ = textvqa_files
    data = json.loads(Path(questions).read_text())
    data["data"][1]["answers"] = ["stop"] * 9
    nine = write_json(tmp_path / "nine.json", data)
    with pytest.raises(ValueError, match="record #1 .question 34603.: expected 10 human answers"):
        TextVQA(nine, str(root / "train_images"), ocr=False).requests()
    other_ocr = write_json(tmp_path / "ocr.json", {"data": [{"image_id": "img1", "ocr_tokens": ["A"]}]})
    with pytest.raises(ValueError, match="no OCR entry for image img2"):
        TextVQA(questions, str(root / "train_images"), ocr_tokens=other_ocr).requests()
    with pytest.raises(ValueError, match="missing field 'ocr_tokens'"):
        TextVQA(questions, str(root / "train_images"), ocr_tokens=None).requests()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        TextVQA(questions, str(root / "train_images"), ocr_tokens=str(tmp_path / "nope.json")).check()


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize("file,keys", [("vqav2", ["vqav2"]), ("gqa", ["gqa"]),
                                       ("textvqa", ["textvqa", "textvqa_no_ocr"])])
def test_configs_build(file, keys):
    cfg = OmegaConf.merge({"eval_root": "/data/eval"}, OmegaConf.load(CONF / f"{file}.yaml"))
    assert [k for k in cfg if k != "eval_root"] == keys
    for key in keys:
        bench = build(OmegaConf.to_container(cfg[key], resolve=True))
        assert bench.name == key and bench.limit is None and bench.max_new_tokens == 16
        assert str(bench.image_root).startswith(f"/data/eval/{file}/")
    if file == "textvqa":
        ocr, plain = (build(OmegaConf.to_container(cfg[k], resolve=True)) for k in keys)
        assert ocr.ocr and ocr.ocr_tokens == "/data/eval/textvqa/TextVQA_Rosetta_OCR_v0.2_val.json"
        assert not plain.ocr
