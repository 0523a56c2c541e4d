"""POPE and MME: answer parsing as the reference scorers, confusion-matrix metrics (checked against a
published worked example and torchmetrics), MME's acc/acc+ scores and its calculation-tool files, on
tiny fixtures in the official file layouts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from lmm.eval.benchmark import SHORT_ANSWER
from lmm.eval.mme import MME
from lmm.eval.mme import parse_yes_no as mme_parse
from lmm.eval.pope import POPE, binary_metrics
from lmm.eval.pope import parse_yes_no as pope_parse

CONF = Path(__file__).resolve().parents[1] / "conf" / "benchmark"


def _image(path: Path, size=(4, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path)


# ---------------------------------------------------------------- POPE parsing and metrics ----------

@pytest.mark.parametrize("answer, expected", [
    ("Yes", "yes"), ("No", "no"), ("No.", "no"), ("no", "no"),
    ("No, there is not.", "no"),
    ("Yes, there is a dog. No other animals.", "yes"),   # only the first sentence counts
    ("There is no dog in the image", "no"), ("It is not.", "no"),
    ("NO", "yes"), ("Not at all", "yes"),                # case-sensitive words: LLaVA's rule
    ("Nope", "yes"), ("", "yes"),                        # anything else is yes
    ("Yes,no", "yes"),                                   # commas removed before the split: one word "Yesno"
])
def test_pope_parse_matches_llava(answer, expected):
    assert pope_parse(answer) == expected


def test_pope_metrics_worked_example():
    # Wikipedia, "Precision and recall": 12 dogs and 10 cats; the program says dog for 8, 5 of them dogs.
    labels = [True] * 12 + [False] * 10
    preds = [True] * 5 + [False] * 7 + [True] * 3 + [False] * 7
    m = binary_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (5, 3, 7, 7, 22)
    assert m["precision"] == pytest.approx(5 / 8)
    assert m["recall"] == pytest.approx(5 / 12)
    assert m["f1"] == pytest.approx(0.5)          # 2*5 / (2*5 + 3 + 7)
    assert m["accuracy"] == pytest.approx(12 / 22)
    assert m["yes_ratio"] == pytest.approx(8 / 22)


def test_pope_metrics_zero_divisions():
    m = binary_metrics([False] * 4, [True, True, False, False])       # nothing predicted yes
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.5, 0.0)
    m = binary_metrics([False] * 3, [False] * 3)                       # no positives anywhere
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 0.0, 1.0)
    m = binary_metrics([True, False], [False, False])                  # no yes label
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert binary_metrics([], [])["accuracy"] == 0.0


@pytest.mark.parametrize("seed, p_yes", [(0, 0.5), (1, 0.2), (2, 0.9), (3, 0.0)])
def test_pope_metrics_match_torchmetrics(seed, p_yes):
    from torchmetrics.classification import BinaryAccuracy, BinaryF1Score, BinaryPrecision, BinaryRecall

    g = torch.Generator().manual_seed(seed)
    labels = torch.rand(200, generator=g) < 0.5
    preds = torch.rand(200, generator=g) < p_yes      # p_yes 0: nothing predicted yes (the zero-division case)
    m = binary_metrics(preds.tolist(), labels.tolist())
    target, predicted = labels.long(), preds.long()
    for name, metric in (("accuracy", BinaryAccuracy()), ("precision", BinaryPrecision()),
                         ("recall", BinaryRecall()), ("f1", BinaryF1Score())):
        assert m[name] == pytest.approx(metric(predicted, target).item(), abs=1e-6), name
    assert m["yes_ratio"] == pytest.approx(preds.float().mean().item())


# ---------------------------------------------------------------- POPE files -------------------------

POPE_SPLITS = {
    "random": [(1, "a.jpg", "Is there a dog in the image?", "yes"), (2, "a.jpg", "Is there a cat in the image?", "no"),
               (3, "b.jpg", "Is there a car in the image?", "yes"), (4, "b.jpg", "Is there a bus in the image?", "no")],
    "adversarial": [(1, "a.jpg", "Is there a bone in the image?", "no"),
                    (2, "b.jpg", "Is there a road in the image?", "yes"),
                    (3, "b.jpg", "Is there a truck in the image?", "no")],
}


def _pope_files(tmp_path: Path, splits=POPE_SPLITS) -> dict:
    root = tmp_path / "pope"
    for split, rows in splits.items():
        path = root / "coco" / f"coco_pope_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"question_id": q, "image": img, "text": text, "label": label}) + "\n"
                                for q, img, text, label in rows))
    for name in ("a.jpg", "b.jpg"):
        _image(root / "val2014" / name)
    return {"annotation_pattern": str(root / "coco" / "coco_pope_{split}.json"), "image_root": str(root / "val2014"),
            "splits": list(splits)}


def test_pope_requests(tmp_path):
    files = _pope_files(tmp_path)
    bench = POPE(**files)
    bench.check()
    reqs = bench.requests()
    assert [r.key for r in reqs] == ["random/1", "random/2", "random/3", "random/4", "adversarial/1",
                                     "adversarial/2", "adversarial/3"]
    assert reqs[0].prompt == "Is there a dog in the image?\n" + SHORT_ANSWER
    assert reqs[2].images == [Path(files["image_root"]) / "b.jpg"]
    assert POPE(**files, suffix=None).requests()[0].prompt == "Is there a dog in the image?"
    assert [r.key for r in POPE(**files, limit=2).requests()] == ["random/1", "random/2", "adversarial/1",
                                                                "adversarial/2"]


def test_pope_score(tmp_path):
    bench = POPE(**_pope_files(tmp_path))
    answers = {"random/1": "Yes", "random/2": "Yes, there is a cat.", "random/3": "No", "random/4": "No.",
               "adversarial/1": "There is no bone.", "adversarial/2": "Yes", "adversarial/3": "no"}
    metrics, records = bench.score(answers)
    # random: labels y n y n, preds y y n n -> tp 1 fp 1 tn 1 fn 1: P = R = F1 = 0.5, acc 0.5, yes 0.5
    assert metrics["random"] == {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "yes_ratio": 0.5,
                                 "tp": 1, "fp": 1, "tn": 1, "fn": 1, "n": 4}
    # adversarial: labels n y n, preds n y n -> all right: P = R = F1 = 1, yes 1/3
    adv = metrics["adversarial"]
    assert (adv["f1"], adv["accuracy"], adv["tp"], adv["tn"]) == (1.0, 1.0, 1, 2)
    assert adv["yes_ratio"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(0.75) and metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["n"] == 7
    assert bench.columns(metrics) == {"POPE": pytest.approx(75.0)}
    assert records[1]["parsed"] == "yes" and not records[1]["correct"] and records[1]["label"] == "no"

    metrics, _ = bench.score({})          # no answers: every prediction parses as yes (LLaVA's default)
    assert metrics["random"]["yes_ratio"] == 1.0 and metrics["random"]["recall"] == 1.0


def test_pope_other_split_names(tmp_path):
    # e.g. easy-vqa's yes/no questions written in the same format, under another file name pattern
    path = tmp_path / "easyvqa" / "yesno_test.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"question_id": q, "image": img, "text": text, "label": label}) + "\n"
                            for q, img, text, label in POPE_SPLITS["random"]))
    for name in ("a.jpg", "b.jpg"):
        _image(tmp_path / "easyvqa" / "images" / name)
    bench = POPE(str(tmp_path / "easyvqa" / "yesno_{split}.jsonl"), str(tmp_path / "easyvqa" / "images"),
                 splits=["test"], name="easyvqa_yesno")
    bench.check()
    assert bench.requests()[0].key == "test/1"
    metrics, _ = bench.score({"test/1": "Yes", "test/2": "No", "test/3": "Yes", "test/4": "No"})
    assert metrics["test"]["accuracy"] == 1.0 and metrics["f1"] == 1.0 and metrics["n"] == 4


def test_pope_bad_input(tmp_path):
    files = _pope_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="coco_pope_popular.json"):
        POPE(**{**files, "splits": ["random", "popular"]}).check()
    (Path(files["image_root"]) / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="b.jpg"):
        POPE(**files).check()
    with pytest.raises(ValueError, match=r"\{split\}"):
        POPE(annotation_pattern="x.json", image_root=".")
    with pytest.raises(ValueError, match="split names"):
        POPE(**{**files, "splits": ["random", "f1"]})

    path = Path(files["annotation_pattern"].format(split="random"))
    good = path.read_text().splitlines()
    for line, error in (("{not json", "line 2: not valid JSON"),
                        (json.dumps({"question_id": 9, "image": "a.jpg", "text": "?"}), "line 2: missing label"),
                        (json.dumps({"question_id": 9, "image": "a.jpg", "text": "?", "label": "maybe"}),
                         "line 2: label must be yes or no"),
                        (json.dumps({"question_id": 1, "image": "a.jpg", "text": "?", "label": "no"}),
                         "line 2: question_id 1 repeats")):
        path.write_text("\n".join([good[0], line, *good[1:]]) + "\n")
        with pytest.raises(ValueError, match="coco_pope_random.json " + error):
            POPE(**files).requests()


# ---------------------------------------------------------------- MME parsing ------------------------

@pytest.mark.parametrize("answer, expected", [
    ("Yes", "yes"), ("no", "no"), ("Yes, there is.", "yes"), ("No.", "no"), ("yes.", "yes"),
    ("nope", "no"), ("Not sure", "no"),               # "no" within the first 4 characters
    ("I don't know", "other"), ("The answer is yes", "other"), ("", "other"),
    ("y", "other"),                                   # the official tool has no single-letter rule
    ("no, yes", "no"), ("nyes", "yes"),               # "yes" is looked for first, in 4 characters only
    ("know", "no"),                                   # ... a quirk of the substring test, kept
    ("a yes", "other"), ("so no", "other"),           # the 4-character window is exact
])
def test_mme_parse_matches_official(answer, expected):
    assert mme_parse(answer) == expected


# ---------------------------------------------------------------- MME files --------------------------

YN = "Please answer yes or no."


def _mme_root(tmp_path: Path) -> Path:
    """Three subtasks in both official layouts: side by side (existence, code_reasoning) and
    images/ + questions_answers_YN/ (artwork)."""
    root = tmp_path / "MME_Benchmark_release_version"
    ex = root / "existence"
    _image(ex / "000000001.jpg")
    (ex / "000000001.txt").write_text(f"Is there a dog in this image? {YN}\tYes\n"
                                      f"Is there a cat in this image? {YN}\tNo\n")
    _image(ex / "000000002.png")
    (ex / "000000002.txt").write_text(f"Is there a car in this image?  {YN}\tNo\r\n"     # two spaces, CRLF
                                      f"Is there a bus in this image? {YN}\tYes\r\n")
    art = root / "artwork"
    _image(art / "images" / "10002.jpg")
    (art / "questions_answers_YN").mkdir(parents=True)
    (art / "questions_answers_YN" / "10002.txt").write_text(
        f"Is this artwork created by Monet? {YN}\tYes\nIs this artwork created by Dali? {YN}\tNo\n")
    code = root / "code_reasoning"
    _image(code / "0020.png")
    (code / "0020.txt").write_text(f"Is the output of the code 'Hello'? {YN}\tYes\n\n"
                                   f"Is the output of the code 'World'? {YN}\tNo\n")
    return root


TASKS = ["existence", "artwork", "code_reasoning"]


def test_mme_requests(tmp_path):
    root = _mme_root(tmp_path)
    bench = MME(str(root), tasks=TASKS)
    bench.check()
    reqs = bench.requests()
    assert [r.key for r in reqs] == ["existence/000000001/0", "existence/000000001/1", "existence/000000002/0",
                                     "existence/000000002/1", "artwork/10002/0", "artwork/10002/1",
                                     "code_reasoning/0020/0", "code_reasoning/0020/1"]
    # LLaVA-1.5: "Please answer yes or no." replaced by the short-answer suffix
    assert reqs[0].prompt == "Is there a dog in this image?\n" + SHORT_ANSWER
    assert reqs[2].prompt == "Is there a car in this image?\n" + SHORT_ANSWER
    assert reqs[0].images == [root / "existence" / "000000001.jpg"]
    assert reqs[4].images == [root / "artwork" / "images" / "10002.jpg"]
    # no suffix: the official question as is
    assert MME(str(root), tasks=TASKS, suffix=None).requests()[0].prompt == f"Is there a dog in this image? {YN}"
    assert [r.key for r in MME(str(root), tasks=TASKS, limit=1).requests()] == ["existence/000000001/0",
                                                                             "existence/000000001/1"]


# existence: image 1 both right, image 2 one right -> acc 3/4, acc+ 1/2 -> 125
# artwork: one right, one "other" -> acc 1/2, acc+ 0 -> 50
# code_reasoning: both right -> 200
MME_ANSWERS = {"existence/000000001/0": "Yes", "existence/000000001/1": "No",
               "existence/000000002/0": "No", "existence/000000002/1": "No, there is not.",
               "artwork/10002/0": "Yes", "artwork/10002/1": "I think\tso\nmaybe",
               "code_reasoning/0020/0": "yes", "code_reasoning/0020/1": "no"}


def test_mme_score(tmp_path):
    bench = MME(str(_mme_root(tmp_path)), tasks=TASKS)
    metrics, records = bench.score(MME_ANSWERS)
    assert metrics["existence"] == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0, "n": 4, "n_images": 2,
                                    "n_other": 0}
    assert metrics["artwork"] == {"acc": 0.5, "acc_plus": 0.0, "score": 50.0, "n": 2, "n_images": 1, "n_other": 1}
    assert metrics["code_reasoning"]["score"] == 200.0
    assert metrics["perception"] == 175.0 and metrics["cognition"] == 200.0 and metrics["total"] == 375.0
    assert metrics["n"] == 8
    assert bench.notes(metrics) == "1 of 8 answers neither yes nor no (wrong)"  # artwork's "I think so"
    assert bench.columns(metrics) == {"MME": 175.0}
    assert records[3]["parsed"] == "no" and records[3]["gold"] == "Yes" and not records[3]["correct"]

    metrics, _ = MME(str(_mme_root(tmp_path / "b")), tasks=TASKS, limit=2).score(MME_ANSWERS)
    assert "artwork" not in metrics and metrics["perception"] == 125.0 and metrics["cognition"] == 0.0


def test_mme_calculation_tool_files(tmp_path):
    bench = MME(str(_mme_root(tmp_path)), tasks=TASKS)
    _, records = bench.score(MME_ANSWERS)
    paths = bench.write_files(MME_ANSWERS, records, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["artwork.txt", "code_reasoning.txt", "existence.txt"]
    assert all(p.parent == tmp_path / "out" / "mme_results" for p in paths)
    lines = (tmp_path / "out" / "mme_results" / "existence.txt").read_text().splitlines()
    assert lines[0] == f"000000001.jpg\tIs there a dog in this image? {YN}\tYes\tYes"
    assert lines[2] == f"000000002.png\tIs there a car in this image?  {YN}\tNo\tNo"   # the official question
    art = (tmp_path / "out" / "mme_results" / "artwork.txt").read_text().splitlines()
    assert art[1].split("\t") == ["10002.jpg", f"Is this artwork created by Dali? {YN}", "No", "I think so maybe"]
    # re-reading the files the way the tool does (pairs of lines) gives the same task scores
    for path in paths:
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        right = [mme_parse(pred) == gold.lower() for _, _, gold, pred in rows]
        acc = sum(right) / len(right)
        acc_plus = sum(a and b for a, b in zip(right[::2], right[1::2])) / (len(rows) // 2)
        assert 100 * (acc + acc_plus) == pytest.approx(bench.score(MME_ANSWERS)[0][path.stem]["score"])


def test_mme_bad_input(tmp_path):
    root = _mme_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="OCR"):
        MME(str(root), tasks=[*TASKS, "OCR"]).check()
    txt = root / "existence" / "000000001.txt"
    good = txt.read_text()
    txt.write_text(good + f"Is there a third? {YN}\tYes\n")
    with pytest.raises(ValueError, match="000000001.txt must hold 2 question lines"):
        MME(str(root), tasks=TASKS).check()
    txt.write_text(f"Is there a dog? {YN} Yes\nIs there a cat? {YN}\tNo\n")
    with pytest.raises(ValueError, match="000000001.txt, line 1: expected"):
        MME(str(root), tasks=TASKS).check()
    txt.write_text(f"Is there a dog? {YN}\tYes\nIs there a cat? {YN}\tMaybe\n")
    with pytest.raises(ValueError, match="line 2: expected"):
        MME(str(root), tasks=TASKS).check()
    txt.write_text(good)
    (root / "existence" / "000000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="no image named 000000002"):
        MME(str(root), tasks=TASKS).check()
    with pytest.raises(ValueError, match="task names"):
        MME(str(root), tasks=["existence", "total"])


# ---------------------------------------------------------------- configs ----------------------------

def test_configs_build(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    def build(key):
        return instantiate(OmegaConf.merge({"eval_root": str(tmp_path)}, OmegaConf.load(CONF / f"{key}.yaml"))[key])

    pope = build("pope")
    assert isinstance(pope, POPE) and pope.name == "pope" and pope.suffix == SHORT_ANSWER
    assert pope.splits == ["random", "popular", "adversarial"]
    assert pope.annotation_file("popular") == tmp_path / "pope" / "coco" / "coco_pope_popular.json"
    assert pope.image_root == tmp_path / "pope" / "val2014"
    mme = build("mme")
    assert isinstance(mme, MME) and mme.name == "mme" and mme.suffix == SHORT_ANSWER
    assert mme.root == tmp_path / "MME" / "MME_Benchmark_release_version" and len(mme.tasks) == 14
