"""Kill drills: SIGKILL a training run again and again, restart it with resume=true each time, and
check that the result equals an uninterrupted run's, bit for bit.

    python experiments/reliability/kill_drill.py [--strategy auto|ddp|fsdp] [--plan P1,P2,...]
        [--seed 0] [--out DIR] [--data-dir DIR] [-- extra overrides]

The job is the demo config (tiny SigLIP-shaped tower, pixel-shuffle connector, tiny Llama, both
stages, then the easy-vqa evaluation) on a slice of the demo data, with a Lightning checkpoint
after every optimizer step. It first runs once without faults (the reference), then runs again
under faults until a run completes. Each fault of the plan is one of:

    train_step            inside a training step (mid-epoch, mid-accumulation)
    lightning_checkpoint  after last.ckpt is written, before it is renamed into place
    export                after the exported weights are written, before their manifest
    eval_batch            after an evaluation batch's answers were kept
    timed                 at a random moment (uniform over the reference run's wall time)

Targeted faults fire on a random occurrence of their point (LMM_FAULT, lmm/faults.py) and kill
the job's whole process group, every rank, as a preemption would. The table says how many faults
fired, how many runs it took, whether every exported tensor of both stages and every evaluation
answer equal the reference's, and, from the record ledger each checkpoint carries
(lmm/train/ledger.py), how many records an epoch trained on twice or never.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

KINDS = ("train_step", "lightning_checkpoint", "export", "eval_batch", "timed")
DEFAULT_PLAN = "train_step,lightning_checkpoint,timed,export,train_step,lightning_checkpoint,export,eval_batch"
# A random occurrence of each point, counted from the restart (the job restarts where it stopped).
OCCURRENCE = {"train_step": (1, 8), "lightning_checkpoint": (1, 3), "export": (1, 1), "eval_batch": (1, 3)}
STAGES = ("pretrain", "sft")


def drill_data(source: Path, out: Path, n_pretrain: int, n_sft: int) -> dict[str, Path]:
    """The first records of the demo's caption and conversation files (images stay where they are)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for part, n in (("pretrain", n_pretrain), ("sft", n_sft)):
        records = json.loads((source / f"{part}.json").read_text())[:n]
        files[part] = out / f"{part}_{n}.json"
        files[part].write_text(json.dumps(records))
    return files


def job_command(strategy: str, data_dir: Path, files: dict[str, Path], run_dir: Path, extra: list[str]) -> list[str]:
    root = data_dir / "easyvqa"
    devices = [] if strategy == "auto" else [f"strategy={strategy}", "trainer.devices=2", "threads=1"]
    if strategy == "fsdp":
        devices.append("strategy.model.param_dtype=null")  # float32: bitwise comparable
    return [sys.executable, "-m", "lmm.train", *devices, f"paths.data_dir={data_dir}", f"paths.output_dir={run_dir}",
            f"hydra.run.dir={run_dir}", f"data.pretrain.annotations=[{files['pretrain']}]",
            f"data.sft.annotations=[{files['sft']}]", f"data.pretrain.image_root={root}", f"data.sft.image_root={root}",
            "recipe.stages.pretrain.epochs=2", "recipe.stages.sft.epochs=2",
            "recipe.stages.pretrain.micro_batch_size=8", "recipe.stages.pretrain.global_batch_size=16",
            "recipe.stages.sft.micro_batch_size=8", "recipe.stages.sft.global_batch_size=16",
            "checkpoint_every=1", "evaluation.limit=24", "evaluation.batch_size=8", "evaluation.progress=false",
            "callbacks.samples.num_samples=0", "+callbacks.ledger._target_=lmm.train.ledger.RecordLedger",
            "+trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", *extra]


def launch(cmd: list[str], env: dict, log: Path, fault: str | None = None, kill_after: float | None = None,
           timeout: float = 900, server=None) -> tuple[int, float]:
    """(return code, seconds). The job gets its own process group, which a fault or the timer kills whole.
    With `server` (lmm.train.forkserver.Preimported) the job is forked from a process that imported
    the training stack once, instead of a new interpreter importing it again."""
    env = {**env, **({"LMM_FAULT": fault} if fault else {})}
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n=== {' '.join(cmd[3:6])} ... fault={fault} kill_after={kill_after}\n")
    wait = kill_after if kill_after is not None else timeout
    if server is not None:
        run = server.start(cmd[2], cmd[3:], env, log)
        rc = run.wait(wait)
        run.kill()  # the timer's kill, or whatever a finished job left running
        if rc is None and kill_after is None:
            raise TimeoutError(f"the job ran over {timeout} s; see {log}")
        return run.wait(), time.perf_counter() - start
    with log.open("a") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                raise
        _kill_group(proc.pid)
        rc = proc.wait()
    return rc, time.perf_counter() - start


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)  # every rank, and whatever they started
    except ProcessLookupError:
        pass


def compare(reference: Path, drill: Path) -> dict:
    from safetensors.torch import load_file

    tensors = equal = 0
    for stage in STAGES:
        a = load_file(reference / stage / "checkpoint/model.safetensors")
        b = load_file(drill / stage / "checkpoint/model.safetensors")
        tensors += len(a)
        equal += sum(1 for k in a if k in b and a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                     and bool((a[k] == b[k]).all()))
    answers = same = 0
    for path in sorted((reference / "eval").glob("*/answers.jsonl")):
        ref = {r["key"]: r["answer"] for r in map(json.loads, path.read_text().splitlines())}
        other = drill / "eval" / path.parent.name / "answers.jsonl"
        got = {r["key"]: r["answer"] for r in map(json.loads, other.read_text().splitlines())} if other.is_file() else {}
        answers += len(ref)
        same += sum(1 for k, v in ref.items() if got.get(k) == v)
    twice = never = 0
    for stage in STAGES:
        ref = json.loads((reference / stage / "records.json").read_text())
        got = json.loads((drill / stage / "records.json").read_text())
        for epoch, entry in ref.items():
            mine = got.get(epoch, {"twice": [], "ids": []})
            twice += len(mine["twice"])
            never += len(set(entry["ids"]) - set(mine["ids"]))
    ref_results = json.loads((reference / "eval/results.json").read_text())["benchmarks"]
    got_results = json.loads((drill / "eval/results.json").read_text())["benchmarks"]
    return {"tensors": tensors, "tensors_equal": equal, "answers": answers, "answers_equal": same,
            "records_twice": twice, "records_never": never, "scores_equal": ref_results == got_results}


def drill(strategy: str, plan: list[str], seed: int, out: Path, data_dir: Path, extra: list[str],
          n_records: int = 64, preimported: bool = True) -> dict:
    rng = random.Random(seed)
    server = None
    if preimported:
        from lmm.train.forkserver import Preimported

        server = Preimported()
    out.mkdir(parents=True, exist_ok=True)
    files = drill_data(data_dir / "easyvqa", out / "data", n_records, n_records)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1" if strategy != "auto" else ""),
           "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if v != ""}
    env.pop("LMM_FAULT", None)
    log = out / f"drill_{strategy}.log"
    reference, run = out / f"reference_{strategy}", out / f"drill_{strategy}"
    rc, ref_seconds = launch(job_command(strategy, data_dir, files, reference, extra), env, log, server=server)
    if rc != 0:
        raise SystemExit(f"the reference run failed (rc {rc}); see {log}")
    cmd = job_command(strategy, data_dir, files, run, [*extra, "resume=true"])
    fired, runs, fired_by = 0, 0, {}
    completed = False
    for kind in plan:
        if kind not in KINDS:
            raise SystemExit(f"unknown fault {kind!r}; valid: {', '.join(KINDS)}")
        if kind == "timed":
            rc, _ = launch(cmd, env, log, kill_after=rng.uniform(0.1, 1.0) * ref_seconds, server=server)
        else:
            rc, _ = launch(cmd, env, log, fault=f"{kind}:{rng.randint(*OCCURRENCE[kind])}", server=server)
        runs += 1
        if rc == 0:  # the fault came too late: the job finished before reaching it
            completed = True
            break
        fired += 1
        fired_by[kind] = fired_by.get(kind, 0) + 1
    if not completed:
        rc, _ = launch(cmd, env, log, server=server)
        runs += 1
        if rc != 0:
            raise SystemExit(f"the final resumed run failed (rc {rc}); see {log}")
    return {"strategy": strategy, "faults": fired, "by_point": fired_by, "runs": runs, "reference_s": ref_seconds,
            **compare(reference, run)}


def table(rows: list[dict]) -> str:
    head = ("strategy", "faults fired", "by point", "runs to finish", "tensors equal", "answers equal",
            "scores equal", "records twice", "records never")
    lines = [head] + [(r["strategy"], str(r["faults"]), " ".join(f"{k}:{v}" for k, v in r["by_point"].items()),
                       str(r["runs"]), f"{r['tensors_equal']}/{r['tensors']}", f"{r['answers_equal']}/{r['answers']}",
                       "yes" if r["scores_equal"] else "NO", str(r["records_twice"]), str(r["records_never"]))
                      for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]

    def fmt(line):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"

    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines[1:])])


def passed(row: dict) -> bool:
    return (row["tensors_equal"] == row["tensors"] and row["answers_equal"] == row["answers"] and row["scores_equal"]
            and row["records_twice"] == 0 and row["records_never"] == 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", action="append", choices=["auto", "ddp", "fsdp"],
                        help="repeat for several (default: auto)")
    parser.add_argument("--plan", default=DEFAULT_PLAN, help=f"faults in order, from {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--records", type=int, default=64, help="records of each stage's data slice")
    parser.add_argument("--out", type=Path, default=Path("outputs/kill_drill"))
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("LMM_DATA_DIR", "data")))
    parser.add_argument("--fresh-interpreters", action="store_true",
                        help="start every run as a new `python -m lmm.train` (default: forked from a process "
                             "that imported the training stack once)")
    parser.add_argument("extra", nargs="*", help="more overrides of the job, after --")
    args = parser.parse_args(argv)
    from lmm.data.easyvqa import prepare

    prepare(args.data_dir / "easyvqa")
    rows = [drill(s, args.plan.split(","), args.seed, args.out / s, args.data_dir.resolve(), args.extra, args.records,
                  not args.fresh_interpreters)
            for s in args.strategy or ["auto"]]
    print(table(rows))
    (args.out / "drill.json").write_text(json.dumps(rows, indent=1))
    return 0 if all(map(passed, rows)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
