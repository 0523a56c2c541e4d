"""The body of `python -m lmm.evaluate`: launch the processes, prepare data, evaluate, report."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from lmm.eval.report import log_results
from lmm.eval.run import evaluate_checkpoint
from lmm.loggers import build_logger, finish
from lmm.model.spec import build, to_plain
from lmm.secrets import redact, scrub_hydra_config

log = logging.getLogger(__name__)


def prepare_data(benchmarks, data_dir) -> None:
    """Run each distinct `prepare` spec of the chosen benchmarks once (the easy-vqa forms build their
    files on first use), before the runner checks their files. A file lock lets every rank call this
    while one builds."""
    done = []
    for spec in to_plain(benchmarks).values():
        prep = spec.get("prepare")
        if prep and prep not in done:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
            with FileLock(str(Path(data_dir) / ".eval.prepare.lock")):
                build(prep)
            done.append(prep)


def run_info(checkpoint: Path) -> dict | None:
    """The training run a checkpoint belongs to (<run>/<stage>/checkpoint next to <run>/run.json)."""
    path = Path(checkpoint).resolve().parent.parent / "run.json"
    return json.loads(path.read_text()) if path.is_file() else None


def make_logger(cfg: DictConfig, checkpoint: Path, out_dir: Path):
    if not cfg.get("logger"):
        return None
    info = run_info(checkpoint)
    if info:  # beside the run's stages in W&B: same group, tags and cell name
        name, extra = f"{info['name']}/eval", {"group": info["group"], "tags": info["tags"]}
    else:
        name, extra = f"eval/{Path(checkpoint).resolve().parent.name}/{Path(checkpoint).name}", {}
    if not str(cfg.logger.get("_target_", "")).endswith("WandbLogger"):
        extra = {}
    logger = build_logger(cfg.logger, save_dir=str(out_dir), name=name, **extra)
    logger.log_hyperparams(redact({**OmegaConf.to_container(cfg, resolve=True), "run": info or {}}))
    return logger


def run(cfg: DictConfig) -> dict | None:
    import lightning as L

    if not cfg.benchmark:
        raise ValueError("no benchmark chosen: e.g. benchmark=[easyvqa] or benchmark=[vqav2,gqa,pope]")
    bad = [n for n, s in cfg.benchmark.items() if not isinstance(s, DictConfig) or "_target_" not in s]
    if bad:
        raise ValueError(f"benchmark entries {bad} have no _target_ (each conf/benchmark file nests its "
                         f"benchmarks under their names)")
    checkpoint = Path(cfg.checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not an lmm checkpoint (no config.json); pass the folder "
                                f"a training stage exported, e.g. <run>/sft/checkpoint")
    multi = cfg.devices not in (1, "1")
    fabric = L.Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy="ddp" if multi else "auto")
    fabric.launch()  # devices > 1: starts the other processes (each runs this command) and the process group
    if fabric.global_rank == 0:
        scrub_hydra_config()
    prepare_data(cfg.benchmark, cfg.paths.data_dir)
    out_dir = Path(cfg.output_dir)
    summary = evaluate_checkpoint(checkpoint, cfg.benchmark, out_dir,
                                  settings=cfg.evaluation, device=fabric.device)
    if summary is None:  # not rank zero
        return None
    print(f"checkpoint: {checkpoint}\n{summary['table']}\nresults: {out_dir / 'results.json'}")
    logger = make_logger(cfg, checkpoint, out_dir)
    if logger is not None:
        try:
            log_results(logger, summary)
        finally:
            finish(logger)
    return summary


