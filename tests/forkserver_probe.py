"""Run by tests/test_forkserver.py as `python -m tests.forkserver_probe <exit code | sleep>` from
lmm.train.forkserver: prints what a run should see, then exits with the code or sleeps (with a
child of its own, which a kill of the run must end too)."""
import os
import sys
import time

print(f"argv={sys.argv[1:]} name={__name__} cwd={os.getcwd()} X={os.environ.get('X')} "
      f"own_group={os.getpgid(0) == os.getpid()} preloaded={'lmm.train.launch' in sys.modules}")
if sys.argv[1] == "sleep":
    child = os.fork()
    if child == 0:
        time.sleep(120)
        os._exit(0)
    print(f"child={child}", flush=True)
    time.sleep(120)
sys.exit(int(sys.argv[1]))
