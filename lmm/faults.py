"""Fault points for the reliability drills (experiments/reliability/kill_drill.py).

`LMM_FAULT=<point>:<n>` in a run's environment SIGKILLs the run's whole process group (every rank,
as a preemption would) the n-th time this process reaches `point`. Unset, `reached` is a dictionary
lookup and nothing else. The points sit where a kill does the most damage: inside a training step,
between writing a Lightning checkpoint and renaming it into place, between writing the exported
weights and their manifest, and just after an evaluation batch's answers were kept.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

POINTS = ("train_step", "lightning_checkpoint", "export", "eval_batch")
_counts: Counter = Counter()


def reached(point: str) -> None:
    spec = os.environ.get("LMM_FAULT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _counts[point] += 1
    if _counts[point] == int(n or 1):
        os.killpg(os.getpgid(0), signal.SIGKILL)
