"""experiments/easyvqa_demo/seed_table.py: the seed table from run folders laid out as lmm.train
writes them (run.json, eval/results.json, __main__.log)."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "easyvqa_demo" / "seed_table.py"


def load():
    spec = importlib.util.spec_from_file_location("seed_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(root: Path, seed: int, vqa: float, pope: float, mc: float, group="easyvqa_seeds", evaluated=True):
    run = root / "easyvqa" / f"tiny__seed{seed}" / "demo"
    (run / "eval").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"name": f"tiny__seed{seed}/demo", "group": group, "seed": seed}))
    (run / "__main__.log").write_text("[2026-12-05 10:00:00,000][x][INFO] - start\nno stamp\n"
                                      "[2026-12-05 10:07:30,500][x][INFO] - end\n")
    if evaluated:
        kinds = {k: {"accuracy": vqa, "n": 1} for k in ("color", "shape", "yes/no")}
        (run / "eval" / "results.json").write_text(json.dumps({"benchmarks": {
            "easyvqa_vqa": {"accuracy": vqa, "per_answer_type": kinds}, "easyvqa_pope": {"f1": pope},
            "easyvqa_mc": {"accuracy": mc, "category": {"shape": {"accuracy": 1.0}, "color": {"accuracy": mc}}}}}))


def test_rows_ranges_and_targets(tmp_path, capsys):
    fake_run(tmp_path, 0, 0.98, 0.975, 0.95)
    fake_run(tmp_path, 1, 0.96, 0.90, 0.91)
    fake_run(tmp_path, 2, 0.99, 0.99, 0.99, group="other")
    fake_run(tmp_path, 3, 0.99, 0.99, 0.99, evaluated=False)  # unfinished: left out
    rows = load().main([str(tmp_path), "--group", "easyvqa_seeds"])
    assert [r["seed"] for r in rows] == [0, 1]
    assert rows[0]["seconds"] == pytest.approx(450.5) and rows[0]["mc_kinds"] == "1.000/0.950"
    out = capsys.readouterr().out
    assert "| tiny__seed1/demo | 1 | 0.9600 | 0.960/0.960/0.960 | 0.900 | 0.910 | 1.000/0.910 | 450 s |" in out
    assert "VQA acc: 0.9600 - 0.9800 over 2 runs; 1 at or above the target 0.97" in out
    assert "POPE F1: 0.9000 - 0.9750 over 2 runs; 1 at or above the target 0.97" in out
    assert "MC circular: 0.9100 - 0.9500 over 2 runs; 2 at or above the target 0.9" in out
    with pytest.raises(SystemExit, match="no finished easy-vqa run"):
        load().main([str(tmp_path), "--group", "nothing"])
