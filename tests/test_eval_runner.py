"""The evaluation runner: every request answered once, files written, ranks split and gathered,
missing benchmarks reported, answers reused for rescoring, the table printed."""
import json

import pytest
import torch
import torch.distributed as dist
from PIL import Image

from lmm.eval import run as runner
from lmm.eval.benchmark import Benchmark, Request, require_files, with_suffix
from lmm.eval.generate import generate_answers
from lmm.eval.run import evaluate_model, gather_answers, settings_from


class Counting(Benchmark):
    """n questions on two images; the 'gold' of question i is the model's own greedy answer when
    `gold` is given, so the accuracy is known exactly."""

    max_new_tokens = 4

    def __init__(self, image_dir, n=5, gold=None, limit=None, extra_file=None):
        self.image_dir, self.n, self.gold, self.extra_file = image_dir, n if limit is None else min(n, limit), gold, extra_file

    def check(self):
        require_files(self.name, self.image_dir / "0.png", self.extra_file)

    def requests(self):
        return [Request(f"q{i}", with_suffix(f"what is shape {i}?", "Answer briefly."),
                        [self.image_dir / f"{i % 2}.png"]) for i in range(self.n)]

    def score(self, answers):
        records = [{"key": k, "answer": a, "correct": self.gold is not None and self.gold[k] == a}
                   for k, a in answers.items()]
        return {"accuracy": sum(r["correct"] for r in records) / len(records), "n": len(records),
                "detail": {"first": float(records[0]["correct"])}}, records

    def write_files(self, answers, records, out_dir):
        path = out_dir / "submission.json"
        path.write_text(json.dumps([{"question_id": k, "answer": a} for k, a in answers.items()]))
        return [path]

    def columns(self, metrics):
        return {"Counting": 100 * metrics["accuracy"]}


@pytest.fixture
def images(tmp_path):
    for i in range(2):
        Image.fromarray((torch.rand(40, 30, 3) * 255).byte().numpy()).save(tmp_path / f"{i}.png")
    return tmp_path


def test_scores_writes_files_and_prints_the_table(tiny_lmm, images, tmp_path):
    bench = Counting(images)
    gold = dict(zip([r.key for r in bench.requests()],
                    generate_answers(tiny_lmm, bench.requests(), max_new_tokens=4, progress=False)))
    gold["q3"] = "certainly not this"  # one wrong of five
    out = tmp_path / "out"
    summary = evaluate_model(tiny_lmm, {"counting": Counting(images, gold=gold)}, out,
                             {"batch_size": 2, "progress": False}, checkpoint="ckpt")
    metrics = summary["benchmarks"]["counting"]
    assert metrics["accuracy"] == pytest.approx(0.8) and metrics["n"] == 5
    assert summary["columns"] == {"counting": {"Counting": pytest.approx(80.0)}}
    saved = json.loads((out / "results.json").read_text())
    assert saved["benchmarks"]["counting"]["accuracy"] == pytest.approx(0.8) and saved["checkpoint"] == "ckpt"
    assert json.loads((out / "counting_results.json").read_text())["benchmark"] == "counting"
    answers = [json.loads(line) for line in (out / "counting/answers.jsonl").read_text().splitlines()]
    assert [a["key"] for a in answers] == [f"q{i}" for i in range(5)]
    assert answers[0]["prompt"] == "what is shape 0?\nAnswer briefly."
    assert len((out / "counting/predictions.jsonl").read_text().splitlines()) == 5
    assert (out / "counting/submission.json").is_file()
    assert "| counting  | Counting | 80.00 | 5 |" in summary["table"] and summary["notes"] == {"counting": ""}


def test_limit_label_and_missing_files(tiny_lmm, images, tmp_path):
    benches = {"a": Counting(images, extra_file=tmp_path / "nope.json"), "b": Counting(images, n=7)}
    with pytest.raises(FileNotFoundError, match="a: missing .*nope.json"):
        evaluate_model(tiny_lmm, benches, tmp_path / "o1", {"progress": False})
    summary = evaluate_model(tiny_lmm, benches, tmp_path / "o2", {"progress": False, "on_missing": "skip"})
    assert "nope.json" in summary["skipped"]["a"] and summary["benchmarks"]["b"]["n"] == 7
    assert "| a         | -        | skipped |   |            | a: missing" in summary["table"]
    assert not (tmp_path / "o2/a_results.json").exists()


def test_reuse_answers_rescores_without_generating(tiny_lmm, images, tmp_path, monkeypatch):
    first = evaluate_model(tiny_lmm, {"c": Counting(images)}, tmp_path, {"progress": False})
    answers = (tmp_path / "c/answers.jsonl").read_text()

    def no_generation(*a, **k):
        raise AssertionError("reuse_answers must not generate")

    monkeypatch.setattr(runner, "generate_answers", no_generation)
    again = evaluate_model(tiny_lmm, {"c": Counting(images)}, tmp_path, {"progress": False, "reuse_answers": True})
    assert again["benchmarks"] == first["benchmarks"]
    assert (tmp_path / "c/answers.jsonl").read_text() == answers
    with pytest.raises(ValueError, match="lacks 2 of the requests"):
        evaluate_model(tiny_lmm, {"c": Counting(images, n=7)}, tmp_path, {"progress": False, "reuse_answers": True})

    class Reworded(Counting):
        def requests(self):
            return [Request(r.key, r.prompt.replace("briefly", "in a word"), r.images) for r in super().requests()]

    with pytest.raises(ValueError, match="5 answers .* were generated for other prompts"):
        evaluate_model(tiny_lmm, {"c": Reworded(images)}, tmp_path, {"progress": False, "reuse_answers": True})


def test_duplicate_request_keys_are_an_error(tiny_lmm, images, tmp_path):
    class Twice(Counting):
        def requests(self):
            return super().requests() + super().requests()[:1]

    with pytest.raises(ValueError, match="'q0' appears twice"):
        evaluate_model(tiny_lmm, {"t": Twice(images)}, tmp_path, {"progress": False})


def test_gather_checks_every_request_is_answered_once(monkeypatch):
    requests = [Request(f"k{i}", "?") for i in range(4)]
    parts = [{"k0": "a", "k2": "c"}, {"k1": "b", "k3": "d"}]

    def fake_all_gather(out, local):
        out[:] = parts

    monkeypatch.setattr(dist, "all_gather_object", fake_all_gather)
    assert gather_answers(parts[0], requests, 2) == {"k0": "a", "k1": "b", "k2": "c", "k3": "d"}
    parts[1] = {"k1": "b", "k2": "again", "k3": "d"}
    with pytest.raises(RuntimeError, match="answered by two ranks"):
        gather_answers(parts[0], requests, 2)
    parts[1] = {"k1": "b"}
    with pytest.raises(RuntimeError, match="1 requests unanswered.*k3"):
        gather_answers(parts[0], requests, 2)


def test_settings_name_the_valid_keys():
    with pytest.raises(ValueError, match="unknown evaluation settings \\['batchsize'\\].*batch_size"):
        settings_from({"batchsize": 3})
    with pytest.raises(ValueError, match="on_missing must be 'error' or 'skip'"):
        settings_from({"on_missing": "ignore"})
    with pytest.raises(ValueError, match="valid choices are auto, fp32, bf16, fp16"):
        runner.resolve_dtype("half", torch.device("cpu"))


def test_with_suffix_is_not_doubled():
    assert with_suffix("Is it red?", "Answer briefly.") == "Is it red?\nAnswer briefly."
    assert with_suffix("Is it red?\nAnswer briefly.", "Answer briefly.") == "Is it red?\nAnswer briefly."
    assert with_suffix("Is it red? ", None) == "Is it red? "   # asked as the file has it, as LLaVA does


class Lenient(Counting):
    """Counting that also implements an lmms_eval scorer: every answer is right under it."""

    conventions = ("llava", "lmms_eval")

    def score(self, answers):
        if self.convention == "lmms_eval":
            return {"accuracy": 1.0, "n": len(answers)}, []
        return super().score(answers)


def test_the_convention_scores_and_is_recorded(tiny_lmm, images, tmp_path):
    benches = {"strict": Counting(images), "lenient": Lenient(images)}
    summary = evaluate_model(tiny_lmm, benches, tmp_path, {"progress": False, "convention": "lmms_eval"})
    assert summary["benchmarks"]["lenient"]["accuracy"] == 1.0
    assert summary["conventions"] == {"strict": "llava", "lenient": "lmms_eval"}
    assert summary["notes"]["strict"] == "scored as llava: Counting has no lmms_eval scorer"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["convention"] == "lmms_eval" and saved["conventions"] == summary["conventions"]
    assert json.loads((tmp_path / "lenient_results.json").read_text())["convention"] == "lmms_eval"
    assert "| lenient   | Counting | 100.00 | 5 | lmms_eval  |" in summary["table"]
    default = evaluate_model(tiny_lmm, {"lenient": Lenient(images)}, tmp_path / "d", {"progress": False})
    assert default["convention"] == "llava" and default["benchmarks"]["lenient"]["accuracy"] == 0.0


def test_an_unknown_convention_is_named():
    with pytest.raises(ValueError, match="must be one of llava, lmms_eval, got 'lmms'"):
        settings_from({"convention": "lmms"})
