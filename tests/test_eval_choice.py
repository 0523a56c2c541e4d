"""ScienceQA-IMG and MMBench: prompts, LLaVA's ScienceQA parser, our option matcher, circular scoring,
the judge hook and the submission table, on tiny fixtures in the official file formats."""
from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from lmm.eval.benchmark import MULTIPLE_CHOICE, open_image
from lmm.eval.choices import format_options, is_missing, match_option, rotate
from lmm.eval.mmbench import MMBench
from lmm.eval.scienceqa import ScienceQA, parse_choice

CONF = Path(__file__).resolve().parents[1] / "conf" / "benchmark"

pytest_plugins = ["tests.judge_server"]


def _png(size=(4, 3), color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- ScienceQA --------------------------

PROBLEMS = {
    # image, hint, 3 choices, gold B
    "11": {"question": "Which animal's feet are adapted for digging?", "choices": ["eagle", "mole", "goldfish"],
           "answer": 1, "hint": "Moles live underground.", "image": "image.png", "split": "test"},
    # text only
    "12": {"question": "Which word is a noun?", "choices": ["run", "table"], "answer": 1, "hint": "",
           "image": None, "split": "test"},
    # image, empty hint, 2 choices, gold A
    "13": {"question": "Is the ball magnetic?", "choices": ["yes", "no"], "answer": 0, "hint": "",
           "image": "image.png", "split": "test"},
    # image, whitespace hint (no Context line), 5 choices, gold E
    "14": {"question": "Which is the warmest?", "choices": ["1 C", "5 C", "9 C", "12 C", "30 C"], "answer": 4,
           "hint": "  ", "image": "image.png", "split": "test"},
    # a train question: not asked
    "15": {"question": "Train?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
           "split": "train"},
}


def _sqa_files(tmp_path: Path, problems=PROBLEMS, images=("11", "13", "14")) -> dict:
    root = tmp_path / "scienceqa"
    root.mkdir(parents=True)
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": ["11", "12", "13", "14"], "train": ["15"]}))
    for pid in images:
        (root / "images" / "test" / pid).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / "images" / "test" / pid / "image.png")
    return {"problems": str(root / "problems.json"), "pid_splits": str(root / "pid_splits.json"),
            "image_root": str(root / "images" / "test")}


@pytest.mark.parametrize("text, n, expected", [
    ("B", 3, 1),                            # exactly a letter
    ("B. mole", 3, 1),                      # "X. " prefix
    ("B.", 3, None),                        # neither: no space after the period, and no "The answer is"
    ("The answer is C.", 3, 2),
    ("The answer is C, because", 3, 2),     # LLaVA's regex: any character after the letter
    ("The answer is C", 3, None),           # ... but one must follow
    ("The answer is A. The answer is B.", 3, None),   # two matches: failed
    ("E", 3, None),                         # a letter beyond the choices is wrong
    ("E", 5, 4),
    ("The answer is F.", 5, None),          # the regex finds F, which is not an option
    ("b", 3, None),                         # case-sensitive
    ("AB", 3, None),                        # not a single letter (membership is per letter)
    ("", 3, None),
    ("mole", 3, None),                      # the choice's text is not read
])
def test_sqa_parse_matches_llava(text, n, expected):
    assert parse_choice(text, n) == expected


def test_sqa_prompts_and_images(tmp_path):
    files = _sqa_files(tmp_path)
    bench = ScienceQA(**files)
    bench.check()
    reqs = bench.requests()
    assert [r.key for r in reqs] == ["11", "13", "14"]          # text-only 12 and train 15 left out
    assert reqs[0].prompt == ("Context: Moles live underground.\nWhich animal's feet are adapted for digging?\n"
                              "A. eagle\nB. mole\nC. goldfish\n" + MULTIPLE_CHOICE)
    assert reqs[1].prompt == "Is the ball magnetic?\nA. yes\nB. no\n" + MULTIPLE_CHOICE
    assert reqs[2].prompt.startswith("Which is the warmest?\nA. 1 C\n")   # blank hint: no Context line
    assert "E. 30 C" in reqs[2].prompt
    assert [Path(r.images[0]) for r in reqs] == [Path(files["image_root"]) / p / "image.png" for p in ("11", "13", "14")]
    assert open_image(reqs[0].images[0]).size == (4, 4)
    assert ScienceQA(**files, suffix=None).requests()[1].prompt == "Is the ball magnetic?\nA. yes\nB. no"
    assert [r.key for r in ScienceQA(**files, limit=2).requests()] == ["11", "13"]


def test_sqa_score_img_and_all(tmp_path):
    files = _sqa_files(tmp_path)
    answers = {"11": "B", "12": "B", "13": "The answer is B.", "14": "maybe"}
    bench = ScienceQA(**files)
    metrics, records = bench.score(answers)
    # 11 right; 13 parsed B but gold A; 14 failed -> 1/3, one failed parse
    assert metrics == {"accuracy": pytest.approx(1 / 3), "n": 3, "n_failed_parse": 1}
    assert bench.notes(metrics) == "1 of 3 answers give no letter (wrong)"
    assert [(r["pid"], r["parsed"], r["correct"]) for r in records] == [("11", "B", True), ("13", "B", False),
                                                                       ("14", None, False)]
    assert bench.columns(metrics) == {"SQA-IMG": pytest.approx(100 / 3)}

    everything = ScienceQA(**files, image_only=False)
    assert [r.key for r in everything.requests()] == ["11", "12", "13", "14"]
    assert everything.requests()[1].images == []
    metrics, _ = everything.score(answers)
    # IMG accuracy is unchanged by asking the text question too; all: 11 and 12 right of 4
    assert metrics["accuracy"] == pytest.approx(1 / 3) and metrics["n"] == 3
    assert metrics["accuracy_all"] == pytest.approx(2 / 4) and metrics["n_all"] == 4
    assert metrics["n_failed_parse_all"] == 1

    metrics, _ = bench.score({"11": "B"})          # a missing answer is a failed parse, as in LLaVA
    assert metrics == {"accuracy": pytest.approx(1 / 3), "n": 3, "n_failed_parse": 2}


def test_sqa_result_file(tmp_path):
    bench = ScienceQA(**_sqa_files(tmp_path))
    answers = {"11": "B", "13": "A", "14": "oops"}
    _, records = bench.score(answers)
    (path,) = bench.write_files(answers, records, tmp_path / "out")
    result = json.loads(path.read_text())
    assert result["acc"] == pytest.approx(200 / 3) and result["correct"] == 2 and result["count"] == 3
    assert result["results"] == {"11": 1, "13": 0, "14": -1}
    assert result["outputs"]["14"] == "oops"


def test_sqa_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="problems.json"):
        ScienceQA(str(tmp_path / "problems.json"), str(tmp_path / "pid_splits.json"), str(tmp_path)).check()

    files = _sqa_files(tmp_path / "a", images=("11", "13"))    # 14's image is missing
    with pytest.raises(FileNotFoundError, match=r"14[/\\]image.png"):
        ScienceQA(**files).check()

    bad = {**PROBLEMS, "13": {k: v for k, v in PROBLEMS["13"].items() if k != "choices"}}
    with pytest.raises(ValueError, match="problem 13: missing choices"):
        ScienceQA(**_sqa_files(tmp_path / "b", problems=bad)).requests()

    bad = {**PROBLEMS, "13": {**PROBLEMS["13"], "answer": 2}}
    with pytest.raises(ValueError, match="problem 13: answer 2"):
        ScienceQA(**_sqa_files(tmp_path / "c", problems=bad)).requests()

    bad = {k: v for k, v in PROBLEMS.items() if k != "12"}
    with pytest.raises(ValueError, match="pid 12 .* is not in"):
        ScienceQA(**_sqa_files(tmp_path / "d", problems=bad)).requests()

    with pytest.raises(ValueError, match="no split 'val'"):
        ScienceQA(**_sqa_files(tmp_path / "e"), split="val").requests()


# ---------------------------------------------------------------- option matching --------------------

OPTIONS = ["dog", "cat", "bird", "fish"]


@pytest.mark.parametrize("answer, expected", [
    ("B", 1), ("b", 1), ("(C)", 2), ("B.", 1), ("[D]", 3), ("**B**", 1), ("`A`", 0),   # the letter alone
    ("B. cat", 1), ("(B) cat", 1), ("B) cat", 1), ("C: bird", 2),                      # letter, then text
    ("The answer is C.", 2), ("Answer: (D)", 3), ("the correct option is A", 0),
    ("The answer is B, not C", 1),           # only the phrase names a letter
    ("option A or option B", None),          # two different letters: ambiguous
    ("cat", 1), ("Cat.", 1), ("  FISH ", 3),  # equal to one option's text
    ("A cat", 1),                            # the article, not option A: the text names cat
    ("The answer is a cat.", 1),             # the phrase rule wants an upper-case letter
    ("I pick (D) here", 3),
    ("It is probably a bird.", 2),           # one option's text inside the answer
    ("a dog or a cat", None),                # two options' texts
    ("A and B", None),
    ("E", None), ("The answer is E.", None),  # beyond the four options
    ("", None), ("no idea", None),
])
def test_match_option_rules(answer, expected):
    assert match_option(answer, OPTIONS) == expected


def test_match_option_whole_words_and_duplicates():
    assert match_option("there are 13 apples", ["3", "13"]) == 1   # "3" is not a whole word in "13"
    assert match_option("13", ["3", "13"]) == 1
    assert match_option("yes", ["yes", "yes"]) is None               # equal to two options


def test_choice_helpers():
    assert rotate(["a", "b", "c", "d"], 1) == ["b", "c", "d", "a"]
    assert rotate(["a", "b", "c"], 3) == ["a", "b", "c"]
    assert format_options(["x", "y"]) == "A. x\nB. y"
    assert all(is_missing(v) for v in (None, float("nan"), "", " ", "nan", "NaN", "None"))
    assert not any(is_missing(v) for v in ("0", "no", "N/A"))


# ---------------------------------------------------------------- MMBench ----------------------------

IMAGE_0, IMAGE_1 = _png((4, 3)), _png((2, 5), (0, 0, 255))
COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "l2-category",
           "comment", "split", "image"]


def _row(index, question, hint, options, answer, category, image, l2="perception"):
    cells = dict(zip("ABCD", [*options, "", "", "", ""]))
    return {"index": index, "question": question, "hint": hint, **cells, "answer": answer, "category": category,
            "source": "x", "l2-category": l2, "comment": "", "split": "dev", "image": image}


MMB_ROWS = [
    _row(0, "What animal is shown?", "", ["dog", "cat", "bird", "fish"], "B", "attribute",
         base64.b64encode(IMAGE_0).decode()),
    _row(1, 'Which "side" is the ball on?', "Look closely.", ["left", "right"], "A", "relation",
         base64.b64encode(IMAGE_1).decode(), l2="reasoning"),
    _row(2, "Which colour?", "nan", ["red", "green", "blue"], "C", "attribute", "0"),   # image: row 0's
    # the legacy TSV's rotated copy of question 0 (options moved one place left; gold cat is now A)
    _row(1000000, "What animal is shown?", "", ["cat", "bird", "fish", "dog"], "A", "attribute",
         base64.b64encode(IMAGE_0).decode()),
]


def _tsv(path: Path, rows=MMB_ROWS, columns=COLUMNS) -> str:
    with path.open("w", newline="", encoding="utf-8") as f:   # pandas' to_csv(sep="\t") quoting
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


# Gold original options: q0 cat (1), q1 left (0), q2 blue (2). In rotation r the original option o is
# shown at position (o - r) mod n: q0 cat -> B, A, D, C; q1 left -> A, B; q2 blue -> C, B, A.
ANSWERS = {"0/0": "B", "0/1": "A", "0/2": "D", "0/3": "cat",   # all four point at cat: right
           "1/0": "A", "1/1": "A",                              # the second points at right: wrong
           "2/0": "I am not sure", "2/1": "B", "2/2": "A"}      # first unresolved: wrong


def test_mmbench_requests(tmp_path):
    bench = MMBench(_tsv(tmp_path / "dev.tsv"))
    bench.check()
    reqs = bench.requests()
    assert [r.key for r in reqs] == ["0/0", "0/1", "0/2", "0/3", "1/0", "1/1", "2/0", "2/1", "2/2"]
    assert reqs[0].prompt == "What animal is shown?\nA. dog\nB. cat\nC. bird\nD. fish\n" + MULTIPLE_CHOICE
    assert reqs[1].prompt == "What animal is shown?\nA. cat\nB. bird\nC. fish\nD. dog\n" + MULTIPLE_CHOICE
    assert reqs[5].prompt == ('Look closely.\nWhich "side" is the ball on?\nA. right\nB. left\n'
                              + MULTIPLE_CHOICE)
    assert reqs[6].prompt.startswith("Which colour?\nA. red")          # hint "nan" is no hint
    assert reqs[0].images == [IMAGE_0] and reqs[4].images == [IMAGE_1]
    assert reqs[6].images == [IMAGE_0]                                 # the image cell "0" refers to row 0
    assert open_image(reqs[4].images[0]).size == (2, 5)

    assert [r.key for r in MMBench(_tsv(tmp_path / "dev.tsv"), circular=False).requests()] == ["0/0", "1/0", "2/0"]
    assert [r.key for r in MMBench(_tsv(tmp_path / "dev.tsv"), limit=1).requests()] == ["0/0", "0/1", "0/2", "0/3"]
    assert MMBench(_tsv(tmp_path / "dev.tsv"), suffix=None).requests()[4].prompt.endswith("B. right")


def test_mmbench_circular_score(tmp_path):
    bench = MMBench(_tsv(tmp_path / "dev.tsv"))
    metrics, records = bench.score(ANSWERS)
    # circular: only q0 -> 1/3; first rotation alone: q0 and q1 right -> 2/3
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["accuracy_single"] == pytest.approx(2 / 3)
    assert (metrics["n"], metrics["n_questions"], metrics["n_prompts"]) == (3, 3, 9)
    assert (metrics["n_unresolved"], metrics["n_judged"]) == (1, 0)
    assert metrics["category"] == {"attribute": {"accuracy": 0.5, "n": 2}, "relation": {"accuracy": 0.0, "n": 1}}
    assert metrics["l2_category"]["reasoning"] == {"accuracy": 0.0, "n": 1}
    assert bench.columns(metrics) == {"MMBench": pytest.approx(100 / 3)}
    q1 = records[1]
    assert q1["gold"] == "A" and q1["correct_single"] and not q1["correct"]
    assert [(r["letter"], r["chosen"]) for r in q1["rounds"]] == [("A", "A"), ("A", "B")]   # shown vs original
    assert records[2]["rounds"][0]["chosen"] is None

    metrics, _ = MMBench(_tsv(tmp_path / "dev.tsv"), circular=False).score(ANSWERS)
    assert metrics["accuracy"] == metrics["accuracy_single"] == pytest.approx(2 / 3)
    assert metrics["n_prompts"] == 3 and metrics["n_unresolved"] == 1


class FakeJudge:
    """Duck-typed stand-in for lmm.eval.judge.Judge."""

    def __init__(self, reply: str):
        self.reply, self.chats = reply, []

    def complete_many(self, chats):
        self.chats.extend(chats)
        return [self.reply] * len(chats)


def test_mmbench_judge_resolves_leftovers(tmp_path):
    judge = FakeJudge("C")
    metrics, records = MMBench(_tsv(tmp_path / "dev.tsv"), judge=judge).score(ANSWERS)
    assert len(judge.chats) == 1                               # only the unresolved answer is sent
    sent = judge.chats[0][-1]["content"]
    assert "A. red\nB. green\nC. blue" in sent and "I am not sure" in sent
    assert records[2]["rounds"][0]["by"] == "judge" and records[2]["correct"]
    assert metrics["accuracy"] == pytest.approx(2 / 3)         # q0 and now q2
    assert (metrics["n_unresolved"], metrics["n_judged"]) == (0, 1)

    metrics, _ = MMBench(_tsv(tmp_path / "dev.tsv"), judge=FakeJudge("Z")).score(ANSWERS)
    assert (metrics["n_unresolved"], metrics["n_judged"]) == (1, 1) and metrics["accuracy"] == pytest.approx(1 / 3)
    bench = MMBench(_tsv(tmp_path / "dev.tsv"))
    assert bench.notes(metrics) == f"1 of {metrics['n_prompts']} answers name no option (wrong)"
    assert bench.notes({**metrics, "n_unresolved": 0}) == ""

    judge = FakeJudge("C")
    MMBench(_tsv(tmp_path / "dev.tsv"), judge=judge).score({k: "B" for k in ANSWERS})
    assert judge.chats == []                                   # nothing unresolved: no call


def test_mmbench_judge_from_config_over_http(tmp_path, judge_server):
    """The judge configured as in YAML (url, model, key) is a real HTTP client: the fake
    OpenAI-compatible server on loopback gets the unresolved answer and its reply resolves it."""
    judge_server.reply = lambda request: "C"
    cfg = {"url": judge_server.url, "model": "judge-model", "api_key": "sk-test", "backoff": 0.0}
    metrics, records = MMBench(_tsv(tmp_path / "dev.tsv"), judge=cfg).score(ANSWERS)
    assert metrics["n_judged"] == 1 and records[2]["rounds"][0]["by"] == "judge" and records[2]["correct"]
    (request,) = judge_server.requests
    assert request["json"]["model"] == "judge-model"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    assert "I am not sure" in request["json"]["messages"][-1]["content"]
    with pytest.raises(TypeError, match="judge must be"):
        MMBench(_tsv(tmp_path / "dev.tsv"), judge="gpt").score(ANSWERS)


def _read_tsv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_mmbench_submission(tmp_path):
    bench = MMBench(_tsv(tmp_path / "dev.tsv"))
    _, records = bench.score(ANSWERS)
    paths = bench.write_files(ANSWERS, records, tmp_path / "out")
    assert paths[0] == tmp_path / "out" / "mmbench_submission.tsv"
    rows = _read_tsv(paths[0])
    assert list(rows[0]) == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    by_index = {r["index"]: r for r in rows}
    assert list(by_index) == ["0", "1", "2", "1000000"]                 # file order, copies included
    assert by_index["0"]["prediction"] == "B"
    assert by_index["1000000"]["prediction"] == "A"    # its order is rotation 1, whose answer was A (= cat)
    assert by_index["1"]["prediction"] == "A" and by_index["1"]["C"] == ""
    assert by_index["2"]["prediction"] == "I am not sure"              # unresolved: the raw answer
    assert by_index["1"]["question"] == 'Which "side" is the ball on?'

    # not circular: the copy's order was never asked; the first rotation's choice (cat) is found by text
    bench = MMBench(_tsv(tmp_path / "dev.tsv"), circular=False)
    _, records = bench.score({"0/0": "B", "1/0": "A", "2/0": "C"})
    rows = {r["index"]: r for r in _read_tsv(bench.write_files({}, records, tmp_path)[0])}
    assert rows["1000000"]["prediction"] == "A" and rows["0"]["prediction"] == "B"


def test_mmbench_test_split_without_answers(tmp_path):
    columns = [c for c in COLUMNS if c != "answer"]
    bench = MMBench(_tsv(tmp_path / "test.tsv", columns=columns), limit=2)
    answers = {"0/0": "B", "0/1": "A", "0/2": "D", "0/3": "C", "1/0": "B", "1/1": "A"}
    metrics, records = bench.score(answers)
    assert "accuracy" not in metrics and metrics["n"] == 0 and metrics["n_questions"] == 2
    assert bench.columns(metrics) == {}
    rows = _read_tsv(bench.write_files(answers, records, tmp_path)[0])
    assert "answer" not in rows[0]
    assert [(r["index"], r["prediction"]) for r in rows] == [("0", "B"), ("1", "B"), ("1000000", "A")]


def test_mmbench_xlsx_when_openpyxl(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    bench = MMBench(_tsv(tmp_path / "dev.tsv"))
    _, records = bench.score(ANSWERS)
    paths = bench.write_files(ANSWERS, records, tmp_path)
    sheet = openpyxl.load_workbook(paths[1]).active
    assert [c.value for c in sheet[1]][:7] == ["index", "question", "A", "B", "C", "D", "prediction"]


def test_mmbench_xlsx_control_characters_in_answers(tmp_path, caplog):
    # A generated answer may hold control characters that XML cannot store: the .xlsx shows them as
    # U+FFFD (and the run warns), the TSV keeps the answer as generated.
    openpyxl = pytest.importorskip("openpyxl")
    bench = MMBench(_tsv(tmp_path / "dev.tsv"))
    answers = {**ANSWERS, "2/0": "not\x07 sure\x1b"}                  # unresolved: written raw
    _, records = bench.score(answers)
    with caplog.at_level("WARNING", logger="lmm.eval.files"):
        tsv, xlsx = bench.write_files(answers, records, tmp_path)
    assert "2 control characters" in caplog.text
    assert _read_tsv(tsv)[2]["prediction"] == "not\x07 sure\x1b"
    rows = list(openpyxl.load_workbook(xlsx).active.iter_rows(values_only=True))
    assert rows[3][0] == 2 and rows[3][6] == "not\ufffd sure\ufffd"


def test_mmbench_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        MMBench(str(tmp_path / "missing.tsv")).check()
    with pytest.raises(ValueError, match="lacks column.*image"):
        MMBench(_tsv(tmp_path / "a.tsv", columns=[c for c in COLUMNS if c != "image"])).requests()
    bad = [MMB_ROWS[0], {**MMB_ROWS[1], "answer": "C"}]          # C on a two-option question, on line 3
    with pytest.raises(ValueError, match=r"b.tsv, line 3: answer 'C'"):
        MMBench(_tsv(tmp_path / "b.tsv", rows=bad)).requests()
    bad = [MMB_ROWS[0], {**MMB_ROWS[1], "image": "not base64!"}]
    with pytest.raises(ValueError, match=r"line 3: image is not base64"):
        MMBench(_tsv(tmp_path / "c.tsv", rows=bad)).requests()
    bad = [MMB_ROWS[0], {**MMB_ROWS[1], "index": 0}]
    with pytest.raises(ValueError, match="index 0 repeats"):
        MMBench(_tsv(tmp_path / "d.tsv", rows=bad)).requests()
    bad = [{**MMB_ROWS[0], "B": ""}]
    with pytest.raises(ValueError, match="fewer than 2 options"):
        MMBench(_tsv(tmp_path / "e.tsv", rows=bad)).requests()


# ---------------------------------------------------------------- configs ----------------------------

def test_configs_build(tmp_path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for key, cls in (("sqa_img", ScienceQA), ("mmbench", MMBench)):
        cfg = OmegaConf.merge({"eval_root": str(tmp_path)}, OmegaConf.load(CONF / f"{key}.yaml"))
        bench = instantiate(cfg[key])
        assert isinstance(bench, cls) and bench.name == key and bench.suffix == MULTIPLE_CHOICE
    assert bench.questions_file == tmp_path / "mmbench" / "mmbench_dev_20230712.tsv" and bench.judge is None
    sqa = instantiate(OmegaConf.merge({"eval_root": str(tmp_path)}, OmegaConf.load(CONF / "sqa_img.yaml")).sqa_img)
    assert sqa.image_root == tmp_path / "scienceqa" / "images" / "test" and sqa.image_only
