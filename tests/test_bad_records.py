"""The bad-record policy on fixture files in the real formats: every kind is skipped with its
counted reason, counts are logged per epoch, a run stops past the limit, strict mode raises on the
first, and over-long samples are truncated without cutting into visual tokens (or dropped)."""
import json
from unittest.mock import MagicMock

import lightning as L
import pytest
import torch

from lmm.data.datamodule import LlavaDataModule
from lmm.data.dataset import SampleProcessor, truncate
from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID, SampleError
from lmm.train.callbacks import SkipMonitor
from lmm.train.module import LMMTrainModule
from tests.llava_fixture import bad_records, conv, good_records, write_dataset

REASON = {key: key.split("/")[0] for key in bad_records()}  # the skip reason each fixture must give


@pytest.fixture(params=["train.json", "train.jsonl"])
def mixed(request, tmp_path):
    records = good_records(40)
    for k, record in enumerate(bad_records().values()):
        records.insert(3 * k + 1, record)
    return write_dataset(tmp_path / "data", records, request.param), tmp_path / "data"


def make_dm(data, model, **kw):
    ann, root = data
    options = {"micro_batch_size": 4, "num_workers": 0, "max_length": 512, **kw}
    return LlavaDataModule([str(ann)], str(root), **options).attach(model, model.template)


def test_every_bad_kind_is_counted_under_its_reason(mixed, tiny_lmm):
    dm = make_dm(mixed, tiny_lmm)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    loaded = [r for b in batches for r, _ in b["skipped"]]
    counts = dm.skip_counts.copy()
    counts.update(loaded)
    expected = {}
    for reason in REASON.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(counts) == expected
    # text problems are found by the length pass (never loaded), image problems when loaded
    assert set(loaded) == {"image_missing", "image_corrupt", "image_truncated"}
    assert sum(b["num_samples"] for b in batches) == 40


def test_invalid_jsonl_line_is_a_counted_skip(tmp_path, tiny_lmm):
    path = write_dataset(tmp_path, good_records(6), "train.jsonl")
    path.write_text(path.read_text() + "{broken\n[1, 2]\n")
    dm = make_dm((path, tmp_path), tiny_lmm)
    dm.setup("fit")
    assert dm.skip_counts == {"invalid_json": 1, "not_a_record": 1}
    assert sum(b["num_samples"] for b in dm.train_dataloader()) == 6


def test_strict_mode_raises_on_the_first_bad_record(mixed, tiny_lmm, tmp_path):
    with pytest.raises(SampleError, match="strict is on"):
        make_dm(mixed, tiny_lmm, strict=True).setup("fit")  # a text problem: found by the length pass
    images_only = write_dataset(tmp_path / "img", good_records(5) + [bad_records()["image_corrupt"]], "a.json")
    dm = make_dm((images_only, tmp_path / "img"), tiny_lmm, strict=True, shuffle=False)
    dm.setup("fit")
    with pytest.raises(SampleError, match="image_corrupt.*strict is on"):
        list(dm.train_dataloader())


def test_truncation_never_cuts_through_visual_tokens():
    ids = torch.tensor([1, 2, IMAGE_TOKEN_ID, 3, 4, IMAGE_TOKEN_ID, 5, 6])
    labels = torch.tensor([-100, -100, -100, 3, 4, -100, 5, 6])
    # 16 visual tokens per image: expanded ends are 1, 2, 18, 19, 20, 36, 37, 38
    for limit, kept in [(38, 8), (37, 7), (35, 5), (20, 5), (19, 4), (17, 2), (2, 2), (1, 1)]:
        out_ids, out_labels = truncate(ids, labels, 16, limit)
        assert out_ids.tolist() == ids[:kept].tolist() and out_labels.tolist() == labels[:kept].tolist()


def test_over_long_samples_are_truncated_or_dropped(tmp_path, tiny_lmm):
    long = {"id": "long", "image": "coco/r0.png",
            "conversations": conv("<image>\nwhat is it?", "a blue circle " * 100, "and again?", "blue " * 100)}
    short = good_records(3)
    path = write_dataset(tmp_path, short + [long], "a.json")
    ask = {"micro_batch_size": 4, "max_length": 400, "shuffle": False}
    dropped = make_dm((path, tmp_path), tiny_lmm, over_length="drop", **ask)
    dropped.setup("fit")
    assert dropped.skip_counts == {"too_long": 1}
    truncated = make_dm((path, tmp_path), tiny_lmm, over_length="truncate", **ask)
    truncated.setup("fit")
    assert not truncated.skip_counts and truncated.truncated_planned == 1
    batch = next(iter(truncated.train_dataloader()))
    row = batch["ids"].index("long")
    n = int(batch["attention_mask"][row].sum())
    assert n + (tiny_lmm.num_visual_tokens - 1) == 400  # filled to the limit, the image kept whole
    assert batch["truncated"] == 1 and (batch["labels"][row, :n] != IGNORE_INDEX).any()
    out = tiny_lmm(batch["input_ids"], batch["pixel_values"], batch["attention_mask"], batch["labels"])
    assert out.attention_mask.shape[1] == 400 and torch.isfinite(out.loss)


def test_a_sample_whose_answer_lies_past_the_limit_is_dropped_even_when_truncating(tiny_lmm):
    processor = SampleProcessor(tiny_lmm.tokenizer, tiny_lmm.template, tiny_lmm.image_transform,
                                tiny_lmm.num_visual_tokens, max_length=40, over_length="truncate")
    record = {"id": "q", "conversations": conv("why " * 60, "because")}
    with pytest.raises(SampleError, match="no trained token is left"):
        processor.encode(record)
    with pytest.raises(ValueError, match=r"valid: \['drop', 'truncate'\]"):
        SampleProcessor(tiny_lmm.tokenizer, tiny_lmm.template, tiny_lmm.image_transform, 16, over_length="cut")


def fake_trainer(dm=None, world=1):
    trainer = MagicMock(world_size=world, datamodule=dm, current_epoch=0)
    trainer.strategy.root_device = torch.device("cpu")
    trainer.strategy.reduce = lambda t, reduce_op: t * world  # every rank counted the same
    return trainer


def test_skip_monitor_sums_ranks_adds_the_planned_skips_and_logs_per_reason(mixed, tiny_lmm):
    dm = make_dm(mixed, tiny_lmm)
    dm.setup("fit")
    monitor, module = SkipMonitor(max_fraction=0.5), MagicMock()
    trainer = fake_trainer(dm, world=2)
    monitor.on_train_epoch_start(trainer, module)
    for k, batch in enumerate(dm.train_dataloader()):
        monitor.on_train_batch_end(trainer, module, None, batch, k)
    monitor.on_train_epoch_end(trainer, module)
    logged = {c.args[0]: c.args[1] for c in module.log.call_args_list}
    assert logged["data/skipped/image_missing"] == 2  # one per rank, summed
    assert logged["data/skipped/turn_order"] == 1  # planned out once, not per rank
    assert logged["data/skipped"] == sum(dm.skip_counts.values()) + 2 * 3
    assert monitor.last["records"] == 2 * (40 + 3) + sum(dm.skip_counts.values())


def test_a_run_stops_past_the_skip_limit_with_a_clear_message(mixed, tiny_lmm):
    dm = make_dm(mixed, tiny_lmm)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=r"records were skipped, over the limit of 1\.0%.*max_fraction"):
        SkipMonitor(max_fraction=0.01).on_fit_start(fake_trainer(dm), MagicMock())  # before the first step
    monitor = SkipMonitor(max_fraction=0.2, min_records=8, check_every=1)
    bad = {"num_samples": 1, "skipped": [("image_corrupt", "x")] * 3}
    with pytest.raises(RuntimeError, match=r"75\.0% of 8 records.*image_corrupt"):
        for k in range(2):
            monitor.on_train_batch_end(fake_trainer(), MagicMock(), None, bad, k)


def test_skip_counts_reach_the_logger_each_epoch(mixed, tiny_specs, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    module = LMMTrainModule(tiny_specs, {"vision": "frozen", "connector": "full", "llm": "frozen"}, {"lr": 1e-3})
    dm = make_dm(mixed, module.model)
    logger = CSVLogger(tmp_path, name="run")
    L.Trainer(max_epochs=2, accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[SkipMonitor(max_fraction=0.5)], log_every_n_steps=1,
              ).fit(module, datamodule=dm)
    import csv

    with open(logger.log_dir + "/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("data/skipped")]
    assert len(rows) == 2  # one per epoch
    assert all(float(r["data/skipped/image_truncated"]) == 1 and float(r["data/skipped/too_long"]) == 1 for r in rows)
    assert all(float(r["data/skipped"]) == len(REASON) for r in rows)


def test_lengths_are_cached_and_reused(tmp_path, tiny_lmm):
    path = write_dataset(tmp_path, good_records(8), "a.json")
    index = tmp_path / "index"
    first = make_dm((path, tmp_path), tiny_lmm, index_dir=str(index))
    first.setup("fit")
    assert len(list(index.glob("lengths-*.npz"))) == 1
    second = make_dm((path, tmp_path), tiny_lmm, index_dir=str(index))
    from lmm.data import lengths

    calls = []
    original = lengths.measure
    lengths.measure = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        second.setup("fit")
    finally:
        lengths.measure = original
    assert calls == [] and (second.table.text == first.table.text).all()
    records = json.loads(path.read_text())
    records[0]["conversations"][1]["value"] += " and more words"  # the file changed: measured again
    path.write_text(json.dumps(records))
    third = make_dm((path, tmp_path), tiny_lmm, index_dir=str(index))
    third.setup("fit")
    assert third.table.text[0] > first.table.text[0]
