"""Bad input end to end, as a user meets it (the README's "Bad input" table; the rows not here are
checked where the feature lives: tests/test_bad_records.py, test_checkpoint_manifest.py,
test_eval_yesno.py, test_eval_vqa.py)."""
import os
import subprocess
import sys

import pytest

from lmm.train.run import train
from tests.test_train import compose_train


def cli(*args, tmp_path):
    env = {**os.environ, "LMM_RUNS_DIR": str(tmp_path / "runs"), "LMM_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run([sys.executable, "-m", "lmm.train", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_a_config_typo_names_the_key_without_a_traceback(tmp_path):
    done = cli("trainer.max_epocs=1", tmp_path=tmp_path)
    assert done.returncode == 1 and "Could not override 'trainer.max_epocs'" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "runs").exists()


def test_an_unknown_choice_lists_the_valid_ones(tmp_path):
    done = cli("vision=clip_big", tmp_path=tmp_path)
    assert done.returncode == 1 and "Could not find 'vision/clip_big'" in done.stderr
    assert "tiny_siglip" in done.stderr.split("Available options in 'vision'")[1]


def test_a_missing_annotation_file_is_named(data_dir, tmp_path):
    cfg = compose_train(data_dir, tmp_path, "recipe=base", "run_stages=[sft]", "recipe.stages.sft.init=null",
                        f"data.sft.annotations=[{tmp_path / 'nope' / 'sft.json'}]", "evaluate=false")
    with pytest.raises(FileNotFoundError, match=f"annotation file not found: {tmp_path / 'nope' / 'sft.json'}$"):
        train(cfg)


def test_a_stage_whose_init_checkpoint_has_another_tokenizer_is_refused(data_dir, tmp_path, tokenizer_dir):
    common = ["recipe=base", "evaluate=false", "callbacks.samples.num_samples=0"]
    train(compose_train(data_dir, tmp_path, *common, "run_stages=[pretrain]"))
    cfg = compose_train(data_dir, tmp_path, *common, "run_stages=[sft]", f"data.tokenizer={tokenizer_dir}",
                        "run.overwrite=true")
    with pytest.raises(ValueError, match=r"stage 'sft': the tokenizer of .*/pretrain/checkpoint does not match this "
                                         r"run's \(\d+ vs \d+ tokens, \d+ with another id\)") as err:
        train(cfg)
    assert "\n" not in str(err.value)
