"""Smoke run of experiments/side_by_side/bench.py at tiny shapes: it runs, the two models agree."""
import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "side_by_side" / "bench.py"


@pytest.mark.slow
def test_side_by_side_bench_tiny(capsys):
    spec = importlib.util.spec_from_file_location("side_by_side_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    status = bench.main(["--tiny", "--steps", "1", "--warmup", "1", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "identical: yes" in out
    for shape in ("small", "phi2"):
        assert re.search(rf"\| {shape} \| generated ids identical \|\s*\|\s*\| yes \|", out), out
        assert re.search(rf"\| {shape} \| train step s", out) and re.search(rf"\| {shape} \| [0-9.]+ \| [0-9.]+ \|", out)
