"""The README's main job, unchanged: the default config must reach the easy-vqa target.

Slow (about 8 minutes on 2 cores): it trains both stages of the demo in full and scores all
9,673 test questions. It guards the headline number against regressions anywhere in the stack.
"""
import pytest

from lmm.train.run import train
from tests.conftest import compose_config


@pytest.mark.slow
def test_default_demo_reaches_095_on_easyvqa(data_dir, tmp_path):
    cfg = compose_config("train", runs_dir=tmp_path, overrides=[f"paths.data_dir={data_dir}",
                                                                "+trainer.enable_progress_bar=false"])
    results = train(cfg)["results"]["benchmarks"]
    vqa = results["easyvqa_vqa"]
    assert vqa["n"] == 9673
    assert vqa["accuracy"] >= 0.95, vqa
