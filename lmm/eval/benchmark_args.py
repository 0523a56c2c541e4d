"""`benchmark=[...]` on a command line, checked before Hydra composes. This module imports nothing
heavy: the entry points call it before torch and the model stack load, so a typo fails at once."""
from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def check_benchmark_choices(argv: list[str]) -> None:
    """Hydra's error for an unknown option of a list-valued group does not list the valid ones:
    check `benchmark=[...]` arguments before Hydra composes, and name the choices."""
    valid = sorted(p.stem for p in (CONF_DIR / "benchmark").glob("*.yaml"))
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+~") != "benchmark" or not value:
            continue
        names = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        unknown = [n for n in names if n not in valid]
        if unknown:
            raise SystemExit(f"unknown benchmark {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
