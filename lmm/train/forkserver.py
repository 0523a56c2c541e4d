"""Run `python -m <module> ...` many times without paying the imports each time.

A job that starts the training command again and again (the kill drills restart it after every
fault) spends most of its time importing torch, Lightning, transformers and lmm: 10-15 s of CPU per
process on a 2-core machine, against a few seconds of training. `Preimported` starts Python's
multiprocessing fork server once, with the training stack imported in it, and forks each run from
that clean, single-threaded process. Each run is still a process of its own: its own process group
(a kill takes every rank it forked), its own working folder, environment, command line and log, and
its exit status; only the imports are inherited, as if the interpreter had just done them.

Environment variables that libraries read while they are imported are the server's: it is started
with the first run's environment. Thread counts are set at run time (`threads=`), not through
OMP_NUM_THREADS, for that reason.
"""
from __future__ import annotations

import multiprocessing
import os
import runpy
import signal
import sys
from pathlib import Path

PRELOAD = ["lmm.train.run", "lmm.train.launch", "lmm.eval.cli", "lmm.eval.run", "lmm.eval.report"]


def _run(module: str, args: list[str], env: dict, cwd: str, log: str, ready) -> None:
    """In the forked process: become a process group of its own, take the run's environment,
    folder and log, then run the module as `python -m` would."""
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    ready.send(os.getpid())  # its process group and its log exist
    ready.close()
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the run's stdout; line-buffered: a kill loses no whole line
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _ready() -> None:
    """A run that does nothing: the first one waits until the server has imported `preload`."""


class Run:
    """One started run: `wait(timeout)` -> exit status (negative: the signal that ended it) or None;
    `kill()` SIGKILLs its whole process group."""

    def __init__(self, process) -> None:
        self.process = process
        self.pid = process.pid

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Preimported:
    """Starts `python -m <module> args` runs from a fork server that imported `preload` once."""

    def __init__(self, preload: list[str] = PRELOAD) -> None:
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(list(preload))  # when this process has no fork server yet
        first = self.context.Process(target=_ready)
        first.start()
        first.join()  # the server has done its imports: the runs' times are their own

    def start(self, module: str, args: list[str], env: dict, log: Path, cwd: Path | None = None) -> Run:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_run, args=(module, list(args), dict(env), str(cwd or Path.cwd()),
                                                            str(log), send), daemon=False)
        process.start()
        send.close()
        try:
            receive.recv()  # from now on a kill reaches every process of the run, and its log exists
        except EOFError:
            pass  # it died before: wait() tells how
        receive.close()
        return Run(process)
