"""MM-Vet and LLaVA-Bench (in-the-wild) end to end on tiny fixtures in their real file formats, with
hand-made answers and a fake judge whose replies are scripted; aggregates checked by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from lmm.eval.llava_bench import LLaVABench, parse_review, relative_score
from lmm.eval.mmvet import REMINDER as MMVET_REMINDER
from lmm.eval.mmvet import MMVet, aggregate, parse_correctness
from lmm.model.spec import build

pytest_plugins = ["tests.judge_server"]  # the `judge_server` fixture

CONF = Path(__file__).resolve().parents[1] / "conf" / "benchmark"


def image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


def judge_args(server, **kw) -> dict:
    return {"url": server.url, "model": "judge-x", "backoff": 0.01, **kw}


def judged_run(make, root: Path, server, reply, answers: dict):
    """(benchmark, metrics, records): the benchmark built by `make` with the scripted judge, checked and
    scored on `answers`."""
    server.reply = reply
    bench = make(root, judge=judge_args(server))
    bench.check()
    return (bench, *bench.score(answers))


# ---------------------------------------------------------------------------------------- MM-Vet

MMVET = {  # the official mm-vet.json layout
    "v1_0": {"imagename": "v1_0.png", "question": "What is x in the equation?", "answer": "-1<AND>-5",
             "capability": ["ocr", "math"]},
    "v1_1": {"imagename": "v1_1.jpg", "question": "What is written on the sign?", "answer": "STOP",
             "capability": ["rec", "ocr"]},
    "v1_2": {"imagename": "v1_2.png", "question": "Can you explain this meme?", "answer": "A long explanation.",
             "capability": ["rec", "know", "gen"]},
    "v1_3": {"imagename": "v1_3.png", "question": "How many apples are there?", "answer": "3<OR>three",
             "capability": ["ocr", "rec"]},  # same set as v1_1, other order
}
MMVET_ANSWERS = {"v1_0": "x = -1", "v1_1": "STOP", "v1_2": "It is funny.", "v1_3": "five"}


@pytest.fixture
def mmvet_dir(tmp_path) -> Path:
    root = tmp_path / "mm-vet"
    root.mkdir()
    (root / "mm-vet.json").write_text(json.dumps(MMVET, indent=4))
    for record in MMVET.values():
        image(root / "images" / record["imagename"])
    return root


def mmvet(root: Path, **kw) -> MMVet:
    return MMVet(str(root / "mm-vet.json"), str(root / "images"), **kw)


def mmvet_reply(request: dict) -> str:
    """Scripted grader: looks at the prediction cell of the last table row."""
    content = request["messages"][-1]["content"]
    reask = content.endswith(MMVET_REMINDER)
    row = content.removesuffix(MMVET_REMINDER).rsplit("\n", 1)[1]
    assert row.endswith(" | ")  # the empty last cell the judge fills in
    prediction = row.split(" | ")[2]
    return {"x = -1": "0.5",                                         # half of -1 <AND> -5
            "STOP": "1.0\n",
            "It is funny.": "0.3" if reask else "Correctness: 0.3",  # readable on the first re-ask
            "five": "N/A"}[prediction]                               # never readable


def test_mmvet_requests(mmvet_dir):
    bench = mmvet(mmvet_dir)
    bench.check()
    reqs = bench.requests()
    assert [r.key for r in reqs] == ["v1_0", "v1_1", "v1_2", "v1_3"]
    assert reqs[0].prompt == "What is x in the equation?"  # no suffix, as LLaVA-1.5
    assert reqs[1].images == [mmvet_dir / "images" / "v1_1.jpg"]
    assert bench.max_new_tokens == 512 and bench.name == "mmvet"
    assert [r.key for r in mmvet(mmvet_dir, limit=2).requests()] == ["v1_0", "v1_1"]
    assert mmvet(mmvet_dir, suffix="Be brief.").requests()[0].prompt == "What is x in the equation?\nBe brief."


def test_mmvet_end_to_end_with_judge(mmvet_dir, judge_server, tmp_path):
    bench, metrics, records = judged_run(mmvet, mmvet_dir, judge_server, mmvet_reply, MMVET_ANSWERS)
    # grades: v1_0 0.5 (ocr, math), v1_1 1.0 (rec, ocr), v1_2 0.3 (rec, know, gen), v1_3 unreadable -> 0.0 (ocr, rec)
    assert metrics["judged"] == 1 and metrics["n"] == 4 and metrics["n_unparsed"] == 1
    assert metrics["score"] == pytest.approx(1.8 / 4)                          # 0.45
    caps = metrics["capability"]
    assert list(caps) == ["rec", "ocr", "know", "gen", "math"]                 # paper order, spat absent
    assert caps["rec"] == {"score": pytest.approx(1.3 / 3), "n": 3}           # v1_1, v1_2, v1_3
    assert caps["ocr"] == {"score": pytest.approx(1.5 / 3), "n": 3}           # v1_0, v1_1, v1_3
    assert caps["math"]["score"] == pytest.approx(0.5) and caps["know"]["score"] == pytest.approx(0.3)
    assert metrics["integration"] == {"rec_ocr": {"score": pytest.approx(0.5), "n": 2},  # (1.0 + 0.0) / 2
                                      "ocr_math": {"score": 0.5, "n": 1}, "rec_know_gen": {"score": 0.3, "n": 1}}
    assert bench.columns(metrics) == {"MM-Vet": 45.0}

    # the grading requests: our prompt + newline + the row with its empty last cell; official parameters
    # (requests arrive concurrently: pick v1_0's by its row)
    first = next(r["json"] for r in judge_server.requests
                 if r["json"]["messages"][0]["content"].endswith("x = -1 | "))
    assert first["model"] == "judge-x" and first["max_tokens"] == 3 and first["temperature"] == 0.0
    prompt = (Path(__file__).resolve().parents[1] / "lmm/eval/prompts/mmvet_grader.txt").read_text()
    assert first["messages"] == [{"role": "user",
                                  "content": prompt + "\nWhat is x in the equation? | -1 <AND> -5 | x = -1 | "}]
    # 4 first asks; re-asks: v1_2 and v1_3, then v1_3 three more times (5 tries in all)
    assert len(judge_server.requests) == 9
    assert sorted(r["json"]["temperature"] for r in judge_server.requests[4:]) == [0.5, 0.5, 1.0, 1.5, 2.0]
    by_key = {r["key"]: r for r in records}
    assert by_key["v1_2"]["judge_replies"] == ["Correctness: 0.3", "0.3"] and by_key["v1_2"]["grade"] == 0.3
    assert by_key["v1_3"]["parsed"] is False and by_key["v1_3"]["grade"] == 0.0
    assert len(by_key["v1_3"]["judge_replies"]) == 5

    paths = bench.write_files(MMVET_ANSWERS, records, tmp_path / "out")
    assert [p.name for p in paths] == ["mmvet_submission.json", "mmvet_grades.json"]
    assert json.loads(paths[0].read_text()) == MMVET_ANSWERS  # what the official evaluator reads
    grades = json.loads(paths[1].read_text())  # the official grade-file layout
    assert grades["v1_0"] == {"model": ["judge-x"], "content": ["0.5"], "score": [0.5]}
    assert grades["v1_1"]["content"] == ["1.0"] and grades["v1_3"]["score"] == [0.0]


def test_mmvet_without_judge_writes_the_submission_only(mmvet_dir, tmp_path):
    bench = mmvet(mmvet_dir, limit=2)
    metrics, records = bench.score(MMVET_ANSWERS)
    assert metrics == {"judged": 0, "n": 2} and bench.columns(metrics) == {}
    assert bench.notes(metrics) == "not scored: no judge configured (answers written)"  # said in the table
    assert records[0]["prediction"] == "x = -1" and records[0]["answer"] == "-1<AND>-5"
    paths = bench.write_files(MMVET_ANSWERS, records, tmp_path)
    assert [p.name for p in paths] == ["mmvet_submission.json"]
    assert json.loads(paths[0].read_text()) == {"v1_0": "x = -1", "v1_1": "STOP"}


def test_mmvet_custom_prompt_file_is_used_verbatim(mmvet_dir, judge_server, tmp_path):
    prompt = tmp_path / "official.txt"
    prompt.write_text("GRADE THIS TABLE\nQ | GT | Pred | Score\n")
    judge_server.reply = lambda req: "0.8"
    bench = mmvet(mmvet_dir, limit=1, judge=judge_args(judge_server), judge_prompt=str(prompt))
    metrics, _ = bench.score(MMVET_ANSWERS)
    assert metrics["score"] == pytest.approx(0.8)
    assert judge_server.prompts() == [("GRADE THIS TABLE\nQ | GT | Pred | Score\n\n"
                                       "What is x in the equation? | -1 <AND> -5 | x = -1 | ")]


@pytest.mark.parametrize("reply, grade", [
    ("0.5", 0.5), ("1.0\n", 1.0), ("0", 0.0), ("1.", 1.0), ("| 0.6 |", 0.6), ("0.7 because", 0.7),
    ("Correctness: 0.5", None), ("7", None), ("1.5", None), ("-0.1", None), ("N/A", None), ("", None),
    ("nan", None), ("inf", None), (".", None)])
def test_parse_correctness(reply, grade):
    assert parse_correctness(reply) == grade


def test_mmvet_aggregate_matches_the_official_arithmetic():
    # official: per capability sum(grades of samples having it) / count * 100, total over all samples
    metrics = aggregate([(["rec"], 1.0), (["rec", "ocr"], 0.0), (["ocr", "rec"], 0.4), (["know"], 0.2)])
    assert metrics["score"] == pytest.approx(0.4)                      # 1.6 / 4
    assert metrics["capability"]["rec"] == {"score": pytest.approx(1.4 / 3), "n": 3}
    assert metrics["capability"]["ocr"]["score"] == pytest.approx(0.2)  # (0.0 + 0.4) / 2
    assert list(metrics["integration"]) == ["rec_ocr", "rec", "know"]   # most frequent first
    assert metrics["integration"]["rec_ocr"]["score"] == pytest.approx(0.2)


def test_mmvet_bad_inputs_are_clear(mmvet_dir):
    data = json.loads((mmvet_dir / "mm-vet.json").read_text())
    del data["v1_2"]["answer"]
    (mmvet_dir / "mm-vet.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"mm-vet.json, record 'v1_2': missing field\(s\) answer"):
        mmvet(mmvet_dir).requests()
    (mmvet_dir / "mm-vet.json").write_text('{"v1_0": {"imagename": "a.png",\n "question": }')
    with pytest.raises(ValueError, match=r"mm-vet.json line 2: not valid JSON"):
        mmvet(mmvet_dir).requests()
    (mmvet_dir / "mm-vet.json").write_text(json.dumps(MMVET))
    (mmvet_dir / "images" / "v1_3.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"mmvet: missing .*v1_3.png"):
        mmvet(mmvet_dir).check()
    with pytest.raises(FileNotFoundError, match="mmvet: missing .*nowhere.json"):
        MMVet(str(mmvet_dir / "nowhere.json"), str(mmvet_dir / "images")).check()
    with pytest.raises(KeyError, match="no answer for 'v1_1'"):
        mmvet(mmvet_dir).score({"v1_0": "x"})


# ----------------------------------------------------------------------------------- LLaVA-Bench

QUESTIONS = [  # questions.jsonl
    {"question_id": 0, "image": "001.jpg", "text": "What is the name of this place?", "category": "conv"},
    {"question_id": 1, "image": "001.jpg", "text": "Describe this photo in detail.", "category": "detail"},
    {"question_id": 2, "image": "001.jpg", "text": "How was this formed?", "category": "complex"},
    {"question_id": 3, "image": "002.jpg", "text": "What fruit is this?", "category": "conv"},
    {"question_id": 4, "image": "002.jpg", "text": "What could one cook with it?", "category": "complex"},
]
CONTEXT = [  # context.jsonl: the real file has one caption string; a list of sentences is joined by newlines
    {"id": "001", "image": "001.jpg", "caption": "An aerial view of Diamond Head."},
    {"id": "002", "image": "002.jpg", "caption": ["Four mangosteens on a table.", "One is cut open."]},
]
REFERENCES = [{"question_id": q["question_id"], "prompt": q["text"], "answer_id": f"gpt4-{q['question_id']}",
               "model_id": "gpt-4-0314", "metadata": {}, "text": f"Reference answer {q['question_id']}."}
              for q in QUESTIONS]
LLAVAW_ANSWERS = {"0": "Diamond Head.", "1": "A mountain by the sea.", "2": "A volcanic eruption.",
                  "3": "An apple.", "4": "I don't know."}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def llavaw_dir(tmp_path) -> Path:
    root = tmp_path / "llava-bench-in-the-wild"
    root.mkdir()
    write_jsonl(root / "questions.jsonl", QUESTIONS)
    write_jsonl(root / "context.jsonl", CONTEXT)
    write_jsonl(root / "answers_gpt4.jsonl", REFERENCES)
    image(root / "images" / "001.jpg")
    image(root / "images" / "002.jpg")
    return root


def llavaw(root: Path, **kw) -> LLaVABench:
    return LLaVABench(str(root / "questions.jsonl"), str(root / "context.jsonl"), str(root / "answers_gpt4.jsonl"),
                      str(root / "images"), **kw)


def llavaw_reply(request: dict) -> str:
    """Scripted reviewer: reads our answer (assistant 2) out of the request."""
    content = request["messages"][-1]["content"]
    ours = content.split("### Assistant 2\n")[1].split("\n### End of Assistant 2")[0]
    reask = "Important: the first line" in content
    return {"Diamond Head.": "8 6\nAssistant 2 is correct but brief.",
            "A mountain by the sea.": "9, 5\nAssistant 2 misses the crater.",
            "A volcanic eruption.": "7 7" if reask else "Assistant 1 and 2 are both fine.\n7 7",
            "An apple.": "**8 2**\nWrong fruit.",
            "I don't know.": "no scores here"}[ours]


def test_llavaw_requests(llavaw_dir):
    bench = llavaw(llavaw_dir)
    bench.check()
    reqs = bench.requests()
    assert [r.key for r in reqs] == ["0", "1", "2", "3", "4"]
    assert reqs[1].prompt == "Describe this photo in detail." and reqs[3].images == [llavaw_dir / "images/002.jpg"]
    assert bench.max_new_tokens == 512 and bench.name == "llavaw"
    assert len(llavaw(llavaw_dir, limit=2).requests()) == 2


def test_llavaw_end_to_end_with_judge(llavaw_dir, judge_server, tmp_path):
    bench, metrics, records = judged_run(llavaw, llavaw_dir, judge_server, llavaw_reply, LLAVAW_ANSWERS)
    # parsed (reference, ours): q0 (8, 6) conv, q1 (9, 5) detail, q2 (7, 7) complex after one re-ask,
    # q3 (8, 2) conv; q4 unreadable after 1 + 2 tries -> left out
    # overall: reference mean 32/4 = 8, ours 20/4 = 5 -> 5/8 = 62.5 %
    assert metrics["judged"] == 1 and metrics["n"] == 4 and metrics["n_unparsed"] == 1
    assert metrics["score"] == 62.5
    assert (metrics["mean_reference"], metrics["mean_model"]) == (8.0, 5.0)
    assert metrics["conv"] == {"mean_reference": 8.0, "mean_model": 4.0, "n": 2, "score": 50.0, "n_unparsed": 0}
    assert metrics["detail"]["score"] == 55.6                    # 5 / 9 = 55.56 %
    assert metrics["complex"] == {"mean_reference": 7.0, "mean_model": 7.0, "n": 1, "score": 100.0, "n_unparsed": 1}
    assert bench.columns(metrics) == {"LLaVA-W": 62.5}

    # the review request: system + user with caption, question, reference as assistant 1, ours as 2, rule
    # (requests arrive concurrently: pick question 0's)
    first = next(r["json"] for r in judge_server.requests
                 if "### Question\nWhat is the name" in r["json"]["messages"][1]["content"])
    assert first["temperature"] == 0.2 and first["max_tokens"] == 1024 and first["model"] == "judge-x"
    system, user = first["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    text = user["content"]
    order = ["An aerial view of Diamond Head.", "What is the name of this place?",
             "### Assistant 1\nReference answer 0.", "### Assistant 2\nDiamond Head.",
             "conversation about this image"]  # the last one: from the conv rule
    assert all(s in text for s in order) and [text.index(s) for s in order] == sorted(text.index(s) for s in order)
    prompts = {p.split("### Question\n")[1].split("\n")[0]: p for p in judge_server.prompts()}  # by question
    assert "detailed description of an image" in prompts["Describe this photo in detail."]  # the detail rule
    assert "Four mangosteens on a table.\nOne is cut open." in prompts["What fruit is this?"]
    # 5 first asks, q2 and q4 re-asked at 0.7, q4 once more at 1.2
    assert len(judge_server.requests) == 8
    assert sorted(r["json"]["temperature"] for r in judge_server.requests[5:]) == [0.7, 0.7, 1.2]

    paths = bench.write_files(LLAVAW_ANSWERS, records, tmp_path / "out")
    assert [p.name for p in paths] == ["llavaw_answers.jsonl", "llavaw_reviews.jsonl"]
    answers = [json.loads(x) for x in paths[0].read_text().splitlines()]
    assert answers[0] == {"question_id": 0, "prompt": "What is the name of this place?", "text": "Diamond Head.",
                          "answer_id": "llavaw-0", "model_id": "lmm", "metadata": {}}
    reviews = [json.loads(x) for x in paths[1].read_text().splitlines()]
    assert [r["tuple"] for r in reviews] == [[8, 6], [9, 5], [7, 7], [8, 2], [-1, -1]]
    assert reviews[0]["category"] == "llava_bench_conv" and reviews[0]["answer1_id"] == "gpt4-0"
    assert reviews[0]["answer2_id"] == "llavaw-0" and reviews[2]["content"] == "7 7"
    # LLaVA's summary over this file, leaving out the [-1, -1] row, gives the same overall number
    kept = [r["tuple"] for r in reviews if r["tuple"] != [-1, -1]]
    assert relative_score([tuple(t) for t in kept])["score"] == metrics["score"]


def test_llavaw_without_judge(llavaw_dir, tmp_path):
    bench = llavaw(llavaw_dir)
    metrics, records = bench.score(LLAVAW_ANSWERS)
    assert metrics == {"judged": 0, "n": 5} and bench.columns(metrics) == {}
    assert bench.notes(metrics).startswith("not scored: no judge configured")
    assert [p.name for p in bench.write_files(LLAVAW_ANSWERS, records, tmp_path)] == ["llavaw_answers.jsonl"]


def test_llavaw_rules_in_llava_layout(llavaw_dir, judge_server, tmp_path):
    rules = tmp_path / "rule.json"
    rules.write_text(json.dumps({f"llava_bench_{c}": {"role": "AI", "prompt": f"RULE {c}"}
                                 for c in ("conv", "detail", "complex")}))
    judge_server.reply = lambda req: "5 5"
    bench = llavaw(llavaw_dir, limit=1, judge=judge_args(judge_server), judge_rules=str(rules),
                   judge_system="SYS", judge_temperature=None)
    metrics, _ = bench.score(LLAVAW_ANSWERS)
    assert metrics["score"] == 100.0
    req = judge_server.requests[0]["json"]
    assert req["messages"][0]["content"] == "SYS" and req["temperature"] == 0.0  # None: the judge's own
    assert "### AI 1\n" in req["messages"][1]["content"] and "RULE conv" in req["messages"][1]["content"]
    rules.write_text(json.dumps({"llava_bench_conv": {"role": "AI", "prompt": "x"}}))
    with pytest.raises(ValueError, match="has no rule 'llava_bench_(detail|complex)'"):
        llavaw(llavaw_dir, judge=judge_args(judge_server), judge_rules=str(rules)).check()


@pytest.mark.parametrize("reply, scores", [
    ("8 6", (8, 6)), ("8, 6\nbecause", (8, 6)), ("\n  7.5 9\n", (7.5, 9)), ("(8, 6)", (8, 6)), ("**8 2**", (8, 2)),
    ("Assistant 1: 8", None), ("8 6 7", None), ("8\n6", None), ("eight six", None), ("11 5", None), ("", None)])
def test_parse_review(reply, scores):
    assert parse_review(reply) == scores


def test_relative_score_rounds_like_llava_summary():
    # means 4/3 and 5/3 are rounded to 1.333 and 1.667 first: 1.667 / 1.333 = 125.06 -> 125.1, not 125.0
    assert relative_score([(1, 1), (1, 1), (2, 3)])["score"] == 125.1
    assert relative_score([]) == {"n": 0}
    assert "score" not in relative_score([(0, 3)])  # no reference mass: no ratio


def test_llavaw_bad_inputs_are_clear(llavaw_dir):
    lines = (llavaw_dir / "questions.jsonl").read_text().splitlines()
    (llavaw_dir / "questions.jsonl").write_text("\n".join([lines[0], '{"question_id": 9, "image": "001.jpg"}']))
    with pytest.raises(ValueError, match=r"questions.jsonl line 2: missing field\(s\) text, category"):
        llavaw(llavaw_dir).requests()
    (llavaw_dir / "questions.jsonl").write_text(lines[0] + "\n{oops\n")
    with pytest.raises(ValueError, match="questions.jsonl line 2: not valid JSON"):
        llavaw(llavaw_dir).requests()
    write_jsonl(llavaw_dir / "questions.jsonl", [{**QUESTIONS[0], "category": "chat"}])
    with pytest.raises(ValueError, match="line 1: category 'chat' is not one of conv, detail, complex"):
        llavaw(llavaw_dir).requests()
    write_jsonl(llavaw_dir / "questions.jsonl", [{**QUESTIONS[0], "image": "003.jpg"}])
    with pytest.raises(ValueError, match="image '003.jpg' has no caption in .*context.jsonl"):
        llavaw(llavaw_dir).requests()
    write_jsonl(llavaw_dir / "questions.jsonl", [{**QUESTIONS[0], "question_id": 77}])
    with pytest.raises(ValueError, match="question_id 77 has no reference answer in .*answers_gpt4.jsonl"):
        llavaw(llavaw_dir).requests()
    write_jsonl(llavaw_dir / "questions.jsonl", QUESTIONS)
    (llavaw_dir / "images" / "002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"llavaw: missing .*002.jpg"):
        llavaw(llavaw_dir).check()
    with pytest.raises(KeyError, match="no answer for question_id 1"):
        llavaw(llavaw_dir).score({"0": "x"})


# ----------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("file, cls, path_attr, expected", [
    ("mmvet.yaml", MMVet, "questions_file", "mm-vet/mm-vet.json"),
    ("llavaw.yaml", LLaVABench, "reference_file", "llava-bench-in-the-wild/answers_gpt4.jsonl")])
def test_configs_build(file, cls, path_attr, expected):
    spec = OmegaConf.load(CONF / file)
    (name,) = spec.keys()
    cfg = OmegaConf.merge({"eval_root": "/data/eval"}, spec)
    bench = build(cfg[name])
    assert isinstance(bench, cls) and bench.name == name and bench.judge is None and bench.limit is None
    assert str(getattr(bench, path_attr)) == f"/data/eval/{expected}"
    # a top-level `judge:` in the eval config reaches the benchmark
    cfg = OmegaConf.merge({"eval_root": "/e", "judge": {"url": "http://localhost:8000/v1", "model": "m"}}, spec)
    assert build(cfg[name]).judge.endpoint == "http://localhost:8000/v1/chat/completions"
