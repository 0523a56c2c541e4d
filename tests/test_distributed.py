"""Two-process training on the CPU (gloo): FSDP2 through ModelParallelStrategy, and DDP.

Both runs see the same data split (the datamodule's plan, same seed) and average the same per-rank
losses, so in float32 FSDP2's sharded update must equal DDP's replicated one: a check that the
sharding, the frozen parameters and the gathered export lose nothing.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmm


def fit_two_processes(data_dir, runs_dir, strategy, *overrides) -> Path:
    runs_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMM_DATA_DIR": str(data_dir), "LMM_RUNS_DIR": str(runs_dir)}
    cmd = [sys.executable, "-m", "lmm.train", f"strategy={strategy}", "trainer.devices=2", "threads=1", "recipe=base",
           "llm.hf_config.hidden_size=64", "llm.hf_config.intermediate_size=128", "data.loader.micro_batch_size=4",
           "recipe.stages.pretrain.global_batch_size=8", "recipe.stages.sft.global_batch_size=8",
           "+trainer.limit_train_batches=4", "trainer.log_every_n_steps=1", "evaluate=false",
           "+trainer.enable_progress_bar=false", "callbacks.samples.num_samples=2", *overrides]
    done = subprocess.run(cmd, cwd=runs_dir, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (run,) = runs_dir.glob("easyvqa/*/base")
    return run


@pytest.mark.slow
def test_fsdp2_and_ddp_two_process_fits_agree(data_dir, tmp_path):
    fsdp = fit_two_processes(data_dir, tmp_path / "fsdp", "fsdp", "strategy.model.param_dtype=null",
                             "strategy.model.activation_checkpointing=true")
    ddp = fit_two_processes(data_dir, tmp_path / "ddp", "ddp")
    # FSDP2 resume checkpoints are sharded (a folder, one shard per rank); DDP's are one file
    assert (fsdp / "sft/lightning/last.ckpt").is_dir() and (ddp / "sft/lightning/last.ckpt").is_file()
    for stage in ("pretrain", "sft"):
        a, b = load_file(fsdp / stage / "checkpoint/model.safetensors"), load_file(ddp / stage / "checkpoint/model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=f"{stage}: {key}")
    start, end = (load_file(fsdp / s / "checkpoint/model.safetensors") for s in ("pretrain", "sft"))
    assert any(not torch.equal(start[k], end[k]) for k in start if k.startswith("llm."))  # sft trained the LLM
    assert all(torch.equal(start[k], end[k]) for k in start if k.startswith("vision."))  # and not the tower


@pytest.mark.slow
def test_fsdp2_bf16_lora_fit_exports_merged_float32_weights(data_dir, tmp_path):
    # the config's bf16 compute, with LoRA adapters on the sharded LLM
    # and a timm tower (its blocks are FSDP units too) with the resampler
    run = fit_two_processes(data_dir, tmp_path, "fsdp", "run_stages=[pretrain]", "vision=tiny_timm_vit",
                            "connector=resampler", "recipe.stages.pretrain.tune.llm={mode:lora,r:4}")
    assert run.parent.name == "tiny_timm_vit__resampler__tiny_llama__seed0"
    weights = load_file(run / "pretrain/checkpoint/model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}  # sharded master weights stay fp32
    assert not any("lora_" in k or "base_layer" in k for k in weights)  # gathered, then merged on rank 0
    assert lmm.load(run / "pretrain/checkpoint").llm.model.config.model_type == "llama"
    header = (run / "pretrain/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/loss" in header


@pytest.mark.slow
def test_local_multirun_of_two_process_cells(data_dir, tmp_path):
    """Each cell of a local sweep starts (and ends) its own ranks: the ranks run that cell alone."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMM_DATA_DIR": str(data_dir), "LMM_RUNS_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "lmm.train", "-m", "llm=tiny_llama,tiny_qwen2", "strategy=ddp", "trainer.devices=2",
           "threads=1", "recipe=base", "recipe.stages.pretrain.global_batch_size=8", "recipe.stages.sft.global_batch_size=8",
           "data.loader.micro_batch_size=4", "+trainer.limit_train_batches=2", "evaluation.limit=3",
           "evaluation.progress=false", "+trainer.enable_progress_bar=false", "callbacks.samples.num_samples=1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    cells = sorted(p.parents[2].name for p in tmp_path.glob("easyvqa/*/base/sft/checkpoint"))
    assert cells == ["tiny_siglip__pixel_shuffle_mlp__tiny_llama__seed0", "tiny_siglip__pixel_shuffle_mlp__tiny_qwen2__seed0"]
    # rank 1 of each cell logged under its own name, once per cell: no rank re-ran the sweep
    assert len(list(tmp_path.glob("easyvqa/*/base/train_ddp_process_1.log"))) == 2
    assert len(list(tmp_path.glob("easyvqa/*/base/run.json"))) == 2
    # each cell's two ranks shared its evaluation: every question answered once, one table per cell
    for results in tmp_path.glob("easyvqa/*/base/eval/results.json"):
        assert json.loads(results.read_text())["benchmarks"]["easyvqa_vqa"]["n"] == 3
        assert len((results.parent / "easyvqa_vqa/answers.jsonl").read_text().splitlines()) == 3
    assert len(list(tmp_path.glob("easyvqa/*/base/eval/results.json"))) == 2
    assert done.stdout.count("| easyvqa_vqa") == 2


@pytest.mark.slow
def test_ddp_ranks_split_the_data_and_sum_their_skip_counts(tokenizer_dir, tmp_path):
    """Two real DDP processes: each record is trained on by exactly one rank, text-only batches
    included, and the image problems each rank found are summed in the logged counts."""
    import json

    from tests.llava_fixture import bad_records, good_records, write_dataset

    records = good_records(30)
    bad = bad_records()
    records[3:3] = [bad["image_missing"], bad["image_corrupt"], bad["turn_order"]]
    ann = write_dataset(tmp_path / "data", records, "sft.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMM_RUNS_DIR": str(tmp_path / "runs"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # through Lightning's launcher (rank 1 a new interpreter running the command again), the way GPU
    # jobs start; the other two-process tests fork their rank 1 (lmm.train.launch)
    cmd = [sys.executable, "-m", "lmm.train", "strategy=ddp", "trainer.devices=2", "threads=1", "recipe=base",
           "fork_ranks=false", f"paths.data_dir={tmp_path / 'data'}", f"data.tokenizer={tokenizer_dir}", "run_stages=[sft]",
           "recipe.stages.sft.init=null", f"data.sft.annotations=[{ann}]", f"data.sft.image_root={tmp_path / 'data'}",
           "data.prepare=null", "data.loader.micro_batch_size=2", "data.loader.num_workers=1",
           # text-only records batched apart (every 5th record has no image), the connector trained:
           # a rank with a text-only batch must still give the connector a gradient, or DDP stops
           "data.loader.batching=length_grouped",
           "data.loader.max_length=1024", "recipe.stages.sft.global_batch_size=4", "evaluate=false",
           "callbacks.skip_monitor.max_fraction=0.5", "callbacks.samples.num_samples=0",
           "+callbacks.ids._target_=tests.llava_fixture.IdsRecorder", f"+callbacks.ids.path={tmp_path / 'ids'}",
           "+trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    seen = [json.loads((tmp_path / f"ids.rank{r}.json").read_text()) for r in (0, 1)]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"r{i}" for i in range(30))
    (metrics,) = (tmp_path / "runs").glob("easyvqa/*/base/sft/version_0/metrics.csv")
    import csv

    (row,) = [r for r in csv.DictReader(metrics.open()) if r.get("data/skipped")]
    assert float(row["data/skipped/image_missing"]) == 1 and float(row["data/skipped/image_corrupt"]) == 1
    assert float(row["data/skipped/turn_order"]) == 1 and float(row["data/skipped"]) == 3


# A two-process FSDP2 run killed mid-epoch and resumed (each rank trains on exactly the records it had
# not reached) is tests/test_kill_drill.py's fsdp drill, whose record ledger counts every record.
