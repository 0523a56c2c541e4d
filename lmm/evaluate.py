"""python -m lmm.evaluate checkpoint=PATH [data=...]: score a checkpoint, print the table."""
import hydra
from omegaconf import DictConfig

from lmm.eval.run import evaluate_checkpoint
from lmm.model.spec import build


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.data.get("prepare"):
        build(cfg.data.prepare)
    if not cfg.data.get("eval"):
        raise ValueError(f"data config {cfg.data.name!r} defines no eval set")
    evaluate_checkpoint(cfg.checkpoint, cfg.data.eval, cfg.paths.output_dir, device=cfg.device, **cfg.generation)


if __name__ == "__main__":
    main()
