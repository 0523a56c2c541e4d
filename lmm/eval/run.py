"""Score a model on benchmarks: split the requests over ranks, generate, gather, score, write.

Output folder:
    results.json                  checkpoint, every benchmark's metrics, the paper-table columns
    <benchmark>_results.json      one benchmark's metrics (what experiments/tinyllava_ablation reads)
    <benchmark>/answers.jsonl     request key, prompt and raw answer: `reuse_answers` rescoring reads it
    <benchmark>/predictions.jsonl the benchmark's per-question records (gold, parsed answer, score)
    <benchmark>/...               submission / review files in the official formats
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lmm.eval.answer_cache import AnswerCache, fingerprint
from lmm.eval.benchmark import Benchmark, Request, check_convention
from lmm.eval.generate import generate_answers
from lmm.files import atomic_file, write_text
from lmm.model.spec import build, to_plain

log = logging.getLogger(__name__)

RUNNER_KEYS = ("label", "prepare")  # keys of a benchmark config read by the runner, not the benchmark


@dataclass
class Settings:
    """How benchmarks run (conf/evaluation/default.yaml)."""

    batch_size: int = 64
    num_workers: int = 0
    limit: int | None = None           # first N questions of every benchmark: smoke runs
    max_new_tokens: int | None = None  # None: each benchmark's own
    on_missing: str = "error"          # a benchmark whose files are missing: error | skip (counted, reported)
    reuse_answers: bool = False        # rescore <benchmark>/answers.jsonl instead of generating (e.g. judge later)
    progress: bool = True
    dtype: str | None = "auto"         # auto | fp32 | bf16 | fp16 (see resolve_dtype)
    generate: dict = field(default_factory=dict)  # extra keyword arguments of LMM.generate
    convention: str = "llava"          # llava (LLaVA-1.5's scripts, the paper's) | lmms_eval (lmms-eval 0.7.3)
    resume: bool = False               # reuse the answers a killed evaluation of the same checkpoint kept


def settings_from(cfg: Mapping | None) -> Settings:
    cfg = to_plain(cfg) if cfg is not None else {}
    unknown = set(cfg) - set(Settings.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown evaluation settings {sorted(unknown)}; valid: {sorted(Settings.__dataclass_fields__)}")
    if cfg.get("on_missing", "error") not in ("error", "skip"):
        raise ValueError(f"evaluation.on_missing must be 'error' or 'skip', got {cfg['on_missing']!r}")
    check_convention(cfg.get("convention", "llava"))
    return Settings(**cfg)


def build_benchmarks(specs: Mapping[str, Mapping | Benchmark], limit: int | None = None) -> dict[str, tuple[Benchmark, dict]]:
    """name -> (benchmark, runner options), from configs or benchmark objects; the key names the benchmark."""
    out = {}
    for name, spec in dict(specs).items():
        if isinstance(spec, Benchmark):  # built in a notebook or a test
            spec.name = name
            out[name] = (spec, {})
            continue
        spec = dict(to_plain(spec))
        options = {k: spec.pop(k) for k in RUNNER_KEYS if k in spec}
        if limit is not None:
            spec["limit"] = limit
        bench = build(spec)
        bench.name = name
        out[name] = (bench, options)
    return out


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_answers(local: dict[str, str], requests: list[Request], world: int) -> dict[str, str]:
    """Every rank's answers merged; each request answered exactly once (checked)."""
    parts = [local]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, local)
    merged: dict[str, str] = {}
    for part in parts:
        twice = merged.keys() & part.keys()
        if twice:
            raise RuntimeError(f"{len(twice)} requests answered by two ranks, e.g. {sorted(twice)[:3]}")
        merged.update(part)
    missing = [r.key for r in requests if r.key not in merged]
    if missing or len(merged) != len(requests):
        raise RuntimeError(f"{len(missing)} requests unanswered after gathering, e.g. {missing[:3]}")
    return merged


def _check_keys(name: str, requests: list[Request]) -> None:
    seen: set[str] = set()
    for r in requests:
        if r.key in seen:
            raise ValueError(f"{name}: request key {r.key!r} appears twice; keys must be unique")
        seen.add(r.key)


def _write_jsonl(path: Path, rows) -> None:
    with atomic_file(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")


def _read_answers(path: Path, requests: list[Request]) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"reuse_answers: {path} not found (run once without reuse_answers)")
    with path.open() as f:
        rows = {row["key"]: row for row in map(json.loads, f)}
    missing = [r.key for r in requests if r.key not in rows]
    if missing:
        raise ValueError(f"reuse_answers: {path} lacks {len(missing)} of the requests, e.g. {missing[:3]} "
                         f"(written with other benchmark settings?)")
    # An answer to another prompt (another suffix, or MMBench under another convention) is not this one's.
    other = [r.key for r in requests if rows[r.key].get("prompt", r.prompt) != r.prompt]
    if other:
        raise ValueError(f"reuse_answers: {len(other)} answers in {path} were generated for other prompts, e.g. "
                         f"{other[:3]} (another suffix or evaluation.convention?); generate them again")
    return {r.key: rows[r.key]["answer"] for r in requests}


def run_benchmark(model, bench: Benchmark, out_dir: Path, settings: Settings, rank: int, world: int,
                  model_id: str | None = None) -> dict | None:
    """Generates this rank's share; on rank zero returns the metrics (other ranks: None). With a
    `model_id` (the weights' hash) answers are kept as they come (lmm/eval/answer_cache.py)."""
    requests = bench.requests()
    _check_keys(bench.name, requests)
    bench_dir = out_dir / bench.name
    start = time.perf_counter()
    if settings.reuse_answers:
        answers = _read_answers(bench_dir / "answers.jsonl", requests)
    else:
        mine = requests[rank::world]
        max_new = settings.max_new_tokens or bench.max_new_tokens
        cache = contextlib.nullcontext()
        if model_id is not None:
            param = next(model.parameters())
            key = fingerprint(model=model_id, max_new_tokens=max_new, generate=settings.generate, world=world,
                              batch_size=settings.batch_size, dtype=str(param.dtype), device=param.device.type)
            cache = AnswerCache(bench_dir, rank, key, settings.resume)
        with cache as kept:
            texts = generate_answers(model, mine, batch_size=settings.batch_size, num_workers=settings.num_workers,
                                     max_new_tokens=max_new, progress=settings.progress and rank == 0,
                                     desc=bench.name, cache=kept, **settings.generate)
        answers = gather_answers({r.key: t for r, t in zip(mine, texts)}, requests, world)
    seconds = time.perf_counter() - start
    if rank != 0:
        return None
    bench_dir.mkdir(parents=True, exist_ok=True)
    if not settings.reuse_answers:
        _write_jsonl(bench_dir / "answers.jsonl", ({"key": r.key, "prompt": r.prompt, "answer": answers[r.key]}
                                                   for r in requests))
    metrics, records = bench.score(answers)
    _write_jsonl(bench_dir / "predictions.jsonl", records)
    files = bench.write_files(answers, records, bench_dir)
    log.info("%s: %d requests in %.1f s%s", bench.name, len(requests), seconds,
             "".join(f"; wrote {p}" for p in files))
    return metrics


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


TABLE_HEADER = ("benchmark", "column", "value", "n", "convention", "notes")


def table_rows(results: Mapping[str, dict], columns: Mapping[str, dict], notes: Mapping[str, str] | None = None,
               conventions: Mapping[str, str] | None = None) -> list[tuple[str, ...]]:
    """One row per paper-table column; `conventions`: name -> the scoring convention each was scored by."""
    rows, notes, conventions = [], notes or {}, conventions or {}
    for name, metrics in results.items():
        if "skipped" in metrics:
            rows.append((name, "-", "skipped", "", "", metrics["skipped"]))
            continue
        n = metrics.get("n", "")
        cells = columns.get(name) or {"": None}
        for label, value in cells.items():
            rows.append((name, label, "-" if value is None else f"{value:.2f}", str(n),
                         conventions.get(name, metrics.get("convention", "llava")), notes.get(name, "")))
    return rows


def format_table(rows: list[tuple[str, ...]], header=TABLE_HEADER) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(r):
        return "| " + " | ".join(f"{c!s:<{w}}" for c, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def evaluate_model(model, benchmarks: Mapping[str, Mapping], out_dir, settings: Settings | Mapping | None = None,
                   checkpoint: str | None = None, model_id: str | None = None) -> dict | None:
    """Score `model` on every benchmark. Every rank calls this (the requests are split over the
    process group when one is initialised); rank zero writes the files and returns
    {"checkpoint", "benchmarks": name -> metrics, "columns": name -> {label: value}, "notes": name -> text,
    "skipped": name -> reason, "table": the printed table}."""
    if not isinstance(settings, Settings):
        settings = settings_from(settings)
    rank, world = _rank_world()
    out_dir = Path(out_dir)
    if rank == 0:  # results.json is written even when every benchmark is skipped
        out_dir.mkdir(parents=True, exist_ok=True)
    built = build_benchmarks(benchmarks, settings.limit)
    results, columns, notes, skipped, conventions = {}, {}, {}, {}, {}
    for name, (bench, _) in built.items():
        conventions[name] = bench.use_convention(settings.convention)
    for name, (bench, options) in built.items():
        try:
            bench.check()
        except FileNotFoundError as e:
            if settings.on_missing == "error":
                raise
            skipped[name] = str(e)
            results[name] = {"skipped": str(e)}
            if rank == 0:
                log.warning("benchmark %s skipped: %s", name, e)
            continue
    was_training = model.training
    model.eval()
    for name, (bench, options) in built.items():
        if name in skipped:
            continue
        metrics = run_benchmark(model, bench, out_dir, settings, rank, world, model_id)
        if rank == 0:
            results[name] = metrics
            cells = bench.columns(metrics)
            if "label" in options and cells:
                cells = ({options["label"]: next(iter(cells.values()))} if len(cells) == 1
                         else {f"{options['label']} {k}": v for k, v in cells.items()})
            columns[name] = cells
            notes[name] = "; ".join(filter(None, [_fallback_note(bench, settings.convention), bench.notes(metrics)]))
            metrics["convention"] = conventions[name]
            write_text(out_dir / f"{name}_results.json",
                       json.dumps({"benchmark": name, "checkpoint": checkpoint, **metrics}, indent=2))
    model.train(was_training)
    if rank != 0:
        return None
    summary = {"checkpoint": checkpoint, "convention": settings.convention, "conventions": conventions,
               "benchmarks": results, "columns": columns, "notes": notes, "skipped": skipped}
    write_text(out_dir / "results.json", json.dumps(summary, indent=2))
    summary["table"] = format_table(table_rows(results, columns, notes, conventions))
    return summary


def _fallback_note(bench: Benchmark, asked: str) -> str:
    """Said in the table when a benchmark cannot score by the asked convention."""
    if bench.convention == asked:
        return ""
    return f"scored as {bench.convention}: {type(bench).__name__} has no {asked} scorer"


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on a GPU that has it, else the checkpoint's float32."""
    choices = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, None: None}
    if name not in choices:
        raise ValueError(f"evaluation dtype {name!r}: valid choices are auto, fp32, bf16, fp16")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return choices[name]


def evaluate_checkpoint(checkpoint, benchmarks: Mapping[str, Mapping], out_dir, settings: Mapping | None = None,
                        device: str | torch.device | None = None) -> dict | None:
    """Load an lmm checkpoint on `device` and score it (see `evaluate_model`)."""
    from lmm.model.checkpoint import load, weights_sha256

    settings = settings_from(settings)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load(checkpoint, device=device, dtype=resolve_dtype(settings.dtype, device))
    return evaluate_model(model, benchmarks, out_dir, settings, checkpoint=str(checkpoint),
                          model_id=weights_sha256(checkpoint))
