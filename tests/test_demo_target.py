"""The README's main job, unchanged: the default config must reach the easy-vqa target, and the
evaluation command must give the same answers for the checkpoint it leaves.

Slow: it trains both stages of the demo in full and scores all 9,673 test questions (and the POPE
and multiple-choice forms); the evaluation command then answers the first 500 questions of each
form again. It guards the headline number against regressions anywhere in the stack. Measured on
the 2-vCPU AMD EPYC machine: 598 s with the 64 px / 8 px tower of issue 12 (seed 0 at 0.9895);
with the demo's SFT batches grouped by length (issue 13), the job took 452 s (seed 0 at 0.9872);
with the lettered turns (issue 15: two SFT conversations per image, 1,885 SFT steps) it takes
604-619 s alone (seed 0: VQA 0.9923, POPE F1 0.987, MC 0.981; seeds 0-4, every one above the
targets, in experiments/easyvqa_demo/README.md). The assertions are issue 15's targets for every
seed. In `make test` (one pytest-xdist worker per core) it runs on one thread beside the other
worker's tests: 978-1,063 s there (2026-12-07). A slower 2-vCPU EPYC VM once took 1.5x to 2.3x as
long; the timeout is about 3.4x the 1,063 s. Then it executes experiments/quickstart.ipynb on the
run it made (nbclient; any cell error fails the test).
"""
import json
import re
from pathlib import Path

import pytest

from lmm.eval.cli import run
from lmm.train.run import train
from tests.conftest import compose_config


def answers(path: Path) -> dict[str, str]:
    return {r["key"]: r["answer"] for r in map(json.loads, path.read_text().splitlines())}


NOTEBOOK = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.ipynb"


def execute_notebook(run_dir: Path, data_dir: Path, monkeypatch) -> dict:
    """The quickstart notebook executed on `run_dir`; returns it with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("LMM_QUICKSTART_RUN", str(run_dir))  # the kernel inherits this process's environment
    monkeypatch.setenv("LMM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
                   ).execute()  # raises CellExecutionError on a failing cell
    return nb


def cell_text(cell) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_default_demo_reaches_the_targets_on_easyvqa(data_dir, tmp_path, monkeypatch):
    cfg = compose_config("train", runs_dir=tmp_path, overrides=[f"paths.data_dir={data_dir}",
                                                                "+trainer.enable_progress_bar=false"])
    out = train(cfg)
    results = out["results"]["benchmarks"]
    vqa = results["easyvqa_vqa"]
    assert vqa["n"] == 9673
    assert vqa["accuracy"] >= 0.97, vqa
    pope, mc = results["easyvqa_pope"], results["easyvqa_mc"]
    assert pope["n"] == 3520 and pope["f1"] >= 0.97, pope
    assert mc["n"] == 1760 and mc["accuracy"] >= 0.90, mc   # circular: right under every option order
    # the evaluation command on the demo checkpoint answers as the run's own evaluation did
    eval_cfg = compose_config("eval", [f"checkpoint={out['checkpoint']}", f"paths.data_dir={data_dir}",
                                       f"output_dir={tmp_path / 'eval'}", "evaluation.progress=false",
                                       "evaluation.limit=500"])
    assert set(run(eval_cfg)["benchmarks"]) == set(results)
    for form in results:
        again = answers(tmp_path / "eval" / form / "answers.jsonl")
        first = answers(Path(out["checkpoint"]).parents[1] / "eval" / form / "answers.jsonl")
        assert len(again) >= 500 and all(first[key] == answer for key, answer in again.items()), form
    # the quickstart notebook on this run: every cell runs, and what it shows is this run's
    nb = execute_notebook(Path(out["checkpoint"]).parents[1], data_dir, monkeypatch)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs is not None for c in code)
    chat = next(cell_text(c) for c in code if "ASSISTANT:" in cell_text(c))
    assert chat.count("ASSISTANT:") == 3
    accuracy = float(re.search(r"VQA accuracy on 96 questions: ([0-9.]+)", "".join(map(cell_text, code)))[1])
    assert accuracy >= 0.9  # the run's first 96 test questions (0.95 over all of them above)
    figures = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert len(figures) >= 3  # the chat image, the predictions, the training curves
    assert out["results"]["table"] in "".join(map(cell_text, code))
