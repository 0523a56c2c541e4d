"""lmm as an lmms-eval model (lmm/lmms_eval/, entry point `lmms_eval.models`): `python -m lmms_eval
--model lmm` runs offline on a local task over the easy-vqa test set, answers as `lmm.evaluate` does,
and lmms-eval's exact match over those answers is what the answers give."""
import json
import os
import subprocess
import sys

import pytest
import torch

from lmm.eval.cli import run
from lmm.model.lmm import LMM
from tests.conftest import EXTRAS, MLP2X_GELU, compose_config, llm_spec, needs, vision_spec

needs("lmms_eval")
# what `python -m lmms_eval` itself needs beyond the model interface: the [lmms-eval] extra's
# environment has them (`make test-lmms-eval`, part of `make test`); the main one skips this run
EVALUATOR = ("datasets", "evaluate", "sacrebleu", "dill", "tenacity", "pytablewriter")

N = 12
TASK = """task: lmm_easyvqa_plugin_test
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: "{{question}}"
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 8
  do_sample: false
  until: ["@@@@"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""
UTILS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]
"""


def test_the_entry_point_names_the_model_class():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points().select(group="lmms_eval.models") if e.name == "lmm"]
    manifest = ep.load()()
    assert manifest.model_id == "lmm" and manifest.simple_class_path == "lmm.lmms_eval.model.LMMForLmmsEval"


@pytest.mark.skipif(not EXTRAS, reason="checks the [lmms-eval] extra's environment (make test-lmms-eval)")
def test_the_extras_environment_has_lmms_evals_pins():
    """That step is meant to run our W&B code under the wandb lmms-eval pins, and litdata with pyarrow
    importable (it changes how litdata writes dict items)."""
    from importlib.metadata import requires

    import wandb

    (pin,) = [r.split("==")[1].strip() for r in requires("lmms_eval") if r.replace(" ", "").startswith("wandb==")]
    assert wandb.__version__ == pin
    needs("pyarrow")


@pytest.mark.timeout(600)
def test_lmms_eval_runs_lmm_offline_and_scores_its_answers(data_dir, tmp_path):
    for name in EVALUATOR:
        needs(name)
    torch.manual_seed(0)
    model = LMM(vision=vision_spec(), connector=dict(MLP2X_GELU), llm=llm_spec(str(data_dir / "easyvqa/tokenizer")))
    ckpt = model.save_pretrained(tmp_path / "checkpoint")
    # lmm.evaluate's answers to the first N short-answer questions (batch size 1: no padding effects)
    cfg = compose_config("eval", [f"checkpoint={ckpt}", f"paths.data_dir={data_dir}", f"output_dir={tmp_path / 'ours'}",
                                  "evaluation.progress=false", f"evaluation.limit={N}", "evaluation.batch_size=1",
                                  "benchmark=[easyvqa]", "~benchmark.easyvqa_pope", "~benchmark.easyvqa_mc"])
    run(cfg)
    ours = [json.loads(line) for line in (tmp_path / "ours/easyvqa_vqa/answers.jsonl").read_text().splitlines()]
    questions = {q["question_id"]: q for q in
                 json.loads((data_dir / "easyvqa/eval/vqa_questions.json").read_text())["questions"]}
    # targets: lmm's own answer for even docs, one no answer can equal for odd docs -> exact match 0.5
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    with (tasks / "docs.jsonl").open("w") as f:
        for i, row in enumerate(ours):
            q = questions[int(row["key"])]
            image = data_dir / f"easyvqa/images/test/{q['image_id']}.png"
            f.write(json.dumps({"question": row["prompt"], "image": str(image),
                                "answer": row["answer"] if i % 2 == 0 else "zzzz never an answer"}) + "\n")
    (tasks / "lmm_easyvqa.yaml").write_text(TASK)
    (tasks / "utils.py").write_text(UTILS)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "lmm", "--model_args",
                           f"pretrained={ckpt},device=cpu", "--tasks", "lmm_easyvqa_plugin_test", "--include_path",
                           str(tasks), "--batch_size", "1", "--output_path", str(tmp_path / "out"), "--log_samples",
                           "--verbosity", "DEBUG"],  # DEBUG: an error fails the run (it exits 0 otherwise)
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    (results,) = (tmp_path / "out").rglob("*_results.json")
    (samples,) = (tmp_path / "out").rglob("*_samples_lmm_easyvqa_plugin_test.jsonl")
    theirs = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])
    assert [s["filtered_resps"] for s in theirs] == [r["answer"] for r in ours]
    score = json.loads(results.read_text())["results"]["lmm_easyvqa_plugin_test"]["exact_match,none"]
    assert len(ours) == N and score == pytest.approx(0.5)


def test_loglikelihood_is_the_continuations_log_probability(data_dir, tmp_path):
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from lmm.data.tokenize import IGNORE_INDEX
    from lmm.lmms_eval.model import LMMForLmmsEval

    question = "what color is the shape?"
    image = Image.open(data_dir / "easyvqa/images/test/0.png").convert("RGB")
    # lmms-eval hands continuations over as text: the first random model (by seed) whose greedy tokens
    # are text that tokenises back to them (a random model may pick a lone byte of a UTF-8 character)
    for seed in range(50):
        torch.manual_seed(seed)
        model = LMM(vision=vision_spec(), connector=dict(MLP2X_GELU),
                    llm=llm_spec(str(data_dir / "easyvqa/tokenizer"))).eval()
        prompt, pixels = model.prompt_ids(question, 1), model.image_transform(image)[None]
        greedy_ids = model.generate(prompt[None], pixels, max_new_tokens=3)[0].tolist()
        greedy_text = model.tokenizer.decode(greedy_ids)
        if model.tokenizer(greedy_text, add_special_tokens=False)["input_ids"] == greedy_ids:
            break
    else:
        pytest.fail("no random model of 50 continues the prompt with text that tokenises back")
    lm = LMMForLmmsEval(pretrained=str(model.save_pretrained(tmp_path / "checkpoint")), device="cpu")
    model = lm.model
    lm.task_dict = {"t": {"test": [{"image": image}]}}
    assert model.generate(prompt[None], pixels, max_new_tokens=3)[0].tolist() == greedy_ids  # the loaded model
    requests = [Instance("loglikelihood", (question, text, lambda doc: [doc["image"]], 0, "t", "test"), k,
                         {"task": "t", "doc_id": 0, "repeats": 1}) for k, text in enumerate([" blue", greedy_text])]
    results = lm.loglikelihood(requests)
    for (logprob, _), text in zip(results, [" blue", greedy_text]):
        # the reference: lmm's training loss with the continuation as the only labels (mean over its tokens)
        cont = torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = torch.cat([prompt, cont])[None]
        labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), cont])[None]
        with torch.no_grad():
            loss = model(ids, pixels, labels=labels).loss
        assert logprob == pytest.approx(-loss.item() * len(cont), rel=1e-5)
    assert results[1][1] is True  # the greedy continuation is the greedy one
    blue = model.tokenizer(" blue", add_special_tokens=False)["input_ids"]
    assert results[0][1] == (blue == greedy_ids[:len(blue)])
