"""The W&B logger, with the real wandb library offline: what a stage's run records."""
import json
import struct
from pathlib import Path

import pytest

from lmm.train.run import train
from tests.test_grid import tiny_run


def wandb_records(path: Path):
    """Records of an offline run file (`run-<id>.wandb`): wandb's log format is a header, then
    32 KiB blocks of chunks (crc u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length == 0 and kind == 0):
            pos += left  # block trailer / padding
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def summarise(path: Path) -> dict:
    out = {"history": set(), "config": set(), "run": None}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            out["history"] |= {i.key or "/".join(i.nested_key) for i in r.history.item}
        elif kind == "config":
            out["config"] |= {i.key for i in r.config.update}
        elif kind == "run":
            out["run"] = r.run
    return out


def test_offline_wandb_runs_record_names_groups_tags_metrics_and_samples(data_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("LMM_WANDB_OFFLINE", "true")
    cfg = tiny_run(data_dir, tmp_path, "recipe=base", "logger=wandb", "run.group=tiny_sweep", "evaluate=true",
                   "evaluation.limit=4", "trainer.log_every_n_steps=1", "run.tags=[smoke]")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    runs = {s["run"].display_name.rsplit("/", 1)[-1]: s for s in map(summarise, files)}
    assert set(runs) == {"pretrain", "sft"}  # one W&B run per stage
    for stage, s in runs.items():
        run = s["run"]
        assert run.display_name == f"tiny_clip__pixel_shuffle_mlp__tiny_llama__seed0/base/{stage}"
        assert run.run_group == "tiny_sweep"
        assert {"vision=tiny_clip", "connector=pixel_shuffle_mlp", "llm=tiny_llama", "recipe=base", "data=easyvqa",
                "smoke"} <= set(run.tags)
        assert {"run", "recipe", "vision", "llm", "tune", "optim", "model"} <= s["config"]  # hyper-parameters
        assert {"train/loss", "train/lr", "train/tokens_per_s", "train/samples_per_s", "train/token_efficiency",
                "data/skipped", "data/skipped_fraction", "data/truncated"} <= s["history"]
        assert any(k.startswith("samples/predictions") for k in s["history"])  # the sample-prediction table
    assert "eval/easyvqa_vqa/accuracy" in runs["sft"]["history"] and "eval/easyvqa_vqa/accuracy" not in runs["pretrain"]["history"]
    tables = list(run_dir.glob("wandb/offline-run-*/files/media/table/samples/predictions_*.table.json"))
    assert len(tables) == 2
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["image", "prompt", "reference", "prediction"] and len(table["data"]) == 1
    # the images travel in the table's artifact, next to its rows
    for stage_file in files:
        entries = [e.path for r in wandb_records(stage_file) if r.WhichOneof("record_type") == "artifact"
                   for e in r.artifact.manifest.contents]
        assert any(p.startswith("media/images/") and p.endswith(".png") for p in entries), entries
