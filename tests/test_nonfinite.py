"""The non-finite guard (lmm/train/nonfinite.py): a NaN loss or an Inf gradient skips the optimizer
step with the weights and AdamW's state untouched, is counted, and too many stop the run naming the
records; under two processes the skip is collective."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lmm.data.datamodule import LlavaDataModule
from lmm.train.module import LMMTrainModule
from lmm.train.nonfinite import NonFiniteGuard, NonFiniteStepsError
from tests.llava_fixture import good_records, write_dataset


class PoisonRecord(L.Callback):
    """The poisoned sample: the batch holding `record` gets NaN visual features (the images are
    uint8 until the tower normalises them, so the NaN enters at the connector's output); `rank`:
    only on that rank (the others train normally)."""

    def __init__(self, record: str, rank: int | None = None):
        self.record, self.rank, self.active = record, rank, False

    def on_fit_start(self, trainer, pl_module):
        def poison(module, args, output):
            return output.masked_fill(torch.ones_like(output, dtype=torch.bool), float("nan")) if self.active else output
        pl_module.model.connector.register_forward_hook(poison)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        mine = self.rank is None or trainer.global_rank == self.rank
        self.active = mine and self.record in batch.get("ids", [])


class InfGradient(L.Callback):
    """An Inf in one weight's gradient at the given optimizer steps (a backward hook)."""

    def __init__(self, steps):
        self.steps = set(steps)

    def on_fit_start(self, trainer, pl_module):
        weight = next(p for p in pl_module.parameters() if p.requires_grad)
        weight.register_hook(lambda g: g * float("inf") if trainer.global_step in self.steps else g)


class Snapshots(L.Callback):
    """Weights and optimizer state after every optimizer step, by step."""

    def __init__(self):
        self.weights, self.states = {}, {}

    def on_train_start(self, trainer, pl_module):
        self.weights[0] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self.states[0] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        self.weights[step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        opt = trainer.optimizers[0]
        self.states[step] = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                             for i, s in enumerate(opt.state.values())}


@pytest.fixture
def data(tmp_path):
    return write_dataset(tmp_path / "data", good_records(16), "train.json"), tmp_path / "data"


def fit(tiny_specs, data, tmp_path, callbacks, guard=None):
    torch.manual_seed(0)
    module = LMMTrainModule(tiny_specs, {"vision": "full", "connector": "full", "llm": "full"}, {"lr": 1e-3})
    ann, root = data
    dm = LlavaDataModule([str(ann)], str(root), micro_batch_size=2, num_workers=0, max_length=256, seed=3,
                         batching="random").attach(module.model, module.model.template)
    guard = guard or NonFiniteGuard()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, log_every_n_steps=1,
                        logger=L.pytorch.loggers.CSVLogger(tmp_path / "logs", name="run"),
                        callbacks=[*callbacks, guard])
    trainer.fit(module, datamodule=dm)
    return trainer, guard


def batch_of(record, tiny_specs, data, tmp_path):
    """The optimizer step (1-based) whose batch holds `record`, in the data order of `fit`."""
    seen = {}

    class Where(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            for i in batch["ids"]:
                seen[i] = batch_idx + 1

    fit(tiny_specs, data, tmp_path / "probe", [Where()])
    return seen[record]


def logged(tmp_path, key):
    (metrics,) = (tmp_path / "logs").rglob("metrics.csv")
    return [float(r[key]) for r in csv.DictReader(metrics.open()) if r.get(key)]


def test_nan_sample_skips_its_step_and_leaves_weights_and_adamw_state_untouched(tiny_specs, data, tmp_path):
    step = batch_of("r6", tiny_specs, data, tmp_path)  # r6 has an image
    snaps = Snapshots()
    trainer, guard = fit(tiny_specs, data, tmp_path, [PoisonRecord("r6"), snaps])
    assert guard.skipped == 1 and trainer.global_step == 8  # the epoch went on
    before, after = step - 1, step
    for key, value in snaps.weights[before].items():
        assert torch.equal(value, snaps.weights[after][key]), key
    assert snaps.states[before] or before == 0
    for i, state in snaps.states[before].items():
        for k, v in state.items():
            assert torch.equal(v, snaps.states[after][i][k]), (i, k)  # moments and step count unchanged
    assert all(torch.isfinite(v).all() for v in snaps.weights[8].values())
    assert any(not torch.equal(v, snaps.weights[after + 1][k]) for k, v in snaps.weights[after].items())  # next step trains
    assert logged(tmp_path, "train/skipped_steps")[-1] == 1


def test_inf_gradient_skips_the_step(tiny_specs, data, tmp_path):
    snaps = Snapshots()
    _, guard = fit(tiny_specs, data, tmp_path, [InfGradient({2}), snaps])
    assert guard.skipped == 1
    assert all(torch.equal(v, snaps.weights[3][k]) for k, v in snaps.weights[2].items())
    assert not all(torch.equal(v, snaps.weights[2][k]) for k, v in snaps.weights[1].items())


def test_more_than_max_consecutive_skips_stop_the_run_naming_the_records(tiny_specs, data, tmp_path):
    with pytest.raises(NonFiniteStepsError, match=r"4 steps in a row \(max_consecutive=3\).*records of the last") as err:
        fit(tiny_specs, data, tmp_path, [InfGradient(range(1, 100))], NonFiniteGuard(max_fraction=1.0))
    assert len([r for r in str(err.value).split("steps: ")[1].split(" (raise")[0].split(", ")]) == 8  # 4 steps x 2


def test_more_than_max_fraction_of_steps_stops_the_run(tiny_specs, data, tmp_path):
    with pytest.raises(NonFiniteStepsError, match=r"2 of the run's 8 steps \(max_fraction=0.2\)"):
        fit(tiny_specs, data, tmp_path, [InfGradient({1, 4})], NonFiniteGuard(max_fraction=0.2))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_skip_is_collective(tokenizer_dir, tmp_path, strategy):
    """Only rank 1 sees the NaN sample; both ranks skip that step (rank 0 logs it), and the run ends."""
    ann = write_dataset(tmp_path / "data", good_records(16), "sft.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMM_RUNS_DIR": str(tmp_path / "runs"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    extra = ["strategy.model.param_dtype=null"] if strategy == "fsdp" else []
    cmd = [sys.executable, "-m", "lmm.train", f"strategy={strategy}", *extra, "trainer.devices=2", "threads=1",
           "recipe=base", f"paths.data_dir={tmp_path / 'data'}", f"data.tokenizer={tokenizer_dir}", "run_stages=[sft]",
           "recipe.stages.sft.init=null", f"data.sft.annotations=[{ann}]", f"data.sft.image_root={tmp_path / 'data'}",
           "data.prepare=null", "data.loader.micro_batch_size=2", "data.loader.num_workers=0",
           "data.loader.batching=random",  # the layout that puts record r6 on rank 1
           "data.loader.max_length=1024", "recipe.stages.sft.global_batch_size=4", "evaluate=false",
           "callbacks.samples.num_samples=0", "callbacks.nonfinite.max_fraction=0.5", "trainer.log_every_n_steps=1",
           "+callbacks.poison._target_=tests.test_nonfinite.PoisonRecord", "+callbacks.poison.record=r6",
           "+callbacks.poison.rank=1", "+trainer.enable_progress_bar=false"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert out.count("skipped: non-finite loss or gradient") == 1  # logged once, by rank 0, for rank 1's record
    assert "r6" in out.split("skipped: non-finite loss or gradient")[1].splitlines()[0]
    (metrics,) = (tmp_path / "runs").rglob("sft/version_0/metrics.csv")
    assert max(float(r["train/skipped_steps"]) for r in csv.DictReader(metrics.open()) if r.get("train/skipped_steps")) == 1
