"""Run a grid cell: the recipe's stages in order (pretrain -> sft), each from the checkpoint its
recipe names, then evaluate the final checkpoint on the chosen benchmarks (conf/benchmark).

A run's folder is named from its Hydra choices (`run.path`), and `run.json` in it records them, so
a grid never collides and later stages and recipes find earlier checkpoints by path:
    <runs_dir>/<data>/<vision>__<connector>__<llm>__seed<seed><tag>/<recipe>/
        run.json  <stage>/checkpoint/  <stage>/lightning/last.ckpt  <stage>/version_N/metrics.csv
        eval/<benchmark>_results.json
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import lightning as L
import torch
from filelock import FileLock
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lmm.data.datamodule import LlavaDataModule
from lmm.data.templates import stage_template
from lmm.files import clean_leftovers, write_text
from lmm.loggers import build_logger, finish
from lmm.model.checkpoint import check_tokenizer, is_finished, load_weights, verify, write_checkpoint
from lmm.model.spec import build, to_plain
from lmm.secrets import redact, scrub_hydra_config
from lmm.train.checkpoint_io import AtomicCheckpointIO, StepCheckpoint, resumable
from lmm.train.module import LMMTrainModule
from lmm.train.preflight import probe_write, run_folder_lock, stage_write_bytes
from lmm.train.tuning import has_lora, merged_lora_state

log = logging.getLogger(__name__)
def model_spec(cfg: DictConfig) -> dict:
    return {"vision": to_plain(cfg.vision), "connector": to_plain(cfg.connector), "llm": to_plain(cfg.llm)}


def run_info(cfg: DictConfig) -> dict:
    """Who this run is: written to run.json, logged as the W&B config's `run`, read by gather scripts."""
    run = cfg.run
    choices = to_plain(run.choices)
    return {"group": run.group, "name": f"{run.cell}/{choices['recipe']}", "cell": run.cell, "choices": choices,
            "seed": cfg.seed, "tag": run.tag, "tags": [f"{k}={v}" for k, v in choices.items()] + list(run.get("tags") or []),
            "experiment": run.get("experiment"), "stages": list(cfg.run_stages), "config": experiment_config(cfg)}


def experiment_config(cfg: DictConfig) -> dict:
    """What makes two runs the same experiment: the components, the recipe, the data and the seed."""
    return {"vision": to_plain(cfg.vision), "connector": to_plain(cfg.connector), "llm": to_plain(cfg.llm),
            "recipe": to_plain(cfg.recipe), "data": cfg.data.name, "seed": cfg.seed}


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def check_run_folder(run_dir: Path, info: dict, overwrite: bool | None) -> None:
    """A run folder is named from the config-group choices only: a sweep over anything else (an lr,
    a tune mode) would land in one folder and overwrite its runs. `overwrite`: true replaces the
    earlier run; false refuses, naming the difference; null (default) refuses inside a multirun
    and, in a single run (the user asked for this very run), warns and replaces."""
    previous = run_dir / "run.json"
    if overwrite or not previous.is_file():
        return
    before = dict(_flatten(json.loads(previous.read_text()).get("config", {})))
    now = dict(_flatten(json.loads(json.dumps(info["config"]))))
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if not changed:
        return
    shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5]) + (" ..." if len(changed) > 5 else "")
    if overwrite is None and not _in_multirun():
        log.warning("%s held a run of another configuration (%s); its outputs are being replaced", run_dir, shown)
        return
    raise ValueError(f"{run_dir} holds a run of another configuration ({shown}). Name this variant with "
                     f"run.tag=_<name> (it is appended to the cell folder), or set run.overwrite=true to replace it.")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().get("mode") == RunMode.MULTIRUN


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient accumulation that keeps the recipe's global batch for any micro batch x world size."""
    per_step = micro_batch * world_size
    if global_batch % per_step:
        raise ValueError(f"global batch {global_batch} is not a multiple of micro batch {micro_batch} x "
                         f"{world_size} device(s); change data.loader.micro_batch_size or the device count")
    return global_batch // per_step


def stage_accumulation(global_batch: int, datamodule, world_size: int) -> int:
    """Fixed-size batching keeps the recipe's global batch exactly; the token modes batch a varying
    number of samples, so their accumulation keeps it on average (the plan's mean per micro-batch)."""
    if datamodule.batching.batching in ("random", "length_grouped"):
        return accumulation(global_batch, datamodule.micro_batch_size, world_size)
    per_step = datamodule.samples_per_micro_batch * world_size
    steps = max(1, round(global_batch / per_step))
    log.info("%s batching: %.1f samples per micro-batch on average; accumulating %d micro-batches gives a global "
             "batch of %.0f samples on average (recipe: %d)", datamodule.batching.batching,
             datamodule.samples_per_micro_batch, steps, steps * per_step, global_batch)
    return steps


def check_init(stage_name: str, init) -> dict | None:
    """The stage's starting weights ({checkpoint, modules}), checked to exist; None when it has none."""
    if not init or not init.get("checkpoint"):
        return None
    path = Path(init.checkpoint)
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"stage {stage_name!r} starts from {path}, which holds no checkpoint. Run the stage that writes it "
            f"first (same grid cell; for the share recipe, the base recipe's pretrain), or set "
            f"recipe.stages.{stage_name}.init.checkpoint")
    verify(path)  # an interrupted or corrupted export: one line naming the file
    return {"checkpoint": str(path), "modules": list(init.modules) if init.get("modules") else None}


def init_weights(module: LMMTrainModule, stage_name: str, init) -> None:
    """Load the stage's starting weights into an already built module (all modules, or `init.modules`)."""
    init = check_init(stage_name, init)
    if init:
        load_weights(module.model, init["checkpoint"], modules=init["modules"])


def make_logger(cfg: DictConfig, info: dict, stage: str, run_dir: Path):
    target = cfg.logger.get("_target_", "")
    if target.endswith("WandbLogger"):  # one W&B run per stage, named and tagged from the grid cell
        logger = build_logger(cfg.logger, save_dir=str(run_dir), name=f"{info['name']}/{stage}",
                              group=info["group"], tags=info["tags"])
    else:
        logger = build_logger(cfg.logger, save_dir=str(run_dir), name=stage)
    config = OmegaConf.to_container(cfg, resolve=True)
    logger.log_hyperparams(redact({**config, "run": info, "stage": stage}))  # W&B config, hparams.yaml
    return logger


def make_strategy(spec, world_size: int):
    """A strategy name ("auto", "ddp") or a config to instantiate. For ModelParallelStrategy,
    `data_parallel_size: auto` means every rank shards the model (pure FSDP2); Lightning's own
    "auto" would give the data-parallel axis only the node count, for 2-D (tensor) parallelism."""
    if not isinstance(spec, DictConfig):
        return spec
    spec = to_plain(spec)
    if spec["_target_"] == "lightning.pytorch.strategies.ModelParallelStrategy":
        # the same strategy, with its distributed checkpoint folder written atomically
        spec["_target_"] = "lmm.train.checkpoint_io.AtomicModelParallelStrategy"
    if spec["_target_"].endswith("ModelParallelStrategy") and spec.get("data_parallel_size") == "auto":
        tp = spec.get("tensor_parallel_size", 1)
        if tp == "auto" or world_size % tp:
            raise ValueError(f"tensor_parallel_size={tp!r} must be a divisor of the {world_size} devices")
        spec["data_parallel_size"] = world_size // tp
    return instantiate(spec)


def export(module: LMMTrainModule, trainer: L.Trainer, path: Path) -> None:
    """Write the stage's model as an lmm checkpoint, LoRA adapters merged into their layers.
    Sharded (FSDP2) weights are gathered to rank zero's CPU only (the others get an empty dict)
    and written from the gathered dict: no second model is built and no pretrained file is read."""
    state = module.full_state_dict()  # a collective under FSDP2: every rank calls it
    if trainer.is_global_zero:
        if has_lora(module.model):
            state = merged_lora_state(module.model, state)
        write_checkpoint(path, module.model.spec(), state, module.model.tokenizer)
    trainer.strategy.barrier()


def fit_stage(cfg: DictConfig, name: str, run_dir: Path, info: dict):
    """Returns (checkpoint path, trainer, logger); the caller finishes the logger."""
    if name not in cfg.recipe.stages:
        raise ValueError(f"recipe {cfg.recipe.name!r} has no stage {name!r}; valid: {list(cfg.recipe.stages)}")
    stage = cfg.recipe.stages[name]
    init = check_init(name, stage.get("init"))
    # Built on the meta device; configure_model reads the weights once (init checkpoint or
    # pretrained files), on rank 0 under FSDP2, which broadcasts them shard by shard.
    module = LMMTrainModule(model_spec(cfg), stage.tune, stage.optim, cfg.strategy.get("model"),
                            init=init, meta_init=True)
    if init:
        log.info("stage %s: initialising %s from %s", name, init.get("modules") or "all modules", init["checkpoint"])
        if init["modules"] is None or "llm" in init["modules"]:  # its embeddings are indexed by that tokenizer
            check_tokenizer(init["checkpoint"], module.model.tokenizer, f"stage {name!r}")
    log.info("stage %s: trainable parameters %s", name, module.trainable)
    if stage.data not in cfg.data:
        raise ValueError(f"data config {cfg.data.name!r} has no {stage.data!r} part for stage {name!r}")
    loader = to_plain(cfg.data.loader)
    if stage.get("micro_batch_size"):  # a stage may batch differently (short caption samples fit more)
        loader["micro_batch_size"] = stage.micro_batch_size
    datamodule = LlavaDataModule(**cfg.data[stage.data], **loader, seed=cfg.seed)  # data built once, in train()
    datamodule.attach(module.model, stage_template(stage.prompt, module.model.template,
                                                   stage.get("caption_eos", False)))
    world_size = cfg.trainer.devices * cfg.trainer.num_nodes
    datamodule.setup("fit", rank=0, world=world_size)  # lengths and plan: the token modes size accumulation from it
    accumulate = stage_accumulation(stage.global_batch_size, datamodule, world_size)
    stage_dir = run_dir / name
    if rank_zero_only.rank == 0:  # what a killed run left half-written; then room for what this stage writes
        for folder in (stage_dir, stage_dir / "lightning"):
            for leftover in clean_leftovers(folder):
                log.info("stage %s: removed %s, left by an interrupted write", name, leftover)
        probe_write(stage_dir, stage_write_bytes(module.model), f"stage {name!r}")
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    if cfg.trainer.get("enable_checkpointing", True):  # Lightning checkpoints (for resuming) in the stage folder
        callbacks.append(StepCheckpoint(dirpath=stage_dir / "lightning", save_top_k=0, save_last=True,
                                         every_n_train_steps=cfg.get("checkpoint_every")))
    logger = make_logger(cfg, info, name, run_dir)
    trainer = instantiate(
        cfg.trainer,
        strategy=make_strategy(cfg.strategy.lightning, world_size),
        max_epochs=stage.epochs,
        accumulate_grad_batches=accumulate,
        use_distributed_sampler=False,  # the datamodule's plan already splits the data over ranks
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # last.ckpt written beside, fsynced, renamed (lmm/train/checkpoint_io.py)
        default_root_dir=str(stage_dir),
    )
    last = resumable(stage_dir / "lightning" / "last.ckpt", rank_zero_only.rank) if cfg.get("resume") else None
    resume_from = str(last) if last else None  # a folder under FSDP2
    if resume_from:
        log.info("stage %s: resuming from %s", name, resume_from)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
    checkpoint = stage_dir / "checkpoint"
    export(module, trainer, checkpoint)
    return checkpoint, trainer, logger


def evaluate_run(cfg: DictConfig, checkpoint: Path, run_dir: Path, trainer, logger) -> dict | None:
    """Score the last stage's checkpoint on cfg.benchmark. Under DDP/FSDP every rank answers its
    share (the trainer's process group is still up); rank zero writes <run>/eval and logs."""
    from lmm.eval.cli import prepare_data
    from lmm.eval.report import log_results
    from lmm.eval.run import evaluate_checkpoint

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed and rank_zero_only.rank != 0:  # every stage resumed: no process group to share with
        return None
    prepare_data(cfg.benchmark, cfg.paths.data_dir)
    device = trainer.strategy.root_device if trainer is not None else None
    settings = {**to_plain(cfg.evaluation), "resume": bool(cfg.get("resume"))}  # a resumed run resumes its evaluation
    summary = evaluate_checkpoint(checkpoint, cfg.benchmark, run_dir / "eval", settings=settings, device=device)
    if summary is not None:
        print(f"evaluation of {checkpoint}\n{summary['table']}")
        if logger is not None:
            log_results(logger, summary)
    return summary


def train(cfg: DictConfig) -> dict:
    """Returns {"checkpoint": path of the last stage's checkpoint, "results": the evaluation summary
    (lmm.eval.run.evaluate_model; None when not evaluated or not rank zero)}."""
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    info = run_info(cfg)
    if cfg.data.get("prepare"):  # before any model is built: the demo's tokenizer is made here
        # Every rank of a multi-process job runs this; the lock lets one build and the rest find it built.
        Path(cfg.paths.data_dir).mkdir(parents=True, exist_ok=True)
        with FileLock(str(Path(cfg.paths.data_dir) / f".{cfg.data.name}.prepare.lock")):
            build(cfg.data.prepare)
    # One run per folder: rank 0 holds the lock (the job's other ranks are started by it, or by the
    # same launcher, and must not be refused).
    with run_folder_lock(run_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext():
        return _train_stages(cfg, run_dir, info)


def _train_stages(cfg: DictConfig, run_dir: Path, info: dict) -> dict:
    check_run_folder(run_dir, info, cfg.run.get("overwrite"))
    if rank_zero_only.rank == 0:  # before training, so a crashed run is still identifiable
        write_text(run_dir / "run.json", json.dumps(redact(info), indent=2))
        scrub_hydra_config()
    checkpoint, trainer, logger = None, None, None
    for name in cfg.run_stages:
        done = run_dir / name / "checkpoint"
        if cfg.get("resume"):
            finished, why = is_finished(done)
            if finished:
                log.info("stage %s: finished earlier (%s), not run again (resume=true)", name, done)
                checkpoint = done
                continue
            if done.exists():  # an interrupted export: redo it (from last.ckpt, or by training again)
                log.warning("stage %s: its checkpoint is not finished (%s); redoing the stage from its last "
                            "Lightning checkpoint", name, why)
        if logger is not None:
            finish(logger)  # one W&B run per stage
        checkpoint, trainer, logger = fit_stage(cfg, name, run_dir, info)
    results = None
    if cfg.evaluate and cfg.benchmark and checkpoint is not None:
        results = evaluate_run(cfg, checkpoint, run_dir, trainer, logger)
    if logger is not None:
        finish(logger)
    return {"checkpoint": str(checkpoint), "results": results}
