"""lmm.train.launch: which jobs fork their local ranks, and what a forked rank does when it or its
job fails. (Two-process training through the forked ranks: tests/test_distributed.py, the kill
drills; through Lightning's launcher: test_distributed's data-split test, with fork_ranks=false.)"""
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmm.train.launch import fork_count

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """As in a command's process before its rank launch (this test process may run threads of other tests)."""
    monkeypatch.setattr("lmm.train.launch.threading.active_count", lambda: 1)


def cfg(**over):
    c = OmegaConf.create({"fork_ranks": True, "trainer": {"accelerator": "cpu", "devices": 2, "num_nodes": 1},
                          "strategy": {"lightning": "ddp"}})
    for key, value in over.items():
        OmegaConf.update(c, key, value, merge=False)
    return c


def test_cpu_jobs_on_one_node_fork_every_rank_but_the_first(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert fork_count(cfg()) == 1
    assert fork_count(cfg(**{"trainer.devices": 4})) == 3
    assert fork_count(cfg(**{"strategy.lightning": {"_target_": "lightning.pytorch.strategies.ModelParallelStrategy"}})) == 1
    assert fork_count(cfg(**{"strategy.lightning": "auto"})) == 1


@pytest.mark.parametrize("over", [
    {"fork_ranks": False},
    {"trainer.accelerator": "gpu"},           # CUDA must not be initialised before a fork: Lightning's launcher
    {"trainer.num_nodes": 2},
    {"trainer.devices": 1},
    {"trainer.devices": "auto"},
    {"strategy.lightning": "ddp_spawn"},      # Lightning's own process start
])
def test_other_jobs_leave_the_launch_to_lightning(monkeypatch, over):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert fork_count(cfg(**over)) == 0


def test_a_process_running_threads_forks_nothing(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr("lmm.train.launch.threading.active_count", lambda: 2)  # a fork copies only this thread
    assert fork_count(cfg()) == 0


def test_a_rank_started_by_a_launcher_forks_nothing(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun, SLURM, or Lightning's launcher started this one
    assert fork_count(cfg()) == 0


SCRIPT = textwrap.dedent("""
    import os, sys, time
    from lmm.train.launch import LocalRanks

    mode = sys.argv[1]
    def job():
        rank = int(os.environ["LOCAL_RANK"])
        if mode == "rank_fails":
            raise ValueError(f"rank {rank} failed")
        # one write per line: the ranks share this pipe
        os.write(1, f"rank {rank} of {os.environ['WORLD_SIZE']} at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}\\n".encode())

    ranks = LocalRanks()
    ranks.start(2, job)
    if mode == "rank_fails":
        time.sleep(60)  # rank 0 in a collective that never completes: the watcher must stop the job
    else:
        ranks.wait()
        print("joined", sorted(ranks.status.values()), flush=True)
""")


def test_forked_ranks_run_the_job_with_the_launch_environment_and_are_joined(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, "ok", str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.splitlines())
    assert lines[0] == "joined [0, 0]"
    port = lines[1].rsplit(":", 1)[1]
    assert lines[1:] == [f"rank 1 of 3 at 127.0.0.1:{port}", f"rank 2 of 3 at 127.0.0.1:{port}"]


def test_a_failing_rank_stops_the_job_instead_of_leaving_it_waiting(tmp_path):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SCRIPT, "rank_fails", str(tmp_path)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == -15, (done.returncode, done.stderr)   # SIGTERM from the watcher, not the 60 s sleep
    assert time.monotonic() - started < 30
    assert "ValueError: rank 1 failed" in done.stderr and "ValueError: rank 2 failed" in done.stderr
