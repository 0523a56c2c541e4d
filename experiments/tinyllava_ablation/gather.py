"""Gather the TinyLLaVA ablation runs into the paper-style table (Markdown + CSV) and a grouped bar plot.

    python experiments/tinyllava_ablation/gather.py outputs/runs [--group G] [--out table.csv]
           [--plot plot.png] [--all-metrics] [--metric pope=f1 ...]
    python experiments/tinyllava_ablation/gather.py --wandb ENTITY/PROJECT [--group G] ...

Runs come from `run.json` files under a folder (the training runner writes one per run: one grid cell
x one recipe) or from W&B (the last stage's W&B run of each training run, whose config holds the same
`run` entry). One table row per (group, data, recipe, vision, connector, llm, tag): the seeds of a cell are
averaged and their sample standard deviation is reported. Runs that have no evaluation results are
not rows: they are counted and listed as skipped, with the reason.

Standard library only; matplotlib is imported for --plot and wandb for --wandb.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The headline metric of each benchmark (key in <benchmark>_results.json / eval/<benchmark>/<key> on W&B).
# A benchmark missing here is reported by DEFAULT_METRIC.
HEADLINE = {
    "easyvqa": "accuracy",       # runs evaluated before the three easy-vqa forms
    "easyvqa_vqa": "accuracy",
    "easyvqa_pope": "f1",
    "easyvqa_mc": "accuracy",    # circular
    "vqav2": "accuracy",
    "gqa": "accuracy",
    "textvqa": "accuracy",
    "textvqa_no_ocr": "accuracy",
    "sqa_img": "accuracy",
    "pope": "f1",          # mean over the POPE splits
    "mme": "perception",
    "mmbench": "accuracy",
    "mmvet": "score",
    "llavaw": "score",
}
DEFAULT_METRIC = "accuracy"
NOT_METRICS = {"n"}  # counts in a results file, not scores
AXES = ("data", "recipe", "vision", "connector", "llm")  # run.json choices that identify a table row
ROW_ID = ("group", *AXES, "tag")  # a table row: these equal, the seed free (tag: run.json's optional variant tag)
ROW_ORDER = ("vision", "connector", "llm", "tag", "recipe", "data", "group")  # an architecture's recipes together
LOSS = "loss"  # loss columns are "loss/<stage>": the stage's final train/loss


@dataclass
class Run:
    """One training run (one grid cell x one recipe, one seed), from a folder or from W&B."""

    name: str
    group: str
    choices: dict[str, str]
    seed: Any
    experiment: str | None
    stages: list[str]
    source: str  # run folder or W&B run address: where to look when something is off
    tag: str = ""  # run.json "tag" when the run config sets one (a variant of the same choices, e.g. another lr)
    results: dict[str, dict[str, float]] = field(default_factory=dict)  # benchmark -> metric -> value
    losses: dict[str, float | None] = field(default_factory=dict)  # stage -> final train/loss

    @property
    def ident(self) -> dict[str, str]:
        """What identifies the run's table row (everything but the seed)."""
        return {"group": self.group, **{a: str(self.choices.get(a, "")) for a in AXES}, "tag": self.tag}

    @classmethod
    def from_info(cls, info: dict, source: str) -> Run:
        """Build from the run.json content (the `run` entry of the W&B config)."""
        missing = [k for k in ("name", "choices") if k not in info]
        if missing:
            raise ValueError(f"run description has no {', '.join(missing)}")
        return cls(name=str(info["name"]), group=str(info.get("group") or "adhoc"), choices=dict(info["choices"]),
                   seed=info.get("seed"), experiment=info.get("experiment"), stages=list(info.get("stages") or []),
                   source=source, tag=str(info.get("tag") or ""))


@dataclass
class Stat:
    mean: float
    std: float | None  # sample standard deviation over seeds; None for a single value
    n: int


@dataclass
class Table:
    columns: list[str]  # "<benchmark>/<metric>" then "loss/<stage>"
    rows: list[dict]  # ROW_ID fields, variant, seeds, seed_list, values {column: Stat}
    skipped: list[tuple[str, str]]  # (source, reason): runs that are not in the table
    notes: list[str]  # anything else the reader must know (missing metrics, repeated seeds ...)


# --------------------------------------------------------------------------------------------------
# reading a runs folder


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def metrics_of(results: dict) -> dict[str, float]:
    """The numeric metrics of one results file (nested dicts flattened as "a/b"), counts left out."""
    out = {}
    for k, v in _flatten(results).items():
        x = _number(v)
        if x is not None and k not in NOT_METRICS:
            out[k] = x
    return out


def read_results(eval_dir: Path) -> dict[str, dict[str, float]]:
    """benchmark -> metrics, from every <benchmark>_results.json in a run's eval folder."""
    out = {}
    for path in sorted(eval_dir.glob("*_results.json")):
        data = json.loads(path.read_text())
        bench = str(data.get("benchmark") or path.name[: -len("_results.json")])
        out[bench] = metrics_of(data)
    return out


def latest_version(stage_dir: Path) -> Path | None:
    """The version_<N> folder with the highest N (numerically: version_10 comes after version_9)."""
    versions = [(int(m.group(1)), p) for p in stage_dir.glob("version_*")
                if p.is_dir() and (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(versions)[1] if versions else None


def last_value(csv_path: Path, column: str = "train/loss") -> float | None:
    """The last non-empty value of a column of a Lightning CSVLogger file (its rows are sparse)."""
    last = None
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            cell = (row.get(column) or "").strip()
            if cell:
                last = float(cell)
    return last


def final_loss(run_dir: Path, stage: str) -> float | None:
    version = latest_version(run_dir / stage)
    if version is None or not (version / "metrics.csv").is_file():
        return None
    return last_value(version / "metrics.csv")


def read_run_dir(run_dir: Path) -> Run:
    run = Run.from_info(json.loads((run_dir / "run.json").read_text()), source=str(run_dir))
    if (run_dir / "eval").is_dir():
        run.results = read_results(run_dir / "eval")
    run.losses = {stage: final_loss(run_dir, stage) for stage in run.stages}
    return run


def read_folder(root: Path | str) -> tuple[list[Run], list[tuple[str, str]]]:
    """Every run under root (found by its run.json); unreadable run.json files are skipped with the reason."""
    runs, skipped = [], []
    for path in sorted(Path(root).rglob("run.json")):
        try:
            runs.append(read_run_dir(path.parent))
        except (OSError, ValueError, TypeError, AttributeError) as e:  # json errors are ValueErrors
            skipped.append((str(path.parent), f"unreadable run.json or results: {e}"))
    return runs, skipped


# --------------------------------------------------------------------------------------------------
# reading W&B


def _summary(wrun) -> dict[str, Any]:
    """A W&B run's summary as a plain dict (public-API runs have it as `summary_metrics`)."""
    summary = getattr(wrun, "summary_metrics", None)
    if summary is None:
        summary = wrun.summary
    return dict(summary.items())


def results_from_summary(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """eval/<benchmark>/<metric> summary keys -> benchmark -> metric -> value."""
    out: dict[str, dict[str, float]] = {}
    for key, value in summary.items():
        parts = key.split("/", 2)
        x = _number(value)
        if len(parts) == 3 and parts[0] == "eval" and x is not None and parts[2] not in NOT_METRICS:
            out.setdefault(parts[1], {})[parts[2]] = x
    return out


def read_wandb(api, path: str, group: str | None = None) -> tuple[list[Run], list[tuple[str, str]]]:
    """Runs from a W&B project (`api` is a `wandb.Api()` or anything with the same `runs(path, filters)`).

    Each training run has one W&B run per stage, named "<run name>/<stage>", whose config holds the
    run.json content under "run". A table row comes from the last stage's W&B run (it carries the
    eval/<benchmark>/<metric> summary keys); each stage's final loss is that stage's summary train/loss.
    A later W&B run with the same group and name replaces an earlier one (api.runs lists oldest first).
    """
    skipped: list[tuple[str, str]] = []
    by_name: dict[tuple[str, str], tuple[Any, dict, dict]] = {}  # (group, W&B name) -> (run, info, summary)
    for wrun in api.runs(path, filters={"group": group} if group else {}):
        where = str(getattr(wrun, "url", None) or f"{path}/{getattr(wrun, 'id', wrun.name)}")
        info = (wrun.config or {}).get("run")
        if not isinstance(info, dict) or "name" not in info:
            skipped.append((where, "no 'run' entry in the W&B config (not written by lmm.train)"))
            continue
        key = (str(info.get("group") or "adhoc"), str(wrun.name))
        if key in by_name:
            skipped.append((by_name[key][2]["where"], f"superseded by a later W&B run named {wrun.name!r}"))
        by_name[key] = (wrun, info, {"where": where, "summary": _summary(wrun)})

    runs: dict[tuple[str, str], Run | None] = {}
    for (grp, wname), (wrun, info, extra) in by_name.items():
        stages = list(info.get("stages") or [])
        if (grp, str(info["name"])) in runs or not stages or wname != f"{info['name']}/{stages[-1]}":
            continue  # an earlier stage (or already built): read below through its last stage
        try:
            run = Run.from_info(info, source=extra["where"])
        except (ValueError, TypeError) as e:
            skipped.append((extra["where"], f"unusable 'run' entry in the W&B config: {e}"))
            runs[(grp, str(info["name"]))] = None  # reported: not again as a missing last stage
            continue
        run.results = results_from_summary(extra["summary"])
        for stage in stages:
            stage_run = by_name.get((grp, f"{info['name']}/{stage}"))
            loss = stage_run[2]["summary"].get("train/loss") if stage_run else None
            run.losses[stage] = _number(loss)
        runs[(grp, run.name)] = run
    # a training run whose last stage never reached W&B would vanish without a trace: report it
    missing: dict[tuple[str, str], tuple[str, str]] = {}
    for (grp, _), (_, info, extra) in by_name.items():
        if (grp, str(info["name"])) not in runs:
            last = (list(info.get("stages") or []) or ["?"])[-1]
            missing.setdefault((grp, str(info["name"])), (extra["where"], last))
    for (grp, name), (where, last) in missing.items():
        skipped.append((where, f"run {name!r} (group {grp}): no W&B run of its last stage {last!r}"))
    return [r for r in runs.values() if r is not None], skipped


# --------------------------------------------------------------------------------------------------
# the table


def _stat(values: list[float]) -> Stat:
    return Stat(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def _bench_order(benchmarks: Iterable[str], headline: dict[str, str]) -> list[str]:
    known = [b for b in headline if b in benchmarks]
    return known + sorted(set(benchmarks) - set(known))


def build_table(runs: list[Run], headline: dict[str, str] | None = None, all_metrics: bool = False,
                group: str | None = None, skipped: list[tuple[str, str]] | None = None) -> Table:
    """One row per ROW_ID (group, data, recipe, vision, connector, llm, tag) over the runs that have eval
    results; the seeds of a row are averaged."""
    headline = HEADLINE if headline is None else headline
    skipped = list(skipped or [])
    notes: list[str] = []
    if group is not None:
        others = [r for r in runs if r.group != group]
        if others:
            notes.append(f"{len(others)} run(s) of other groups left out (--group {group})")
        runs = [r for r in runs if r.group == group]
    evaluated = []
    for run in runs:
        if run.results:
            evaluated.append(run)
        else:
            skipped.append((run.source, f"run {run.name!r} (group {run.group}): no eval results"))

    # columns: one per benchmark (its headline metric) or one per metric, then one per stage's loss
    benches = _bench_order({b for r in evaluated for b in r.results}, headline)
    columns = []
    for bench in benches:
        main = headline.get(bench, DEFAULT_METRIC)
        if all_metrics:
            metrics = {m for r in evaluated for m in r.results.get(bench, {})}
            columns += [f"{bench}/{m}" for m in ([main] if main in metrics else []) + sorted(metrics - {main})]
        else:
            columns.append(f"{bench}/{main}")
    stages = list(dict.fromkeys(s for r in evaluated for s in r.stages))
    columns += [f"{LOSS}/{s}" for s in stages]

    cells: dict[tuple[str, ...], list[Run]] = {}
    # an architecture's recipes side by side (base and share sweeps are separate groups, often on
    # different data sets): ROW_ORDER, then the seed
    for run in sorted(evaluated, key=lambda r: (tuple(r.ident[k] for k in ROW_ORDER), str(r.seed))):
        cells.setdefault(tuple(run.ident[k] for k in ROW_ID), []).append(run)
    rows = []
    for key, members in cells.items():
        seeds = [r.seed for r in members]
        if len(set(map(str, seeds))) < len(seeds):
            notes.append(f"{'/'.join(filter(None, key))}: repeated seed in {', '.join(r.source for r in members)}")
        values = {}
        for col in columns:
            head, rest = col.split("/", 1)
            if head == LOSS and rest in stages:
                found = [r.losses.get(rest) for r in members]
            else:
                found = [r.results.get(head, {}).get(rest) for r in members]
                if not all_metrics:
                    for r, v in zip(members, found):
                        if v is None and head in r.results:
                            notes.append(f"{r.source}: {head} results have no {rest!r} "
                                         f"(have: {', '.join(sorted(r.results[head])) or 'nothing'})")
            found = [v for v in found if v is not None and not math.isnan(v)]
            if found:
                values[col] = _stat(found)
        variants = sorted({r.experiment for r in members if r.experiment})
        rows.append({**dict(zip(ROW_ID, key)), "variant": " / ".join(variants), "seeds": len(members),
                     "seed_list": ";".join(str(s) for s in seeds), "values": values})
    return Table(columns, rows, skipped, notes)


# --------------------------------------------------------------------------------------------------
# outputs


def fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4f}"


def fmt_stat(s: Stat | None, seeds: int) -> str:
    if s is None:
        return "-"
    text = fmt(s.mean) if s.std is None else f"{fmt(s.mean)} ± {fmt(s.std)}"
    return text if s.n == seeds else f"{text} (n={s.n})"


def _id_columns(table: Table) -> list[str]:
    groups = {r["group"] for r in table.rows}
    tags = any(r["tag"] for r in table.rows)
    return (["group"] if len(groups) > 1 else []) + ["variant", *AXES] + (["tag"] if tags else []) + ["seeds"]


def to_markdown(table: Table) -> str:
    ids = _id_columns(table)
    header = ids + table.columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.rows:
        cells = [str(row[c]) for c in ids] + [fmt_stat(row["values"].get(c), row["seeds"]) for c in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(table: Table) -> str:
    """The skipped runs (counted, with their reasons) and the notes; empty when there is nothing to say."""
    lines = []
    if table.skipped:
        lines.append(f"Skipped {len(table.skipped)} run(s), not in the table:")
        lines += [f"- {source}: {reason}" for source, reason in table.skipped]
    if table.notes:
        lines.append("Notes:")
        lines += [f"- {note}" for note in table.notes]
    return "\n".join(lines)


def write_csv(table: Table, path: Path | str) -> None:
    """Full precision: per column its mean, <col>_std (sample std over seeds) and <col>_n."""
    ids = ["group", "variant", *AXES, "tag", "seeds", "seed_list"]
    header = ids + [f"{c}{suffix}" for c in table.columns for suffix in ("", "_std", "_n")]
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in table.rows:
            out = [row[c] for c in ids]
            for c in table.columns:
                s = row["values"].get(c)
                out += ["", "", 0] if s is None else [repr(s.mean), "" if s.std is None else repr(s.std), s.n]
            writer.writerow(out)


def series_label(table: Table):
    """Bar label of a row in the plot: its recipe, plus its data set when the rows have several (e.g. base
    on LLaVA-1.5 and share on ShareGPT4V: "base / llava15"), plus its group when recipe and data leave
    rows of two sweeps apart (the same base cell in the base sweep and in the connector sweep)."""
    parts = ["recipe"]
    if len({r["data"] for r in table.rows}) > 1:
        parts.append("data")
    groups: dict[tuple, set] = {}
    for r in table.rows:
        groups.setdefault(tuple(r[k] for k in parts), set()).add(r["group"])
    if any(len(g) > 1 for g in groups.values()):
        parts.append("group")
    return lambda row: " / ".join(str(row[k]) for k in parts)


def plot(table: Table, path: Path | str) -> None:
    """A panel per benchmark column; x = architecture (vision / connector / llm), one bar per recipe (with its
    data set and group where they vary), error bars = std over seeds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [c for c in table.columns if not c.startswith(LOSS + "/")]
    if not panels:
        raise ValueError("nothing to plot: no benchmark columns")

    def cell(row):
        return "\n".join(filter(None, [row["vision"], row["connector"], row["llm"], row["tag"]]))

    label = series_label(table)
    cells = list(dict.fromkeys(cell(r) for r in table.rows))
    series = list(dict.fromkeys(label(r) for r in table.rows))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(max(4.0, 1.0 + 0.5 * len(cells) * len(series)) * ncols, 4.2 * nrows),
                 layout="constrained")
    FigureCanvasAgg(fig)
    width = 0.8 / len(series)
    for i, col in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for j, name in enumerate(series):
            xs, ys, errs = [], [], []
            for row in table.rows:
                s = row["values"].get(col)
                if label(row) == name and s is not None:
                    xs.append(cells.index(cell(row)) - 0.4 + width * (j + 0.5))
                    ys.append(s.mean)
                    errs.append(s.std or 0.0)
            ax.bar(xs, ys, width, yerr=errs if any(errs) else None, capsize=3, label=name)
        ax.set_title(col)
        ax.set_xticks(range(len(cells)), cells, fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------------------------------
# command line


def parse_metric(spec: str) -> tuple[str, str]:
    bench, sep, metric = spec.partition("=")
    if not sep or not bench or not metric:
        raise argparse.ArgumentTypeError(f"expected BENCHMARK=METRIC, got {spec!r}")
    return bench, metric


def main(argv: list[str] | None = None, api=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", nargs="?", help="runs folder: every run.json below it is read")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read W&B runs instead of a folder")
    p.add_argument("--group", help="only runs of this group (the sweep name)")
    p.add_argument("--out", help="write the table as CSV (mean, std and n per column)")
    p.add_argument("--plot", help="write a grouped bar plot (PNG, PDF, SVG ...)")
    p.add_argument("--all-metrics", action="store_true", help="every metric of every benchmark, not only the headline")
    p.add_argument("--metric", action="append", type=parse_metric, default=[], metavar="BENCH=KEY",
                   help="headline metric of a benchmark (repeatable), e.g. --metric pope=accuracy")
    args = p.parse_args(argv)
    if (args.root is None) == (args.wandb is None):
        p.error("give a runs folder or --wandb ENTITY/PROJECT (one of them)")

    if args.wandb:
        if api is None:
            import wandb

            api = wandb.Api()
        runs, skipped = read_wandb(api, args.wandb, group=args.group)
    else:
        if not Path(args.root).is_dir():
            p.error(f"not a folder: {args.root}")
        runs, skipped = read_folder(args.root)
    if not runs and not skipped:
        print(f"no runs found in {args.wandb or args.root}", file=sys.stderr)
        return 1

    table = build_table(runs, {**HEADLINE, **dict(args.metric)}, all_metrics=args.all_metrics,
                        group=args.group, skipped=skipped)
    print(to_markdown(table))
    if extra := report(table):
        print()
        print(extra)
    if args.out:
        write_csv(table, args.out)
        print(f"\nCSV: {args.out}")
    if args.plot and table.rows:
        plot(table, args.plot)
        print(f"plot: {args.plot}")
    return 0 if table.rows else 1


if __name__ == "__main__":
    sys.exit(main())
