"""The ablation grid: every config choice composes, every tiny cell trains, stages and recipes chain."""
from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from lmm.data.collate import Collator
from lmm.data.datamodule import LlavaDataModule
from lmm.model.spec import to_plain
from lmm.train.module import LMMTrainModule
from lmm.train.run import init_weights, model_spec, train
from tests.conftest import CONF, compose_config

ROOT = Path(CONF).parent
GROUPS = ["vision", "connector", "llm", "recipe", "data", "trainer", "strategy", "logger", "callbacks", "paths"]


def choices(group: str, pattern: str = "*.yaml") -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob(pattern))


@pytest.mark.parametrize("group, choice", [(g, c) for g in GROUPS for c in choices(g)])
def test_every_choice_of_every_group_composes_and_resolves(group, choice, tmp_path):
    cfg = compose_config("train", runs_dir=tmp_path, overrides=[f"{group}={choice}"])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved["run"]["choices"].get(group, choice) == choice
    assert choice in resolved["run"]["path"] or group not in resolved["run"]["choices"]


EXPERIMENTS = choices("experiment")


def test_the_paper_variants_are_all_there():
    expected = {f"TinyLLaVA-{r}-{v}-{l}" for r in ("base", "share") for v in ("C", "Sig") for l in ("TL", "SLM", "Phi")}
    assert set(EXPERIMENTS) == expected


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose_config("train", runs_dir=tmp_path, overrides=[f"+experiment={experiment}"])
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    _, recipe, vision, llm = experiment.split("-")
    run = resolved["run"]
    assert run["experiment"] == experiment and run["choices"]["recipe"] == recipe
    assert run["choices"]["vision"] == {"C": "clip_l14_336", "Sig": "siglip_so400m_384"}[vision]
    assert run["choices"]["llm"] == {"TL": "tinyllama_1_1b", "SLM": "stablelm2_1_6b", "Phi": "phi2"}[llm]
    assert run["choices"]["data"] == {"base": "llava15", "share": "sharegpt4v"}[recipe]
    if recipe == "share":  # the connector starts from the base run of the same cell, on LLaVA-1.5 data
        init = resolved["recipe"]["stages"]["pretrain"]["init"]
        assert init["checkpoint"] == f"{tmp_path}/llava15/{run['cell']}/base/pretrain/checkpoint"
        assert init["modules"] == ["connector"]


@pytest.mark.parametrize("sweep", choices("sweep"))
def test_every_sweep_composes_in_every_cell(sweep, tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(CONF, version_base="1.3"):
        params = compose("train", overrides=[f"+sweep={sweep}"], return_hydra_config=True).hydra.sweeper.params
    axes = [[f"{k}={v}" for v in str(values).split(",")] for k, values in params.items()]
    assert len(axes) >= 1
    paths = set()
    for cell in itertools.product(*axes):
        cfg = compose_config("train", runs_dir=tmp_path, overrides=[f"+sweep={sweep}", *cell])
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        assert resolved["run"]["group"] == sweep
        paths.add(resolved["run"]["path"])
    assert len(paths) == len(list(itertools.product(*axes)))  # no two cells share a folder


def tiny_cells():
    llms, visions, connectors = choices("llm", "tiny_*.yaml"), choices("vision", "tiny_*.yaml"), choices("connector")
    return [c for c in itertools.product(llms, visions, connectors) if c[2] != "identity"]


def test_the_tiny_grid_covers_every_family_backend_and_connector():
    cells = tiny_cells()
    assert {c[0] for c in cells} >= {"tiny_llama", "tiny_qwen2", "tiny_gemma", "tiny_phi", "tiny_stablelm"}
    assert {c[1] for c in cells} >= {"tiny_siglip", "tiny_timm_vit", "tiny_open_clip"}
    assert {c[2] for c in cells} >= {"mlp2x_gelu", "linear", "resampler", "pixel_shuffle_mlp"}


@pytest.fixture(scope="module")
def sft_records(data_dir):
    return json.loads((data_dir / "easyvqa/sft.json").read_text())[:3]


@pytest.mark.parametrize("llm, vision, connector", tiny_cells())
def test_every_tiny_cell_takes_a_training_step(llm, vision, connector, data_dir, sft_records, tmp_path):
    cfg = compose_config("train", runs_dir=tmp_path, overrides=[
        f"paths.data_dir={data_dir}", f"llm={llm}", f"vision={vision}", f"connector={connector}"])
    torch.manual_seed(0)
    full = {"vision": "full", "connector": "full", "llm": "full"}
    module = LMMTrainModule(model_spec(cfg), full, {"lr": 1e-3})
    model = module.model
    dm = LlavaDataModule([], str(data_dir / "easyvqa")).attach(model, model.template)
    root = data_dir / "easyvqa"
    batch = Collator(model.tokenizer.pad_token_id)([dm.processor(r, lambda p: root / p) for r in sft_records])
    out = model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"])
    n_images = batch["pixel_values"].shape[0]
    assert out.attention_mask.shape[1] == batch["input_ids"].shape[1] + n_images // len(sft_records) * (model.num_visual_tokens - 1)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # DDP would stop on an unused parameter
    before = model.connector.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert any(not torch.equal(v, model.connector.state_dict()[k]) for k, v in before.items())


def tiny_run(data_dir, runs_dir, *overrides):
    return compose_config("train", runs_dir=runs_dir, overrides=[
        f"paths.data_dir={data_dir}", "vision=tiny_clip", "llm.hf_config.hidden_size=32",
        "llm.hf_config.intermediate_size=64", "llm.hf_config.num_hidden_layers=1", "data.loader.micro_batch_size=4",
        "recipe.stages.pretrain.global_batch_size=4", "recipe.stages.sft.global_batch_size=4",
        "recipe.stages.pretrain.epochs=1", "recipe.stages.sft.epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "evaluate=false",
        "callbacks.samples.num_samples=1", *overrides])


def test_sft_alone_finds_the_pretrain_checkpoint_of_its_cell(data_dir, tmp_path):
    pre = train(tiny_run(data_dir, tmp_path, "recipe=base", "run_stages=[pretrain]"))["checkpoint"]
    sft = train(tiny_run(data_dir, tmp_path, "recipe=base", "run_stages=[sft]"))["checkpoint"]
    assert Path(pre).parent.parent == Path(sft).parent.parent  # the same cell folder
    w_pre, w_sft = load_file(Path(pre) / "model.safetensors"), load_file(Path(sft) / "model.safetensors")
    assert all(torch.equal(w_pre[k], w_sft[k]) for k in w_pre if k.startswith("vision."))  # loaded, then frozen
    other = tiny_run(data_dir, tmp_path, "recipe=base", "run_stages=[sft]", "seed=1")  # another cell: no pretrain
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        train(other)


def test_share_pretrain_starts_its_connector_from_the_base_pretrain_of_the_cell(data_dir, tmp_path):
    share = tiny_run(data_dir, tmp_path, "recipe=share", "recipe.stages.pretrain.tune.vision.frozen_layers=1")
    stage = share.recipe.stages.pretrain
    with pytest.raises(FileNotFoundError, match="base recipe's pretrain"):
        init_weights(LMMTrainModule(model_spec(share), stage.tune, stage.optim), "pretrain", stage.init)
    base = train(tiny_run(data_dir, tmp_path, "recipe=base", "run_stages=[pretrain]"))["checkpoint"]
    assert Path(stage.init.checkpoint) == Path(base)
    torch.manual_seed(123)  # a different random start than the base run's
    module = LMMTrainModule(model_spec(share), stage.tune, stage.optim)
    init_weights(module, "pretrain", stage.init)
    saved = load_file(Path(base) / "model.safetensors")
    state = module.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items() if k.startswith("connector."))
    assert not torch.equal(state["llm.model.lm_head.weight"], saved["llm.model.lm_head.weight"])
    assert to_plain(stage.tune)["vision"] == {"mode": "partial", "frozen_layers": 1}
    assert module.trainable["vision"] > 0 and module.trainable["llm"] > 0


@pytest.mark.slow  # a multirun process, then the gather script
def test_hydra_multirun_over_a_2x2_tiny_grid_runs_both_stages(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMM_DATA_DIR": str(data_dir), "LMM_RUNS_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "lmm.train", "-m", "+sweep=easyvqa_tiny", "threads=1", "recipe.stages.pretrain.epochs=1",
           "recipe.stages.sft.epochs=1", "+trainer.limit_train_batches=2", "evaluation.limit=4",
           "+trainer.enable_progress_bar=false", "callbacks.samples.num_samples=1", "trainer.log_every_n_steps=1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(tmp_path.glob("easyvqa/*/demo/run.json"))
    infos = [json.loads(p.read_text()) for p in runs]
    assert {(i["choices"]["vision"], i["choices"]["llm"]) for i in infos} == {
        (v, l) for v in ("tiny_siglip", "tiny_clip") for l in ("tiny_llama", "tiny_qwen2")}
    for path, info in zip(runs, infos):
        assert info["group"] == "easyvqa_tiny"
        for stage in ("pretrain", "sft"):
            assert (path.parent / stage / "checkpoint/model.safetensors").is_file()
        assert json.loads((path.parent / "eval/easyvqa_vqa_results.json").read_text())["n"] == 4
    # the study's gather script turns the grid into one table row per cell
    table = tmp_path / "table.csv"
    gather = [sys.executable, str(ROOT / "experiments/tinyllava_ablation/gather.py"), str(tmp_path),
              "--group", "easyvqa_tiny", "--out", str(table)]
    done = subprocess.run(gather, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 4
    assert all(r["loss/pretrain"] and r["loss/sft"] and r["easyvqa_vqa/accuracy"] and r["easyvqa_pope/f1"] for r in rows)


def test_a_variant_outside_the_choices_cannot_overwrite_a_run_silently(data_dir, tmp_path):
    first = tiny_run(data_dir, tmp_path, "recipe=base", "run_stages=[pretrain]")
    train(first)
    again = tiny_run(data_dir, tmp_path, "recipe=base", "run_stages=[sft]")  # same experiment, next stage: fine
    assert again.run.path == first.run.path
    other_lr = tiny_run(data_dir, tmp_path, "recipe=base", "run_stages=[pretrain]", "recipe.stages.pretrain.optim.lr=0.5",
                        "run.overwrite=false")  # the default inside a multirun (a single run warns)
    with pytest.raises(ValueError, match=r"recipe\.stages\.pretrain\.optim\.lr: 0\.001 -> 0\.5.*run\.tag="):
        train(other_lr)
    tagged = tiny_run(data_dir, tmp_path, "recipe=base", "recipe.stages.pretrain.optim.lr=0.5", "run.tag=_lr0.5")
    assert tagged.run.path != first.run.path and tagged.run.cell.endswith("_lr0.5")
    from lmm.train.run import check_run_folder, run_info

    check_run_folder(Path(other_lr.paths.output_dir), run_info(other_lr), overwrite=True)  # asked for: allowed


@pytest.mark.slow
def test_a_multirun_over_a_non_choice_axis_needs_a_tag(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMM_DATA_DIR": str(data_dir), "LMM_RUNS_DIR": str(tmp_path)}
    base = [sys.executable, "-m", "lmm.train", "-m", "threads=1", "vision=tiny_clip", "run_stages=[pretrain]",
            "evaluate=false", "+trainer.limit_train_batches=1", "+trainer.enable_progress_bar=false",
            "callbacks.samples.num_samples=1", "recipe.stages.pretrain.optim.lr=0.1,0.2"]
    done = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0 and "holds a run of another configuration" in done.stderr + done.stdout
    tagged = [*base, "run.tag=_lr${recipe.stages.pretrain.optim.lr}"]
    done = subprocess.run(tagged, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.parents[1].name for p in tmp_path.glob("easyvqa/*/demo/run.json")} >= {
        "tiny_clip__pixel_shuffle_mlp__tiny_llama__seed0_lr0.1", "tiny_clip__pixel_shuffle_mlp__tiny_llama__seed0_lr0.2"}
