"""lmm.train.forkserver: runs forked from a process that imported the training stack once behave
as `python -m` runs of their own (the kill drills, tests/test_kill_drill.py, run on it)."""
import os
import time
from pathlib import Path

from lmm.train.forkserver import Preimported

ROOT = Path(__file__).resolve().parents[1]


def test_a_run_gets_its_arguments_folder_environment_log_and_exit_status(tmp_path):
    server = Preimported(["lmm.train.launch"])  # the server of this process if one is up: it preloads more
    log = tmp_path / "run.log"
    run = server.start("tests.forkserver_probe", ["3", "--flag"], {**os.environ, "X": "run one"}, log, cwd=ROOT)
    assert run.wait(60) == 3
    again = server.start("tests.forkserver_probe", ["0"], {**os.environ, "X": "run two"}, log, cwd=tmp_path)
    assert again.wait(60) == 0
    first, second = log.read_text().splitlines()
    assert first == f"argv=['3', '--flag'] name=__main__ cwd={ROOT} X=run one own_group=True preloaded=True"
    assert second == f"argv=['0'] name=__main__ cwd={tmp_path} X=run two own_group=True preloaded=True"


def test_a_kill_ends_the_run_and_everything_it_started(tmp_path):
    server = Preimported(["lmm.train.launch"])
    log = tmp_path / "run.log"
    run = server.start("tests.forkserver_probe", ["sleep"], dict(os.environ), log, cwd=ROOT)
    deadline = time.monotonic() + 30
    while "child=" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(log.read_text().split("child=")[1].split()[0])
    assert run.wait(0.5) is None  # still sleeping
    run.kill()
    assert run.wait(30) == -9
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the run's child {child} outlived the kill")
