"""The tests that need the [lmms-eval] extra's environment (tests/lmms_eval_env.txt), run in
.venv-lmms-eval as one test of the main suite: in a parallel run they take a worker's turn beside
the other tests instead of waiting for the whole suite. `make test-lmms-eval` runs them alone."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-lmms-eval" / "bin" / "python"


def extra_tests() -> list[str]:
    lines = (ROOT / "tests" / "lmms_eval_env.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_lmms_eval_environment_passes_its_tests(tmp_path, record_property):
    if not PYTHON.is_file():
        if os.environ.get("LMM_TEST_EXTRAS_ENV") == "1":  # set by make test: the environment must be there
            pytest.fail(f"{PYTHON} is missing: make setup-lmms-eval creates it")
        pytest.skip("no .venv-lmms-eval (make setup-lmms-eval creates it; make test runs these tests in it)")
    # a run of its own: not a worker of this one
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LMM_TEST_"))}
    env["LMM_TEST_EXTRAS"] = "1"
    cmd = [str(PYTHON), "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "--durations=15", "-q",
           f"--basetemp={tmp_path}", *extra_tests()]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1100, check=False)
    tail = done.stdout[done.stdout.rfind("slowest"):] if "slowest" in done.stdout else done.stdout[-3000:]
    record_property("summary", f"{PYTHON.parent.parent.name}: {' '.join(cmd[5:9])} ...\n{tail.strip()}")
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout.splitlines()[-1], done.stdout[-3000:]
