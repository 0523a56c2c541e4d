"""A killed evaluation continues from the answers it kept (lmm/eval/answer_cache.py): only the
batches not yet answered are generated, and the answers equal an uninterrupted run's."""
import json

import pytest

from lmm.eval.run import evaluate_model
from tests.test_eval_runner import Counting, images  # noqa: F401 (fixture)


class Killed(Exception):
    pass


def counting_generate(model, die_after=None):
    """model.generate, counted, raising Killed on call number `die_after` + 1."""
    real, calls = model.generate, []

    def generate(*args, **kwargs):
        if die_after is not None and len(calls) == die_after:
            raise Killed
        calls.append(1)
        return real(*args, **kwargs)

    model.generate = generate
    return calls


def answers(out):
    return {r["key"]: r["answer"] for r in map(json.loads, (out / "bench" / "answers.jsonl").read_text().splitlines())}


def run(model, images, out, resume, model_id="weights-sha"):  # noqa: F811
    return evaluate_model(model, {"bench": Counting(images, n=20)}, out,
                          {"batch_size": 3, "progress": False, "resume": resume}, model_id=model_id)


def test_killed_evaluation_resumes_with_the_same_answers(tiny_lmm, images, tmp_path):  # noqa: F811
    calls = counting_generate(tiny_lmm)
    run(tiny_lmm, images, tmp_path / "full", resume=False)
    assert len(calls) == 7  # 20 requests in batches of 3
    tiny_lmm.generate = type(tiny_lmm).generate.__get__(tiny_lmm)

    calls = counting_generate(tiny_lmm, die_after=3)
    with pytest.raises(Killed):
        run(tiny_lmm, images, tmp_path / "killed", resume=False)
    cache = tmp_path / "killed/bench/cache/rank0.jsonl"
    assert len(cache.read_text().splitlines()) == 1 + 9  # header + 3 batches of 3
    with cache.open("a") as f:
        f.write('{"key": "q1", "prom')  # torn by the kill
    tiny_lmm.generate = type(tiny_lmm).generate.__get__(tiny_lmm)

    calls = counting_generate(tiny_lmm)
    run(tiny_lmm, images, tmp_path / "killed", resume=True)
    assert len(calls) == 4  # only the batches not answered before the kill
    assert answers(tmp_path / "killed") == answers(tmp_path / "full")


def test_answers_of_other_weights_or_without_resume_are_not_reused(tiny_lmm, images, tmp_path):  # noqa: F811
    run(tiny_lmm, images, tmp_path, resume=False)
    calls = counting_generate(tiny_lmm)
    run(tiny_lmm, images, tmp_path, resume=True)
    assert calls == []  # everything was kept
    run(tiny_lmm, images, tmp_path, resume=True, model_id="other-weights")
    assert len(calls) == 7
    run(tiny_lmm, images, tmp_path, resume=False, model_id="other-weights")
    assert len(calls) == 14
