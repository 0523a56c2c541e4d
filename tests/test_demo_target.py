"""The README's main job, unchanged: the default config must reach the easy-vqa target.

Slow (about 8 minutes on 2 cores): it trains both stages of the demo in full and scores all
9,673 test questions. It guards the headline number against regressions anywhere in the stack.
"""
import pytest
from hydra import compose, initialize_config_dir

from lmm.train.run import train
from tests.conftest import CONF


@pytest.mark.slow
def test_default_demo_reaches_095_on_easyvqa(data_dir, tmp_path):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}",
                                          "+trainer.enable_progress_bar=false"])
    results = train(cfg)["results"]
    assert results["n"] == 9673
    assert results["accuracy"] >= 0.95, results
