"""experiments/tinyllava_ablation/gather.py on a fake runs folder and a fake W&B API, and the SLURM
launcher config (conf/hydra/launcher/slurm.yaml) composed with the training config."""
from __future__ import annotations

import csv
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

from tests.conftest import CONF

ROOT = Path(__file__).resolve().parents[1]
GROUP = "tinyllava_share"
SIG_PHI = {"vision": "siglip_so400m_384", "connector": "mlp2x_gelu", "llm": "phi2"}
CLIP_TL = {"vision": "clip_l14_336", "connector": "mlp2x_gelu", "llm": "tinyllama_1_1b"}
HEADER = ("| variant | data | recipe | vision | connector | llm | seeds | easyvqa/accuracy | pope/f1 "
          "| loss/pretrain | loss/sft |")


@pytest.fixture(scope="module")
def gather():
    path = ROOT / "experiments" / "tinyllava_ablation" / "gather.py"
    spec = importlib.util.spec_from_file_location("tinyllava_gather", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# --------------------------------------------------------------------------------------------------
# the fake study: 2 cells x 2 recipes; SigLIP+Phi-2 share has 2 seeds; CLIP+TinyLlama share has no eval

# (cell choices, recipe, seed, experiment, {benchmark: results}, {stage: [train/loss values in order]})
RUNS = [
    (SIG_PHI, "share", 0, "TinyLLaVA-share-Sig-Phi",
     {"easyvqa": {"accuracy": 0.90, "n": 100, "accuracy_color": 0.95},
      "pope": {"accuracy": 0.50, "f1": 0.85, "n": 30}},
     {"pretrain": [3.0, 2.0], "sft": [1.5, 1.0]}),
    (SIG_PHI, "share", 1, "TinyLLaVA-share-Sig-Phi",
     {"easyvqa": {"accuracy": 0.80, "n": 100, "accuracy_color": 0.85},
      "pope": {"accuracy": 0.52, "f1": 0.87, "n": 30}},
     {"pretrain": [3.0, 2.4], "sft": [1.5, 1.2]}),
    (SIG_PHI, "base", 0, None,
     {"easyvqa": {"accuracy": 0.70, "n": 100, "accuracy_color": 0.75},
      "pope": {"accuracy": 0.55, "f1": 0.80, "n": 30}},
     {"pretrain": [4.0, 2.5], "sft": [1.9, 1.4]}),
    (CLIP_TL, "base", 0, None,
     {"easyvqa": {"accuracy": 0.60, "n": 100, "accuracy_color": 0.65}},
     {"pretrain": [4.0, 2.6], "sft": [2.0, 1.6]}),
    (CLIP_TL, "share", 0, None, {}, {"pretrain": [3.5, 2.2], "sft": [1.8, 1.3]}),  # never evaluated
]


def cell_name(choices: dict, seed: int) -> str:
    return f"{choices['vision']}__{choices['connector']}__{choices['llm']}__seed{seed}"


def run_info(choices, recipe, seed, experiment, group=GROUP, tag=None) -> dict:
    cell = cell_name(choices, seed) + (tag or "")
    full = {**choices, "recipe": recipe, "data": "llava15"}
    info = {"group": group, "name": f"{cell}/{recipe}", "cell": cell, "choices": full, "seed": seed,
            "tags": [f"{k}={v}" for k, v in full.items()], "experiment": experiment, "stages": ["pretrain", "sft"]}
    return info if tag is None else {**info, "tag": tag}


def write_metrics(path: Path, losses: list[float]) -> None:
    """A sparse CSVLogger file: loss rows, lr-only and throughput-only rows, and a last row with no loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["epoch", "step", "train/loss", "train/lr", "train/samples_per_s", "train/tokens_per_s"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for i, loss in enumerate(losses):
            w.writerow({"epoch": 0, "step": 10 * i, "train/loss": loss})
            w.writerow({"epoch": 0, "step": 10 * i, "train/lr": 1e-3})
        w.writerow({"epoch": 0, "step": 10 * len(losses), "train/samples_per_s": 12.5, "train/tokens_per_s": 900})


def write_run(root: Path, choices, recipe, seed, experiment, results, losses, group=GROUP, tag=None) -> Path:
    info = run_info(choices, recipe, seed, experiment, group, tag)
    run = root / "llava15" / info["name"]
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(info))
    for stage, values in losses.items():
        # an older, higher-loss attempt in version_2 and the one to read in version_10 (numeric order)
        write_metrics(run / stage / "version_2" / "metrics.csv", [v + 5 for v in values])
        write_metrics(run / stage / "version_10" / "metrics.csv", values)
        (run / stage / "checkpoint").mkdir()
    for bench, metrics in results.items():
        (run / "eval").mkdir(exist_ok=True)
        (run / "eval" / f"{bench}_results.json").write_text(
            json.dumps({"checkpoint": str(run / "sft" / "checkpoint"), "benchmark": bench, **metrics}))
        (run / "eval" / f"{bench}_predictions.jsonl").write_text('{"answer": "x"}\n')
    return run


@pytest.fixture
def runs_root(tmp_path) -> Path:
    root = tmp_path / "runs"
    for spec in RUNS:
        write_run(root, *spec)
    # a run of another sweep, same cell as one of ours: --group must keep it out of the averages
    write_run(root / "other", SIG_PHI, "share", 2, None, {"easyvqa": {"accuracy": 0.1}}, {"pretrain": [9.0]},
              group="adhoc")
    return root


def row(table, recipe, choices) -> dict:
    found = [r for r in table.rows if r["recipe"] == recipe and all(r[k] == v for k, v in choices.items())]
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------------------------------
# folder reading


def test_last_value_skips_empty_cells_and_version_is_numeric(gather, tmp_path):
    write_metrics(tmp_path / "s" / "version_2" / "metrics.csv", [7.0, 6.0])
    write_metrics(tmp_path / "s" / "version_10" / "metrics.csv", [3.0, 2.5])
    assert gather.latest_version(tmp_path / "s").name == "version_10"
    assert gather.last_value(tmp_path / "s" / "version_10" / "metrics.csv") == 2.5
    assert gather.final_loss(tmp_path, "s") == 2.5
    assert gather.final_loss(tmp_path, "missing_stage") is None


def test_folder_table_values(gather, runs_root):
    runs, skipped = gather.read_folder(runs_root)
    assert skipped == []
    assert len(runs) == 6
    table = gather.build_table(runs, group=GROUP, skipped=skipped)
    assert table.columns == ["easyvqa/accuracy", "pope/f1", "loss/pretrain", "loss/sft"]
    assert len(table.rows) == 3  # CLIP+TinyLlama share has no eval results

    share = row(table, "share", SIG_PHI)
    assert share["variant"] == "TinyLLaVA-share-Sig-Phi"
    assert (share["data"], share["seeds"], share["seed_list"]) == ("llava15", 2, "0;1")
    v = share["values"]
    assert v["easyvqa/accuracy"].mean == pytest.approx(0.85, abs=1e-12)
    assert v["easyvqa/accuracy"].std == pytest.approx(statistics.stdev([0.9, 0.8]), abs=1e-12)
    assert v["easyvqa/accuracy"].n == 2
    assert v["pope/f1"].mean == pytest.approx(0.86, abs=1e-12)  # f1, the headline, not pope's accuracy
    assert v["pope/f1"].std == pytest.approx(statistics.stdev([0.85, 0.87]), abs=1e-12)
    assert v["loss/pretrain"].mean == pytest.approx(2.2, abs=1e-12)  # last non-empty loss of version_10
    assert v["loss/sft"].mean == pytest.approx(1.1, abs=1e-12)
    assert v["loss/sft"].std == pytest.approx(statistics.stdev([1.0, 1.2]), abs=1e-12)

    base = row(table, "base", SIG_PHI)
    assert (base["variant"], base["seeds"]) == ("", 1)
    assert base["values"]["easyvqa/accuracy"].mean == 0.7
    assert base["values"]["easyvqa/accuracy"].std is None
    assert base["values"]["loss/pretrain"].mean == 2.5

    clip = row(table, "base", CLIP_TL)
    assert clip["values"]["easyvqa/accuracy"].mean == 0.6
    assert "pope/f1" not in clip["values"]
    assert clip["values"]["loss/sft"].mean == 1.6

    assert len(table.skipped) == 1
    source, reason = table.skipped[0]
    assert source.endswith("clip_l14_336__mlp2x_gelu__tinyllama_1_1b__seed0/share")
    assert "no eval results" in reason
    assert table.notes == ["1 run(s) of other groups left out (--group tinyllava_share)"]


def test_without_group_the_other_sweep_is_a_separate_row(gather, runs_root):
    runs, skipped = gather.read_folder(runs_root)
    table = gather.build_table(runs, skipped=skipped)
    shares = [r for r in table.rows if r["recipe"] == "share" and r["vision"] == "siglip_so400m_384"]
    assert sorted((r["group"], r["seeds"]) for r in shares) == [("adhoc", 1), (GROUP, 2)]
    assert gather.to_markdown(table).splitlines()[0].startswith("| group | variant |")


def test_all_metrics_columns(gather, runs_root):
    runs, _ = gather.read_folder(runs_root)
    table = gather.build_table(runs, all_metrics=True, group=GROUP)
    assert table.columns == ["easyvqa/accuracy", "easyvqa/accuracy_color", "pope/f1", "pope/accuracy",
                             "loss/pretrain", "loss/sft"]  # headline first; counts ("n") are not metrics
    share = row(table, "share", SIG_PHI)
    assert share["values"]["easyvqa/accuracy_color"].mean == pytest.approx(0.9, abs=1e-12)
    assert share["values"]["pope/accuracy"].mean == pytest.approx(0.51, abs=1e-12)


def test_headline_override_and_missing_headline_is_noted(gather, runs_root):
    runs, _ = gather.read_folder(runs_root)
    table = gather.build_table(runs, {**gather.HEADLINE, "pope": "accuracy"}, group=GROUP)
    assert row(table, "share", SIG_PHI)["values"]["pope/accuracy"].mean == pytest.approx(0.51, abs=1e-12)
    table = gather.build_table(runs, {**gather.HEADLINE, "easyvqa": "f1"}, group=GROUP)
    assert "easyvqa/f1" not in row(table, "base", SIG_PHI)["values"]
    missing = [n for n in table.notes if "easyvqa results have no 'f1'" in n]
    assert len(missing) == 4  # one per evaluated run of the group


def test_unevaluated_seed_leaves_n_below_seed_count(gather, runs_root):
    run = runs_root / "llava15" / cell_name(SIG_PHI, 1) / "share"
    (run / "eval" / "pope_results.json").unlink()
    runs, _ = gather.read_folder(runs_root)
    table = gather.build_table(runs, group=GROUP)
    share = row(table, "share", SIG_PHI)
    assert share["values"]["pope/f1"].n == 1 and share["values"]["pope/f1"].mean == 0.85
    assert "| 0.8500 (n=1) |" in gather.to_markdown(table)


def test_rows_put_a_cells_recipes_side_by_side(gather, runs_root):
    run = runs_root / "llava15" / cell_name(CLIP_TL, 0) / "share"
    (run / "eval").mkdir()
    (run / "eval" / "easyvqa_results.json").write_text(json.dumps({"benchmark": "easyvqa", "accuracy": 0.65}))
    runs, _ = gather.read_folder(runs_root)
    table = gather.build_table(runs, group=GROUP)
    assert [(r["vision"], r["recipe"]) for r in table.rows] == [
        ("clip_l14_336", "base"), ("clip_l14_336", "share"), ("siglip_so400m_384", "base"), ("siglip_so400m_384", "share")]
    assert table.skipped == []


def test_a_tagged_variant_is_its_own_row(gather, runs_root, tmp_path):
    write_run(runs_root, SIG_PHI, "base", 0, None, {"easyvqa": {"accuracy": 0.3}}, {"pretrain": [1.0]}, tag="_lr2e-4")
    runs, _ = gather.read_folder(runs_root)
    table = gather.build_table(runs, group=GROUP)
    bases = [r for r in table.rows if r["recipe"] == "base" and r["vision"] == "siglip_so400m_384"]
    assert [(r["tag"], r["seeds"], r["values"]["easyvqa/accuracy"].mean) for r in bases] == [
        ("", 1, 0.7), ("_lr2e-4", 1, 0.3)]
    assert not [n for n in table.notes if "repeated seed" in n]  # not a second seed of the untagged cell
    assert gather.to_markdown(table).splitlines()[0].startswith("| variant | data | recipe | vision | connector "
                                                                  "| llm | tag | seeds |")
    gather.write_csv(table, tmp_path / "t.csv")
    with (tmp_path / "t.csv").open(newline="") as f:
        assert sorted(r["tag"] for r in csv.DictReader(f)) == ["", "", "", "_lr2e-4"]


def test_a_repeated_seed_is_noted(gather, runs_root):
    copy = write_run(runs_root / "copy", SIG_PHI, "base", 0, None, {"easyvqa": {"accuracy": 0.5}}, {"pretrain": [1.0]})
    runs, _ = gather.read_folder(runs_root)
    table = gather.build_table(runs, group=GROUP)
    assert row(table, "base", SIG_PHI)["seed_list"] == "0;0"
    repeated = [n for n in table.notes if "repeated seed" in n]
    assert len(repeated) == 1 and str(copy) in repeated[0]


def test_markdown_csv_and_report(gather, runs_root, tmp_path):
    runs, skipped = gather.read_folder(runs_root)
    table = gather.build_table(runs, group=GROUP, skipped=skipped)
    md = gather.to_markdown(table).splitlines()
    assert md[0] == HEADER
    assert md[1] == "|" + "---|" * 11
    assert ("| TinyLLaVA-share-Sig-Phi | llava15 | share | siglip_so400m_384 | mlp2x_gelu | phi2 | 2 "
            "| 0.8500 ± 0.0707 | 0.8600 ± 0.0141 | 2.2000 ± 0.2828 | 1.1000 ± 0.1414 |") in md
    assert "|  | llava15 | base | clip_l14_336 | mlp2x_gelu | tinyllama_1_1b | 1 | 0.6000 | - | 2.6000 | 1.6000 |" in md

    text = gather.report(table)
    assert text.splitlines()[0] == "Skipped 1 run(s), not in the table:"
    assert "clip_l14_336__mlp2x_gelu__tinyllama_1_1b__seed0/share" in text and "no eval results" in text

    out = tmp_path / "table.csv"
    gather.write_csv(table, out)
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    share = next(r for r in rows if r["recipe"] == "share")
    assert share["variant"] == "TinyLLaVA-share-Sig-Phi" and share["seed_list"] == "0;1" and share["seeds"] == "2"
    assert float(share["easyvqa/accuracy"]) == pytest.approx(0.85, abs=1e-12)
    assert float(share["easyvqa/accuracy_std"]) == pytest.approx(statistics.stdev([0.9, 0.8]), abs=1e-12)
    assert share["easyvqa/accuracy_n"] == "2"
    assert float(share["loss/sft"]) == pytest.approx(1.1, abs=1e-12)
    clip = next(r for r in rows if r["vision"] == "clip_l14_336")
    assert (clip["pope/f1"], clip["pope/f1_std"], clip["pope/f1_n"], clip["easyvqa/accuracy_std"]) == ("", "", "0", "")


def test_plot(gather, runs_root, tmp_path):
    pytest.importorskip("matplotlib")
    runs, _ = gather.read_folder(runs_root)
    table = gather.build_table(runs, group=GROUP)
    out = tmp_path / "plot.png"
    gather.plot(table, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5000


def test_plot_series_labels(gather):
    def labels(*specs):
        rows = [{"group": g, "data": d, "recipe": r, "vision": "v", "connector": "c", "llm": "l"} for g, d, r in specs]
        label = gather.series_label(gather.Table([], rows, [], []))
        return [label(r) for r in rows]

    assert labels(("g", "llava15", "base"), ("g", "llava15", "share")) == ["base", "share"]
    assert labels(("tinyllava_base", "llava15", "base"), ("tinyllava_share", "sharegpt4v", "share")) == [
        "base / llava15", "share / sharegpt4v"]
    assert labels(("tinyllava_base", "llava15", "base"), ("tinyllava_connector", "llava15", "base")) == [
        "base / tinyllava_base", "base / tinyllava_connector"]


def test_cli_folder(gather, runs_root, tmp_path, capsys):
    out, png = tmp_path / "t.csv", tmp_path / "p.png"
    plot_args = ["--plot", str(png)] if importlib.util.find_spec("matplotlib") else []
    assert gather.main([str(runs_root), "--group", GROUP, "--out", str(out), *plot_args]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == HEADER
    assert "Skipped 1 run(s)" in printed
    assert out.is_file() and len(out.read_text().splitlines()) == 4
    assert png.is_file() or not plot_args
    # nothing evaluated: an empty table is a failure, and the skip is still reported
    assert gather.main([str(runs_root / "llava15" / cell_name(CLIP_TL, 0) / "share")]) == 1
    assert "no eval results" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gather.main([str(runs_root), "--wandb", "e/p"])  # a folder or W&B, not both


# --------------------------------------------------------------------------------------------------
# W&B


class FakeRun:
    def __init__(self, name, config, summary, rid):
        self.name, self.config, self.summary, self.id = name, config, summary, rid
        self.url = f"https://wandb.test/e/p/runs/{rid}"
        self.group = (config.get("run") or {}).get("group")


class FakeApi:
    """wandb.Api().runs(path, filters): oldest first, filtered by group as W&B does."""

    def __init__(self, runs):
        self._runs, self.calls = runs, []

    def runs(self, path, filters=None, order="+created_at"):
        self.calls.append((path, filters))
        group = (filters or {}).get("group")
        return [r for r in self._runs if group is None or r.group == group]


def fake_wandb_runs() -> list[FakeRun]:
    out = []
    for i, (choices, recipe, seed, experiment, results, losses) in enumerate(RUNS):
        info = run_info(choices, recipe, seed, experiment)
        config = {"vision": {"_target_": "x"}, "seed": seed, "run": info}
        for stage in info["stages"]:
            summary = {"train/loss": losses[stage][-1], "train/lr": 1e-5, "_step": 99}
            if stage == info["stages"][-1]:
                summary.update({f"eval/{b}/{k}": v for b, m in results.items() for k, v in m.items()})
            out.append(FakeRun(f"{info['name']}/{stage}", config, summary, f"r{i}{stage}"))
    # an older attempt of a last stage, superseded by the later one of the same name
    first = out[1]
    out.insert(0, FakeRun(first.name, first.config, {**first.summary, "eval/easyvqa/accuracy": 0.01}, "old"))
    # a run whose SFT stage never reached W&B, and a run not written by lmm.train
    crashed = run_info(CLIP_TL, "base", 3, None)
    out.append(FakeRun(f"{crashed['name']}/pretrain", {"run": crashed}, {"train/loss": 2.0}, "crashed"))
    out.append(FakeRun("something-else", {"lr": 1}, {"eval/easyvqa/accuracy": 0.5}, "alien"))
    return out


def test_wandb_matches_folder(gather, runs_root):
    api = FakeApi(fake_wandb_runs())
    runs, skipped = gather.read_wandb(api, "e/p", group=GROUP)
    assert api.calls == [("e/p", {"group": GROUP})]
    table = gather.build_table(runs, group=GROUP, skipped=skipped)

    folder_runs, _ = gather.read_folder(runs_root)
    expected = gather.build_table(folder_runs, group=GROUP)
    assert table.columns == expected.columns
    simple = [{**r, "values": {k: (s.mean, s.std, s.n) for k, s in r["values"].items()}} for r in table.rows]
    assert simple == [{**r, "values": {k: (s.mean, s.std, s.n) for k, s in r["values"].items()}}
                      for r in expected.rows]

    reasons = sorted(reason for _, reason in table.skipped)
    assert len(reasons) == 3
    assert reasons[0] == "run 'clip_l14_336__mlp2x_gelu__tinyllama_1_1b__seed0/share' (group tinyllava_share): " \
                         "no eval results"
    assert reasons[1] == "run 'clip_l14_336__mlp2x_gelu__tinyllama_1_1b__seed3/base' (group tinyllava_share): " \
                         "no W&B run of its last stage 'sft'"
    assert reasons[2] == "superseded by a later W&B run named 'siglip_so400m_384__mlp2x_gelu__phi2__seed0/share/sft'"
    assert ("https://wandb.test/e/p/runs/old", reasons[2]) in table.skipped


def test_wandb_without_group_reports_foreign_runs(gather):
    runs, skipped = gather.read_wandb(FakeApi(fake_wandb_runs()), "e/p")
    assert len(runs) == 5
    assert ("https://wandb.test/e/p/runs/alien",
            "no 'run' entry in the W&B config (not written by lmm.train)") in skipped


def test_cli_wandb(gather, capsys):
    api = FakeApi(fake_wandb_runs())
    assert gather.main(["--wandb", "e/p", "--group", GROUP], api=api) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == HEADER
    assert "| 0.8500 ± 0.0707 |" in printed and "Skipped 3 run(s)" in printed


# --------------------------------------------------------------------------------------------------
# SLURM launcher config


def compose_with_slurm(overrides=()):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)


def test_slurm_launcher_composes(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    for var in ("LMM_SLURM_PARTITION", "LMM_SLURM_ACCOUNT", "LMM_SLURM_QOS", "LMM_SLURM_TIMEOUT_MIN"):
        monkeypatch.delenv(var, raising=False)
    cfg = compose_with_slurm(["trainer.devices=4", "trainer.num_nodes=2"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)  # one task per GPU
    assert launcher.partition is None and launcher.account is None and launcher.qos is None
    assert launcher.timeout_min == 1440 and isinstance(launcher.timeout_min, int)
    assert isinstance(launcher.cpus_per_task, int) and isinstance(launcher.array_parallelism, int)
    assert launcher.max_num_timeout == 0

    monkeypatch.setenv("LMM_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("LMM_SLURM_ACCOUNT", "proj42")
    monkeypatch.setenv("LMM_SLURM_TIMEOUT_MIN", "30")
    launcher = compose_with_slurm().hydra.launcher
    assert (launcher.partition, launcher.account, launcher.timeout_min) == ("gpu-long", "proj42", 30)


def test_slurm_launcher_makes_a_valid_sbatch_script(monkeypatch, tmp_path):
    """The launcher's parameters, passed to submitit as the launcher passes them, give the sbatch
    flags Lightning needs (field names checked against submitit, not only against the schema)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    submitit = pytest.importorskip("submitit")
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    monkeypatch.setenv("LMM_SLURM_PARTITION", "gpu")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{Path(sys.executable).parent}:/usr/bin:/bin")

    cfg = compose_with_slurm(["trainer.devices=4"])
    params = instantiate(cfg.hydra.launcher).params
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit",
                                     slurm_max_num_timeout=params["max_num_timeout"])
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    script = executor._executor._make_submission_file_text("python -u job.py", "uid")
    for flag in ("--ntasks-per-node=4", "--gpus-per-node=4", "--nodes=1", "--partition=gpu", "--time=1440",
                 "--mem-per-gpu=64G", "--cpus-per-task=8"):
        assert f"#SBATCH {flag}\n" in script, flag
    assert '[ -n "$OMP_NUM_THREADS" ] || export OMP_NUM_THREADS=1' in script
    assert "srun --unbuffered" in script
