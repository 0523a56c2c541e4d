"""lmms-eval 0.7.3's task utilities (PyPI `lmms-eval==0.7.3`, installed with --no-deps), for reference checks.

`lmms_eval/tasks/__init__.py` builds the task registry and pulls in datasets, accelerate and the model
zoo, none of which the per-task `utils.py` files need. So `lmms_eval.tasks` is registered here as a bare
package (its folder, without running its `__init__`), and each task's `utils.py` then imports as it is.
`exact_match_hf_evaluate`, the metric GQA is scored with, lives in `lmms_eval/api/metrics.py` beside a
metric registry, and GQA's `gqa_doc_to_text` beside a loader that needs `datasets`: those functions are
compiled from their files' own source, one by one.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import string
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("loguru", reason="lmms-eval's task utilities log through loguru")
spec = importlib.util.find_spec("lmms_eval")
if spec is None:
    pytest.skip("lmms-eval is not installed", allow_module_level=True)

ROOT = Path(spec.submodule_search_locations[0])
VERSION = "0.7.3"


def _bare_package(name: str, folder: Path) -> None:
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(folder)]
        sys.modules[name] = module


importlib.import_module("lmms_eval")   # its __init__ is empty
_bare_package("lmms_eval.tasks", ROOT / "tasks")

pope = importlib.import_module("lmms_eval.tasks.pope.utils")
mme = importlib.import_module("lmms_eval.tasks.mme.utils")
sqa = importlib.import_module("lmms_eval.tasks.scienceqa.utils")
textvqa = importlib.import_module("lmms_eval.tasks.textvqa.utils")
vqav2 = importlib.import_module("lmms_eval.tasks.vqav2.utils")
mmbench = importlib.import_module("lmms_eval.tasks.mmbench.en_utils")   # needs pandas
mcq = importlib.import_module("lmms_eval.tasks._task_utils.mcq_extract")


def _function(relative: str, name: str):
    path = ROOT / relative
    tree = ast.parse(path.read_text())
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    assert body, f"{path} no longer defines {name}"
    namespace = {"np": np, "re": re, "string": string}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102 (their code)
    return namespace[name]


exact_match_hf_evaluate = _function("api/metrics.py", "exact_match_hf_evaluate")
gqa_doc_to_text = _function("tasks/gqa/utils.py", "gqa_doc_to_text")


def task_yaml(task: str, file: str) -> str:
    """A task's yaml text (prompt suffixes, metric options), for tests that check what it configures."""
    return (ROOT / "tasks" / task / file).read_text()
