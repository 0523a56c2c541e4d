"""Sharding over ranks x workers, and resuming mid-epoch from a Lightning checkpoint: the samples
seen before the kill and after the resume together are exactly one epoch, with no repeats."""
import lightning as L
import pytest
import torch

from lmm.data.datamodule import LlavaDataModule
from lmm.train.module import LMMTrainModule
from tests.llava_fixture import bad_records, good_records, write_dataset

N_GOOD = 36


@pytest.fixture
def dataset(tmp_path):
    bad = bad_records()
    records = good_records(N_GOOD)
    for k, key in enumerate(["image_missing", "turn_order", "image_corrupt"]):
        records.insert(5 + 9 * k, bad[key])
    return write_dataset(tmp_path / "data", records, "train.json"), tmp_path / "data"


def datamodule(dataset, tiny, **kw):
    ann, root = dataset
    options = {"micro_batch_size": 2, "num_workers": 2, "max_length": 256, "seed": 5, **kw}
    return LlavaDataModule([str(ann)], str(root), **options).attach(tiny.model, tiny.model.template)


class Recorder(L.Callback):
    def __init__(self):
        self.batches = {}  # (epoch, batch_idx) -> ids

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches[(trainer.current_epoch, batch_idx)] = list(batch.get("ids", [])) + [
            f"skip:{r}" for r, _ in batch["skipped"]]


class Killed(RuntimeError):
    pass


class KillAt(L.Callback):
    def __init__(self, epoch, batch_idx):
        self.at = (epoch, batch_idx)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.at:
            raise Killed(f"killed before batch {batch_idx}")


def fit(module, dm, ckpt_dir, callbacks, epochs=1, accumulate=1, ckpt_path=None):
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accumulate_grad_batches=accumulate,
                        callbacks=[*callbacks, L.pytorch.callbacks.ModelCheckpoint(
                            dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_train_steps=1)])
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture
def module(tiny_specs):
    torch.manual_seed(0)
    return LMMTrainModule(tiny_specs, {"vision": "full", "connector": "full", "llm": "full"}, {"lr": 1e-3})


def epoch_ids(batches, epoch):
    return [i for (e, _), ids in sorted(batches.items()) if e == epoch for i in ids]


@pytest.mark.parametrize("kill_epoch, kill_batch, accumulate, workers_after", [
    (0, 7, 1, 2),   # mid-epoch, same worker count
    (1, 5, 1, 0),   # second epoch, resumed with no workers: the position does not depend on them
    (0, 7, 2, 2),   # killed mid-accumulation: the unapplied micro-batch is seen again after the resume
])
def test_resume_mid_epoch_sees_exactly_the_rest_of_the_epoch(dataset, module, tmp_path, tiny_specs,
                                                             kill_epoch, kill_batch, accumulate, workers_after):
    ckpt_dir = tmp_path / "ckpt"
    before = Recorder()
    with pytest.raises(Killed):
        fit(module, datamodule(dataset, module), ckpt_dir, [before, KillAt(kill_epoch, kill_batch)], epochs=2,
            accumulate=accumulate)
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["LlavaDataModule"]
    assert state["epoch"] == kill_epoch
    # what the checkpoint holds: every micro-batch up to the last optimizer step
    done = state["done"]
    assert done == kill_batch // accumulate * accumulate
    kept = {k: v for k, v in before.batches.items() if k[0] < kill_epoch or k[1] < done}

    torch.manual_seed(0)
    resumed = LMMTrainModule(tiny_specs, {"vision": "full", "connector": "full", "llm": "full"}, {"lr": 1e-3})
    after = Recorder()
    fit(resumed, datamodule(dataset, resumed, num_workers=workers_after), tmp_path / "ckpt2", [after], epochs=2,
        accumulate=accumulate, ckpt_path=str(ckpt_dir / "last.ckpt"))
    first = epoch_ids(kept, kill_epoch)
    rest = epoch_ids(after.batches, kill_epoch)
    assert len(first) == done * 2  # two records per micro-batch
    assert not set(first) & set(rest)  # no repeats
    everything = sorted(first + rest)
    assert len(everything) == len(set(everything))
    usable = {f"r{i}" for i in range(N_GOOD)}
    assert {i for i in everything if not i.startswith("skip:")} == usable  # no gaps
    assert sorted(i for i in everything if i.startswith("skip:")) == ["skip:image_corrupt", "skip:image_missing"]
    if kill_epoch == 0:  # the next epoch after a resume is a whole one again
        assert sorted(i for i in epoch_ids(after.batches, 1) if not i.startswith("skip:")) == sorted(usable)


def test_an_uninterrupted_epoch_equals_the_resumed_one(dataset, module, tmp_path, tiny_specs):
    """Same seed: the order is the plan's, so a resumed run sees the same micro-batches in the same
    order as one that was never killed."""
    whole = Recorder()
    fit(module, datamodule(dataset, module), tmp_path / "a", [whole])
    before = Recorder()
    torch.manual_seed(0)
    again = LMMTrainModule(tiny_specs, {"vision": "full", "connector": "full", "llm": "full"}, {"lr": 1e-3})
    with pytest.raises(Killed):
        fit(again, datamodule(dataset, again), tmp_path / "b", [before, KillAt(0, 4)])
    after = Recorder()
    fit(again, datamodule(dataset, again), tmp_path / "c", [after], ckpt_path=str(tmp_path / "b/last.ckpt"))
    assert epoch_ids(before.batches, 0) + epoch_ids(after.batches, 0) == epoch_ids(whole.batches, 0)


def test_a_changed_world_size_refuses_to_resume(dataset, module):
    dm = datamodule(dataset, module)
    dm.setup("fit", rank=0, world=2)
    with pytest.raises(ValueError, match=r"'world': '1 -> 2'"):
        dm.load_state_dict({"epoch": 0, "done": 3, "micro_batches": 19, "world": 1, "samples": 36,
                            "batching": "random", "seed": 5})


@pytest.mark.parametrize("batching", ["random", "length_grouped", "token_budget", "packed"])
def test_two_ranks_with_two_workers_each_cover_the_data_once(dataset, module, batching):
    seen, steps = [], []
    for rank in (0, 1):
        dm = datamodule(dataset, module, batching=batching, max_tokens=512)
        dm.setup("fit", rank=rank, world=2)
        batches = list(dm.train_dataloader())
        steps.append(len(batches))
        seen += [i for b in batches for i in b.get("ids", [])]
        seen += [f"skip:{r}" for b in batches for r, _ in b["skipped"]]
    assert steps[0] == steps[1]
    assert len(seen) == len(set(seen))
    assert {i for i in seen if not i.startswith("skip:")} == {f"r{i}" for i in range(N_GOOD)}
    assert dm.skip_counts == {"turn_order": 1}  # found by the length pass, never loaded
