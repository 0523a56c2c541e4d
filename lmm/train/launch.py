"""Local ranks of a multi-process CPU job, forked from this process after its imports.

Lightning starts ranks 1..N-1 of a local job by running the command line again in new
interpreters, and each pays the whole import of torch, Lightning, transformers and lmm again
(10-15 s of CPU on a 2-core machine) while rank 0 waits for it at the rendezvous. For CPU jobs on
one node, `fork_ranks: true` forks them instead, once the config is composed and the training stack
is imported. Each forked rank then runs `train(cfg)` exactly as a Lightning-started one would: the
same environment variables (MASTER_ADDR, MASTER_PORT, NODE_RANK, LOCAL_RANK, WORLD_SIZE) tell
Lightning that the processes exist already, and its log goes to `train_ddp_process_<rank>.log` in
the run folder, as under Lightning's launcher. GPU jobs keep Lightning's launcher (CUDA must not be
initialised before a fork, and a GPU job's import time is small beside its training).

As under Lightning's launcher, a rank that fails stops the job: its exit is watched, and the other
ranks and this process are terminated, rather than left waiting in a collective. A rank whose
parent dies is killed with it (Linux's parent-death signal).
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

log = logging.getLogger(__name__)

# What a rank launch (Lightning's or this module's) leaves in the launching process's environment.
LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_PR_SET_PDEATHSIG = 1
TERM_GRACE_S = 60   # after a rank failed: how long rank 0 has to stop on SIGTERM before it is killed


def ranks_to_fork(devices, accelerator: str, num_nodes: int = 1, strategy="ddp", enabled: bool = True) -> int:
    """How many ranks this process should fork (0: leave the launch to Lightning). Only a CPU job on
    one node, with a device count above one, started by nobody else (no LOCAL_RANK), under a
    strategy that Lightning runs through its script launcher (auto, ddp, or a strategy config)."""
    if not enabled or sys.platform != "linux" or "LOCAL_RANK" in os.environ:
        return 0
    if accelerator != "cpu" or num_nodes != 1:
        return 0
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices < 2:
        return 0
    if isinstance(strategy, str) and strategy not in ("auto", "ddp"):
        return 0  # ddp_spawn, ddp_fork, ddp_notebook...: Lightning's own process start
    if threading.active_count() > 1:  # forking beside running threads can copy a held lock
        log.warning("fork_ranks: %d threads are running; leaving the rank launch to Lightning",
                    threading.active_count())
        return 0
    return devices - 1


def fork_count(cfg) -> int:
    """`ranks_to_fork` for a training config (conf/train.yaml: trainer, strategy, fork_ranks)."""
    trainer = cfg.trainer
    return ranks_to_fork(trainer.get("devices"), trainer.get("accelerator"), trainer.get("num_nodes", 1),
                         cfg.strategy.lightning, bool(cfg.get("fork_ranks")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRanks:
    """Ranks 1..N-1 forked from this process; `wait()` joins them. The forked processes never
    return from `start`: they run `job()` and exit with its status."""

    def __init__(self) -> None:
        self.pids: dict[int, int] = {}          # rank -> pid
        self.status: dict[int, int] = {}        # rank -> exit code (negative: killed by that signal)
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, n_forked: int, job) -> None:
        world = n_forked + 1
        os.environ.update({"MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
                           "MASTER_PORT": os.environ.get("MASTER_PORT", str(_free_port())),
                           "NODE_RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": str(world)})
        sys.stdout.flush()
        sys.stderr.flush()
        for rank in range(1, world):
            pid = os.fork()
            if pid == 0:
                _run_rank(rank, job)  # never returns
            self.pids[rank] = pid
        self._watcher = threading.Thread(target=self._watch, name="local-rank-watcher", daemon=True)
        self._watcher.start()

    def _reap(self, rank: int, flags: int) -> bool:
        pid, status = os.waitpid(self.pids[rank], flags)
        if pid == 0:
            return False
        self.status[rank] = os.waitstatus_to_exitcode(status)
        return True

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            for rank in [r for r in self.pids if r not in self.status]:
                if self._reap(rank, os.WNOHANG) and self.status[rank] != 0:
                    log.error("rank %d exited with %d; stopping the job", rank, self.status[rank])
                    self.terminate()
                    os.kill(os.getpid(), signal.SIGTERM)  # rank 0 may be waiting in a collective
                    if not self._done.wait(TERM_GRACE_S):  # a collective does not return to Python to see it
                        os.kill(os.getpid(), signal.SIGKILL)
                    return

    def terminate(self) -> None:
        for rank, pid in self.pids.items():
            if rank not in self.status:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def wait(self) -> None:
        """Joins every forked rank; raises if one failed."""
        self._done.set()
        if self._watcher is not None:
            self._watcher.join()
        for rank in self.pids:
            if rank not in self.status:
                self._reap(rank, 0)
        failed = {r: s for r, s in self.status.items() if s != 0}
        if failed:
            raise RuntimeError(f"local rank(s) failed with exit status {failed}; their logs: "
                               "train_ddp_process_<rank>.log in the run folder")


def _run_rank(rank: int, job) -> None:
    code = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # die with the job's first process
        if os.getppid() == 1:  # it died before the line above
            os._exit(1)
        os.environ["LOCAL_RANK"] = str(rank)
        # Lightning read the rank from the environment when it was imported, before this fork
        from lightning_utilities.core.rank_zero import rank_zero_only
        rank_zero_only.rank = rank
        _log_to(f"train_ddp_process_{rank}.log")
        job()
        code = 0
    except BaseException:  # noqa: BLE001 - reported, then the process's exit status says it failed
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)


def _log_to(name: str) -> None:
    """The job's log files, renamed for this rank in their folders (Lightning's launcher names a
    started rank's Hydra job `train_ddp_process_<rank>`, and Hydra names its log after the job)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
            new = logging.FileHandler(Path(handler.baseFilename).with_name(name), mode=handler.mode,
                                      encoding=handler.encoding)
            new.setLevel(handler.level)
            new.setFormatter(handler.formatter)
            for f in handler.filters:
                new.addFilter(f)
            root.addHandler(new)


def run_on_local_ranks(job, n_forked: int):
    """`job()` here as rank 0 and in `n_forked` forked ranks (none: here only, Lightning launches
    the rest if the job asks for more devices). Returns rank 0's result."""
    if not n_forked:
        return job()
    ranks = LocalRanks()
    started = time.perf_counter()
    ranks.start(n_forked, job)
    log.info("forked local ranks 1-%d (pids %s) in %.2f s", n_forked, list(ranks.pids.values()),
             time.perf_counter() - started)
    try:
        out = job()
    except BaseException:
        ranks.terminate()
        raise
    ranks.wait()
    return out


def run_job(cfg, train) -> dict:
    """`train(cfg)` on every local rank of a training config: ranks 1.. forked here when
    `fork_count` allows, else left to Lightning."""
    return run_on_local_ranks(lambda: train(cfg), fork_count(cfg))
