"""Secrets never reach a run's files (lmm/secrets.py): refused on the command line before Hydra
saves it, redacted when they come from a config file."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmm.secrets import REDACTED, InlineSecretError, check_overrides, redact, scrub_hydra_dir
from tests.test_wandb import wandb_records

KEY = "sk-test" + "0123456789abcdefghijKLMN"  # shaped like an OpenAI key
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arg", [f"judge.api_key={KEY}", "+hf_token=hf_abcdefghijklmnopqrstuvwx", "+logger.token=abc",
                                 "++wandb_api_key=123", f"judge.url=https://proxy.example/v1?key={KEY}",
                                 "+judge.password=hunter2"])
def test_secrets_on_the_command_line_are_refused(arg):
    with pytest.raises(InlineSecretError, match=r"refusing .*=\.\.\.: a key on the command line would be saved") as err:
        check_overrides(["recipe=base", arg])
    assert KEY not in str(err.value) and "hunter2" not in str(err.value)


@pytest.mark.parametrize("arg", ["judge.api_key_env=MY_KEY", "evaluation.max_new_tokens=8", "llm.tokenizer=/x/tok",
                                 "judge=null", "judge.api_key=null", "data.loader.pad_token=x", "seed=1"])
def test_ordinary_overrides_pass(arg):
    check_overrides([arg])


def test_redact_replaces_secret_values_under_any_key():
    config = {"judge": {"url": "u", "api_key": KEY, "api_key_env": "OPENAI_API_KEY"}, "note": f"key {KEY} inline",
              "llm": {"tokenizer": "t", "token": None}, "list": [{"password": "p"}]}
    clean = redact(config)
    assert clean == {"judge": {"url": "u", "api_key": REDACTED, "api_key_env": "OPENAI_API_KEY"},
                     "note": f"key {REDACTED} inline", "llm": {"tokenizer": "t", "token": None},
                     "list": [{"password": REDACTED}]}


def test_hydra_files_are_scrubbed(tmp_path):
    hydra = tmp_path / ".hydra"
    hydra.mkdir()
    (hydra / "config.yaml").write_text(f"judge:\n  api_key: {KEY}\n  model: m\nseed: 0\n")
    (hydra / "overrides.yaml").write_text("- seed=0\n")
    assert scrub_hydra_dir(tmp_path) == [hydra / "config.yaml"]
    assert KEY not in (hydra / "config.yaml").read_text() and "model: m" in (hydra / "config.yaml").read_text()


def env(tmp_path):
    return {**os.environ, "OMP_NUM_THREADS": "1", "LMM_RUNS_DIR": str(tmp_path / "runs"), "WANDB_SILENT": "true",
            "LMM_WANDB_OFFLINE": "true", "PYTHONPATH": str(ROOT)}


def test_the_training_command_refuses_an_inline_key_before_writing_anything(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lmm.train", f"judge.api_key={KEY}"], cwd=tmp_path, env=env(tmp_path),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1 and "set judge.api_key_env=<VARIABLE>" in done.stderr
    assert KEY not in done.stdout + done.stderr and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_key_from_a_config_file_reaches_no_run_artifact(data_dir, tmp_path):
    """A key written in an experiment YAML: the run (W&B offline, evaluation on) writes it nowhere:
    not .hydra/, run.json, hparams, the W&B files, the logs, nor the console."""
    extra = tmp_path / "extra_conf" / "experiment"
    extra.mkdir(parents=True)
    (extra / "leaky.yaml").write_text(f"# @package _global_\njudge: {{url: http://127.0.0.1:9, model: m, api_key: {KEY}}}\n")
    cmd = [sys.executable, "-m", "lmm.train", f"hydra.searchpath=[file://{tmp_path / 'extra_conf'}]", "+experiment=leaky",
           f"paths.data_dir={data_dir}", "vision=tiny_clip", "llm.hf_config.hidden_size=32",
           "llm.hf_config.intermediate_size=64", "llm.hf_config.num_hidden_layers=1", "data.loader.micro_batch_size=4",
           "recipe=base", "recipe.stages.pretrain.global_batch_size=4", "recipe.stages.sft.global_batch_size=4",
           "recipe.stages.pretrain.epochs=1", "recipe.stages.sft.epochs=1", "+trainer.limit_train_batches=2",
           "+trainer.enable_progress_bar=false", "callbacks.samples.num_samples=1", "logger=wandb",
           "evaluation.limit=4", "trainer.log_every_n_steps=1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert {"config.yaml", "overrides.yaml", "hydra.yaml", "run.json", "__main__.log"} <= {p.name for p in files}
    judge = [json.loads(item.value_json) for p in files if p.suffix == ".wandb" for r in wandb_records(p)
             if r.WhichOneof("record_type") == "config" for item in r.config.update if item.key == "judge"]
    assert judge and all(j["api_key"] == REDACTED and j["model"] == "m" for j in judge)  # the W&B config of each stage
    leaked = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert leaked == [] and KEY not in done.stdout + done.stderr
    assert REDACTED in next((tmp_path / "runs").rglob(".hydra/config.yaml")).read_text()
