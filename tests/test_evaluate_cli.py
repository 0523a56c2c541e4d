"""`python -m lmm.evaluate`: one command from a checkpoint to the table, on the easy-vqa forms by
default; the same answers on 1 or 2 processes; W&B logging; clear errors for bad choices."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmm.eval.cli import run
from lmm.model.lmm import LMM
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
FORMS = {"easyvqa_vqa", "easyvqa_pope", "easyvqa_mc"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_dir):
    from tests.conftest import MLP2X_GELU, llm_spec, vision_spec

    torch.manual_seed(0)
    model = LMM(vision=vision_spec(), connector=dict(MLP2X_GELU), llm=llm_spec(str(data_dir / "easyvqa/tokenizer")))
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "checkpoint")


def command(checkpoint, data_dir, out, *overrides):
    return [sys.executable, "-m", "lmm.evaluate", f"checkpoint={checkpoint}", f"paths.data_dir={data_dir}",
            f"hydra.run.dir={out}", "evaluation.progress=false", *overrides]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "LMM_WANDB_OFFLINE": "true"}


def test_default_scores_the_three_easyvqa_forms(checkpoint, data_dir, tmp_path, capsys):
    cfg = compose_config("eval", [f"checkpoint={checkpoint}", f"paths.data_dir={data_dir}",
                                  f"output_dir={tmp_path}", "evaluation.limit=6", "evaluation.progress=false"])
    summary = run(cfg)
    assert set(summary["benchmarks"]) == FORMS
    vqa, pope, mc = (summary["benchmarks"][k] for k in ("easyvqa_vqa", "easyvqa_pope", "easyvqa_mc"))
    assert vqa["n"] == 6 and 0 <= vqa["accuracy"] <= 1
    assert {"f1", "accuracy"} <= set(pope) and 0 <= pope["f1"] <= 1
    assert 0 <= mc["accuracy"] <= 1
    printed = capsys.readouterr().out
    for name in FORMS:
        assert f"| {name}" in printed
        assert (tmp_path / f"{name}_results.json").is_file() and (tmp_path / name / "answers.jsonl").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["checkpoint"] == str(checkpoint)


@pytest.mark.slow
def test_two_processes_give_the_answers_of_one(checkpoint, data_dir, tmp_path):
    # batch size 1: the answers cannot depend on which prompts share a padded batch
    common = ["evaluation.limit=5", "evaluation.batch_size=1", "accelerator=cpu"]
    one = subprocess.run(command(checkpoint, data_dir, tmp_path / "one", *common), cwd=tmp_path, env=env(),
                         capture_output=True, text=True, timeout=600, check=False)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(command(checkpoint, data_dir, tmp_path / "two", *common, "devices=2"), cwd=tmp_path,
                         env=env(), capture_output=True, text=True, timeout=600, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("| easyvqa_vqa") == 1  # one table, from rank zero
    for name in FORMS:
        a = (tmp_path / "one" / name / "answers.jsonl").read_text()
        b = (tmp_path / "two" / name / "answers.jsonl").read_text()
        assert a == b and len(a.splitlines()) > 0
    results = [json.loads((tmp_path / d / "results.json").read_text())["benchmarks"] for d in ("one", "two")]
    assert results[0] == results[1]


@pytest.mark.slow  # a `python -m lmm.evaluate` process
def test_wandb_gets_the_metrics_and_the_table(checkpoint, data_dir, tmp_path):
    wandb = pytest.importorskip("wandb")
    from tests.test_wandb import summarise

    # As from a notebook that used W&B before starting the command: the command inherits this process's
    # W&B service (WANDB_SERVICE), which writes its run only if the command finishes it. (wandb keeps its
    # service, and the variable, for the rest of this process, as after any in-process W&B run.)
    wandb.init(mode="offline", project="lmm-test", dir=str(tmp_path / "notebook")).finish()
    assert os.environ.get("WANDB_SERVICE")
    done = subprocess.run(command(checkpoint, data_dir, tmp_path, "evaluation.limit=3", "logger=wandb",
                                  "benchmark=[easyvqa]"), cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    files = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    s = summarise(files[0])
    assert {"eval/easyvqa_vqa/accuracy", "eval/easyvqa_pope/f1", "eval/easyvqa_mc/accuracy"} <= s["history"]
    assert s["run"].display_name == f"eval/{checkpoint.parent.name}/checkpoint"
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/eval/table_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["benchmark", "column", "value", "n", "convention", "notes"]
    assert {row[4] for row in table["data"]} == {"llava"}
    assert {row[0] for row in table["data"]} == FORMS


def test_bad_choices_are_named(checkpoint, data_dir, tmp_path):
    done = subprocess.run(command(checkpoint, data_dir, tmp_path, "benchmark=[pope,vqa3]"), cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0
    assert "unknown benchmark 'vqa3'; valid: " in done.stderr and "vqav2" in done.stderr
    cfg = compose_config("eval", [f"checkpoint={tmp_path}", f"paths.data_dir={data_dir}", f"output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="not an lmm checkpoint"):
        run(cfg)
