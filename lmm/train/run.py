"""Run the recipe's stages in order (pretrain -> sft), each from the previous stage's checkpoint,
then evaluate the final checkpoint on the data config's eval set."""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig

from lmm.data.datamodule import LlavaDataModule
from lmm.data.templates import PlainTemplate
from lmm.model.checkpoint import load_weights
from lmm.model.spec import build, to_plain
from lmm.train.module import LMMTrainModule

log = logging.getLogger(__name__)
PROMPTS = ("plain", "chat")


def model_spec(cfg: DictConfig) -> dict:
    return {"vision": to_plain(cfg.vision), "connector": to_plain(cfg.connector), "llm": to_plain(cfg.llm)}


def stage_template(prompt: str, model):
    """Pretrain uses LLaVA's plain format for every LLM; SFT uses the LLM's own chat template."""
    if prompt not in PROMPTS:
        raise ValueError(f"unknown stage prompt {prompt!r}; valid: {list(PROMPTS)}")
    return PlainTemplate() if prompt == "plain" else model.template


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient accumulation that keeps the recipe's global batch for any micro batch x world size."""
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ValueError(f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x "
                         f"{world_size} device(s); change data.loader.micro_batch_size or the device count")
    return global_batch // per_step


def fit_stage(cfg: DictConfig, name: str, run_dir: Path, init_from: str | None) -> Path:
    if name not in cfg.recipe.stages:
        raise ValueError(f"recipe {cfg.recipe.name!r} has no stage {name!r}; valid: {list(cfg.recipe.stages)}")
    stage = cfg.recipe.stages[name]
    module = LMMTrainModule(model_spec(cfg), stage.tune, stage.optim)
    if init_from:
        load_weights(module.model, init_from)
    log.info("stage %s: trainable parameters %s, init from %s", name, module.trainable, init_from or "scratch")
    if stage.data not in cfg.data:
        raise ValueError(f"data config {cfg.data.name!r} has no {stage.data!r} part for stage {name!r}")
    loader = to_plain(cfg.data.loader)
    if stage.get("micro_batch_size"):  # a stage may batch differently (short caption samples fit more)
        loader["micro_batch_size"] = stage.micro_batch_size
    datamodule = LlavaDataModule(**cfg.data[stage.data], **loader, seed=cfg.seed)  # data built once, in train()
    datamodule.attach(module.model, stage_template(stage.prompt, module.model))
    world_size = cfg.trainer.devices * cfg.trainer.num_nodes
    stage_dir = run_dir / name
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    if cfg.trainer.get("enable_checkpointing", True):  # Lightning checkpoints (for resuming) in the stage folder
        callbacks.append(ModelCheckpoint(dirpath=stage_dir / "lightning", save_top_k=0, save_last=True))
    logger = instantiate(cfg.logger, save_dir=str(run_dir), name=name)
    trainer = instantiate(
        cfg.trainer,
        max_epochs=stage.epochs,
        accumulate_grad_batches=accumulation(stage.global_batch_size, loader["micro_batch_size"], world_size),
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(stage_dir),
    )
    trainer.fit(module, datamodule=datamodule)
    if isinstance(logger, WandbLogger):  # one W&B run per stage
        logger.experiment.finish()
    export = stage_dir / "checkpoint"
    if trainer.is_global_zero:
        module.model.save_pretrained(export)
    trainer.strategy.barrier()
    return export


def train(cfg: DictConfig) -> dict:
    """Returns {"checkpoint": path of the last stage's checkpoint, "results": eval results or None}."""
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    if cfg.data.get("prepare"):
        build(cfg.data.prepare)  # before any model is built: the demo's tokenizer is made here
    checkpoint = cfg.get("init_from")
    for name in cfg.run_stages:
        checkpoint = fit_stage(cfg, name, run_dir, checkpoint)
    results = None
    if cfg.evaluate and cfg.data.get("eval"):
        from lmm.eval.run import evaluate_checkpoint
        results = evaluate_checkpoint(checkpoint, cfg.data.eval, run_dir / "eval", **cfg.generation)
    return {"checkpoint": str(checkpoint), "results": results}
