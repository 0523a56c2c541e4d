"""python -m lmm.evaluate checkpoint=PATH [benchmark=[vqav2,gqa,...]] [devices=N]: score a checkpoint.

With no benchmark chosen it runs the easy-vqa test set in three forms (short answer, yes/no,
multiple choice). With devices > 1 every process answers its share of each benchmark and rank zero
scores the gathered answers; the table is printed once.
"""
import sys

import hydra
from omegaconf import DictConfig

from lmm.eval.benchmark_args import check_benchmark_choices
from lmm.secrets import check_overrides


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import torch

    from lmm.eval.cli import run  # the model stack loads once the arguments and the config are known good
    from lmm.train.launch import ranks_to_fork, run_on_local_ranks

    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    run_on_local_ranks(lambda: run(cfg), ranks_to_fork(cfg.devices, accelerator, enabled=cfg.get("fork_ranks", True)))


if __name__ == "__main__":
    check_overrides(sys.argv[1:])  # before Hydra saves the command line in the output folder
    check_benchmark_choices(sys.argv[1:])
    main()
