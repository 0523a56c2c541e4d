"""Training composed through Hydra: both stages chained, freezing, and the demo pipeline on a slice."""
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

import lmm
from lmm.data.datamodule import LlavaDataModule
from lmm.train.module import LMMTrainModule
from lmm.train.run import accumulation, model_spec, train
from tests.conftest import compose_config


def compose_train(data_dir, runs_dir, *overrides):
    return compose_config("train", runs_dir=runs_dir, overrides=[
            f"paths.data_dir={data_dir}", "vision=tiny_clip",
            "llm.hf_config.hidden_size=32", "llm.hf_config.intermediate_size=64", "llm.hf_config.num_hidden_layers=1",
            "data.loader.micro_batch_size=4", "++recipe.stages.pretrain.micro_batch_size=4",
            "++recipe.stages.sft.micro_batch_size=4", "recipe.stages.pretrain.global_batch_size=8",
            "recipe.stages.sft.global_batch_size=8", "recipe.stages.pretrain.epochs=1", "recipe.stages.sft.epochs=1",
            "+trainer.limit_train_batches=4", "trainer.log_every_n_steps=1", "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
            "evaluation.limit=16", "callbacks.samples.num_samples=2", *overrides])


def test_two_stage_fit_chains_checkpoints_and_freezes(data_dir, tmp_path):
    cfg = compose_train(data_dir, tmp_path, "recipe=base", "evaluate=false")
    out = train(cfg)
    run = tmp_path / "easyvqa/tiny_clip__pixel_shuffle_mlp__tiny_llama__seed0/base"
    pre, sft = run / "pretrain/checkpoint", Path(out["checkpoint"])
    assert sft == run / "sft/checkpoint"
    info = json.loads((run / "run.json").read_text())
    assert info["choices"] == {"vision": "tiny_clip", "connector": "pixel_shuffle_mlp", "llm": "tiny_llama",
                               "recipe": "base", "data": "easyvqa"}
    assert info["name"] == "tiny_clip__pixel_shuffle_mlp__tiny_llama__seed0/base" and "llm=tiny_llama" in info["tags"]
    w_pre, w_sft = load_file(pre / "model.safetensors"), load_file(sft / "model.safetensors")
    vision = [k for k in w_pre if k.startswith("vision.")]
    connector = [k for k in w_pre if k.startswith("connector.")]
    assert vision and connector
    # sft starts from the pretrain checkpoint and keeps the vision tower frozen ...
    assert all(torch.equal(w_pre[k], w_sft[k]) for k in vision)
    # ... while it trains the connector.
    assert any(not torch.equal(w_pre[k], w_sft[k]) for k in connector)
    assert (run / "pretrain/version_0/metrics.csv").is_file()
    header = (run / "sft/version_0/metrics.csv").read_text().splitlines()[0]
    assert {"train/loss", "train/lr", "train/tokens_per_s"} <= set(header.split(","))


def test_frozen_modules_do_not_change(data_dir, tmp_path):
    cfg = compose_train(data_dir, tmp_path, "recipe=base")
    stage = cfg.recipe.stages.pretrain
    module = LMMTrainModule(model_spec(cfg), stage.tune, stage.optim)
    assert module.trainable["vision"] == module.trainable["llm"] == 0 and module.trainable["connector"] > 0
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    dm = LlavaDataModule(**cfg.data.pretrain, **cfg.data.loader).attach(module.model, module.model.template)
    L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, datamodule=dm)
    after = module.model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"connector"}


def test_demo_pipeline_on_a_slice(data_dir, tmp_path, capsys):
    cfg = compose_train(data_dir, tmp_path)  # the demo recipe: every module trains
    out = train(cfg)
    run = Path(cfg.paths.output_dir)
    results = out["results"]
    assert set(results["benchmarks"]) == {"easyvqa_vqa", "easyvqa_pope", "easyvqa_mc"}
    vqa = results["benchmarks"]["easyvqa_vqa"]
    assert vqa["n"] == 16 and 0.0 <= vqa["accuracy"] <= 1.0
    assert (run / "eval/easyvqa_vqa_results.json").is_file() and (run / "eval/results.json").is_file()
    assert len((run / "eval/easyvqa_vqa/predictions.jsonl").read_text().splitlines()) == 16
    # the eval metrics land in the last stage's log, and sample predictions in each stage folder
    metrics = (run / "sft/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"eval/easyvqa_vqa/accuracy", "eval/easyvqa_pope/f1", "eval/easyvqa_mc/accuracy"} <= set(metrics)
    samples = [json.loads(line) for line in (run / "pretrain/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and {"prompt", "reference", "prediction", "images"} <= set(samples[0])
    assert "| easyvqa_pope" in capsys.readouterr().out  # the table is printed
    model = lmm.load(out["checkpoint"])
    # the Lightning checkpoint reloads with no other argument and holds the same weights
    restored = LMMTrainModule.load_from_checkpoint(run / "sft/lightning/last.ckpt")
    assert sorted(p.name for p in (run / "sft/lightning").iterdir()) == ["last.ckpt"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in restored.model.state_dict().items())
    answer = model.chat(data_dir / "easyvqa/images/test/0.png", "what color is the shape?", max_new_tokens=4)
    assert isinstance(answer, str)


def test_accumulation_keeps_the_global_batch():
    assert accumulation(256, 8, 4) == 8
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation(128, 3, 1)


def test_unknown_choices_list_the_valid_ones(data_dir, tmp_path):
    cfg = compose_train(data_dir, tmp_path, "run_stages=[pretrain,finetune]")
    with pytest.raises(ValueError, match=r"no stage 'finetune'; valid: \['pretrain', 'sft'\]"):
        train(cfg)
    cfg = compose_train(data_dir, tmp_path, "recipe.stages.sft.tune.llm=half")
    with pytest.raises(ValueError, match="unknown tune mode 'half'"):
        LMMTrainModule(model_spec(cfg), cfg.recipe.stages.sft.tune, cfg.recipe.stages.sft.optim)


def test_runner_resumes_a_killed_stage_and_skips_finished_ones(data_dir, tmp_path):
    from tests.test_resume import Killed

    run = tmp_path / "easyvqa/tiny_clip__pixel_shuffle_mlp__tiny_llama__seed0/base"
    common = ["recipe=base", "evaluate=false", "checkpoint_every=1", "callbacks.samples.num_samples=0",
              "recipe.stages.pretrain.global_batch_size=4"]
    kill = ["+callbacks.kill._target_=tests.test_resume.KillAt", "+callbacks.kill.epoch=0", "+callbacks.kill.batch_idx=2"]
    with pytest.raises(Killed):
        train(compose_train(data_dir, tmp_path, *common, *kill))
    ckpt = torch.load(run / "pretrain/lightning/last.ckpt", weights_only=False)
    assert ckpt["LlavaDataModule"]["done"] == 2 and ckpt["global_step"] == 2

    out = train(compose_train(data_dir, tmp_path, *common, "resume=true"))
    steps = [int(r.split(",")[header.index("step")]) for header in
             [(run / "pretrain/version_1/metrics.csv").read_text().splitlines()[0].split(",")]
             for r in (run / "pretrain/version_1/metrics.csv").read_text().splitlines()[1:]]
    assert min(steps) >= 2 and max(steps) == 3  # the resumed pretrain ran only the batches after the kill
    assert Path(out["checkpoint"]) == run / "sft/checkpoint"

    again = train(compose_train(data_dir, tmp_path, *common, "resume=true"))  # both stages finished: nothing runs
    assert again["checkpoint"] == out["checkpoint"]
    assert not (run / "pretrain/version_2").exists() and not (run / "sft/version_1").exists()


def test_token_modes_keep_the_global_batch_on_average():
    from types import SimpleNamespace

    from lmm.data.plan import BatchingConfig
    from lmm.train.run import stage_accumulation

    fixed = SimpleNamespace(batching=BatchingConfig("length_grouped", micro_batch_size=8), micro_batch_size=8)
    assert stage_accumulation(128, fixed, 4) == 4
    with pytest.raises(ValueError, match="not a multiple"):
        stage_accumulation(100, fixed, 4)
    packed = SimpleNamespace(batching=BatchingConfig("packed"), micro_batch_size=8, samples_per_micro_batch=10.7)
    assert stage_accumulation(256, packed, 8) == 3  # 256 / (10.7 x 8) = 2.99
    assert stage_accumulation(16, packed, 8) == 1  # never below one micro-batch
