"""python -m lmm.train [overrides]: train the recipe's stages (default: the easy-vqa CPU demo)."""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lmm.eval.benchmark_args import check_benchmark_choices
from lmm.secrets import check_overrides
from lmm.train.launch import LAUNCH_ENV, run_job  # standard library only: no heavy import

# torch, Lightning and lmm.train.run load inside the functions below (about 10 s on 2 cores): a refused
# argument, a config typo or an unknown choice is reported before that, in about a second.



def _run_multirun_job(cfg: DictConfig, train) -> dict:
    """One cell of a local multirun, left so that the next cell can start its own processes."""
    import torch

    # Lightning starts the other ranks of a multi-device job by re-running this command line, which
    # here would be the whole sweep: their command is this cell alone.
    sys.argv = [sys.argv[0], *HydraConfig.get().overrides.task]
    saved = {k: os.environ.get(k) for k in LAUNCH_ENV}
    try:
        return run_job(cfg, train)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():  # with LOCAL_RANK left set, the next cell would not launch ranks
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@hydra.main(config_path="../../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import torch

    from lmm.train.run import train

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = _run_multirun_job(cfg, train) if HydraConfig.get().mode == RunMode.MULTIRUN else run_job(cfg, train)
    if out["results"]:
        print(f"results: {Path(cfg.paths.output_dir) / 'eval' / 'results.json'}")
    print(f"checkpoint: {out['checkpoint']}")
    print(f"load it with: lmm.load({out['checkpoint']!r}).chat(image, question)")


if __name__ == "__main__":
    check_overrides(sys.argv[1:])  # before Hydra saves the command line in the run folder
    check_benchmark_choices(sys.argv[1:])
    main()
