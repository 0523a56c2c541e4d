"""Evaluation results to a Lightning logger (W&B, CSV): `eval/<benchmark>/<metric>` scalars and,
on W&B, the table the command prints."""
from __future__ import annotations

from lmm.eval.run import TABLE_HEADER, flatten, table_rows


def log_results(logger, summary: dict) -> None:
    scalars = {}
    for name, metrics in summary["benchmarks"].items():
        scalars.update({f"eval/{name}/{k}": v for k, v in flatten(metrics).items()})
    for name, cells in summary["columns"].items():
        scalars.update({f"eval/columns/{label}": v for label, v in cells.items() if v is not None})
    if scalars:
        logger.log_metrics(scalars)
    if hasattr(logger, "log_table"):  # W&B: the printed table, one row per benchmark column
        rows = table_rows(summary["benchmarks"], summary["columns"], summary.get("notes"),
                          summary.get("conventions"))
        logger.log_table("eval/table", columns=list(TABLE_HEADER), data=[list(r) for r in rows])
    logger.save()
