"""The kill drills (experiments/reliability/kill_drill.py): SIGKILLed at random moments in every
phase and resumed each time, a run ends with the uninterrupted run's weights, answers and scores,
every record trained once per epoch. Under one process, and under two-process DDP and FSDP2."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("kill_drill", ROOT / "experiments/reliability/kill_drill.py")
kill_drill = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kill_drill)


def check(row, min_faults):
    assert row["tensors_equal"] == row["tensors"] > 0, row
    assert row["answers_equal"] == row["answers"] > 0 and row["scores_equal"], row
    assert row["records_twice"] == 0 and row["records_never"] == 0, row
    assert row["faults"] >= min_faults and row["runs"] == row["faults"] + 1, row


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_single_process_drill_with_faults_in_every_phase(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = ["train_step", "lightning_checkpoint", "export", "eval_batch", "timed"]  # the script's default has 8
    row = kill_drill.drill("auto", plan, 0, tmp_path, data_dir, [])
    check(row, 4)
    assert set(row["by_point"]) >= {"train_step", "lightning_checkpoint", "export", "eval_batch"}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("strategy, plan", [
    ("ddp", ["lightning_checkpoint", "export"]),  # DDP's checkpoint is one file from rank 0
    ("fsdp", ["train_step", "lightning_checkpoint", "eval_batch"]),  # FSDP2's is a folder of every rank's shards
])
def test_two_process_drill(data_dir, tmp_path, monkeypatch, strategy, plan):
    monkeypatch.chdir(ROOT)
    row = kill_drill.drill(strategy, plan, 0, tmp_path, data_dir, [], n_records=32)
    check(row, len(plan))
    assert set(row["by_point"]) == set(plan)


def test_the_table_reports_every_column():
    row = {"strategy": "auto", "faults": 2, "by_point": {"export": 2}, "runs": 3, "tensors": 4, "tensors_equal": 4,
           "answers": 5, "answers_equal": 4, "scores_equal": False, "records_twice": 1, "records_never": 0}
    text = kill_drill.table([row])
    assert "| auto     | 2            | export:2 | 3              | 4/4           | 4/5           | NO" in text
    assert not kill_drill.passed(row)
