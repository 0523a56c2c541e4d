"""python -m lmm.train [overrides]: train the recipe's stages (default: the easy-vqa CPU demo)."""
import hydra
import torch
from omegaconf import DictConfig

from lmm.train.run import train


@hydra.main(config_path="../../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = train(cfg)
    if out["results"]:
        print(f"{out['results']['benchmark']} accuracy: {out['results']['accuracy']:.4f}")
    print(f"checkpoint: {out['checkpoint']}")
    print(f"load it with: lmm.load({out['checkpoint']!r}).chat(image, question)")


if __name__ == "__main__":
    main()
