"""Evaluate a checkpoint on a benchmark: write predictions and results JSON, print a table."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from lmm.model.checkpoint import load
from lmm.model.spec import build


def format_table(name: str, metrics: Mapping[str, float]) -> str:
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()]
    width = max(len(k) for k, _ in rows)
    lines = [f"{name} results", "-" * (width + 12)] + [f"{k:<{width}}  {v:>10}" for k, v in rows]
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint, benchmark: Mapping, output_dir, batch_size: int = 64,
                        max_new_tokens: int = 8, device: str | None = None, **gen) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load(checkpoint, device=device)
    bench = build(benchmark)
    metrics, predictions = bench.run(model, batch_size=batch_size, max_new_tokens=max_new_tokens, **gen)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / f"{bench.name}_predictions.jsonl").open("w") as f:
        for p in predictions:
            f.write(json.dumps(p) + "\n")
    results = {"checkpoint": str(checkpoint), "benchmark": bench.name, **metrics}
    (output_dir / f"{bench.name}_results.json").write_text(json.dumps(results, indent=2))
    print(format_table(bench.name, metrics))
    return results
