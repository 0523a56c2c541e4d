"""The configured Lightning logger (conf/logger/), built the same way by training and evaluation, and
closed so that its W&B run is complete whatever process started the command."""
from __future__ import annotations

from hydra.utils import instantiate


def build_logger(logger_cfg, **kwargs):
    """`logger_cfg` instantiated with `kwargs`. A W&B logger with `offline: true` also passes
    mode="offline" to wandb.init: Lightning says offline only by setting WANDB_MODE in os.environ, which
    wandb reads once per process, so in a process that had used W&B before (a notebook, a test) an
    offline logger went online and asked for an API key."""
    if str(logger_cfg.get("_target_", "")).endswith("WandbLogger") and logger_cfg.get("offline"):
        kwargs.setdefault("mode", "offline")
    return instantiate(logger_cfg, **kwargs)


def finish(logger) -> None:
    """Close the W&B run. Lightning's WandbLogger leaves that to wandb's exit hook, which does not flush a
    run whose process inherited another's W&B service (WANDB_SERVICE: a notebook or script that used
    W&B, then started this command): its metrics never reached the run file. In-process, an open run
    would also absorb the caller's next one."""
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        logger.experiment.finish()
