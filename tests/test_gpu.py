"""On a CUDA device (skipped elsewhere): the FSDP2 path in bf16, as the GPU configs run it."""
import pytest
import torch

from lmm.train.run import train
from tests.test_grid import tiny_run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_fsdp2_bf16_fit_on_one_gpu(data_dir, tmp_path):
    cfg = tiny_run(data_dir, tmp_path, "trainer=gpu", "strategy=fsdp", "recipe=base", "evaluate=true",
                   "evaluation.limit=8")
    out = train(cfg)
    assert out["results"]["benchmarks"]["easyvqa_vqa"]["n"] == 8
    assert torch.cuda.max_memory_allocated() > 0
