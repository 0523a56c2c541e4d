"""LLaVA-1.5's own code (PyPI `llava-torch==1.2.2.post1`, installed with --no-deps), for reference checks.

`llava.conversation` and `llava.mm_utils` import as they are. `llava/train/train.py` does not: at
import it pulls in its Trainer subclass, which needs names transformers 5 no longer has. The
functions we check (`preprocess_multimodal`, `preprocess_v1`, `preprocess_plain`, ...) are compiled
from that file's own source, one by one, with the module globals they use: their code, unchanged.
"""
from __future__ import annotations

import ast
import copy
import importlib.util
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

llava = pytest.importorskip("llava", reason="llava-torch (LLaVA-1.5's code) is not installed")

import tokenizers
import torch
import transformers
from llava import constants, conversation
from llava.mm_utils import expand2square, tokenizer_image_token  # noqa: F401
from packaging import version

TRAIN_FUNCTIONS = ("preprocess_multimodal", "preprocess_v1", "preprocess_plain", "preprocess_llama_2", "preprocess")


def _train_functions() -> SimpleNamespace:
    path = Path(importlib.util.find_spec("llava").submodule_search_locations[0]) / "train" / "train.py"
    tree = ast.parse(path.read_text())
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in TRAIN_FUNCTIONS]
    missing = set(TRAIN_FUNCTIONS) - {node.name for node in body}
    assert not missing, f"{path} no longer defines {missing}"
    namespace = {
        "copy": copy, "torch": torch, "transformers": transformers, "tokenizers": tokenizers, "Dict": dict,
        "Sequence": Sequence, "DataArguments": object, "conversation_lib": conversation,
        "tokenizer_image_token": tokenizer_image_token,
        "IS_TOKENIZER_GREATER_THAN_0_14": version.parse(tokenizers.__version__) >= version.parse("0.14"),
        **{k: getattr(constants, k) for k in dir(constants) if k.isupper()},
    }
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102 (their code)
    return SimpleNamespace(**{name: namespace[name] for name in TRAIN_FUNCTIONS})


train = _train_functions()
DATA_ARGS = SimpleNamespace(is_multimodal=True, mm_use_im_start_end=False)


@contextmanager
def default_conversation(conv):
    """LLaVA picks its template through a module global (train.py sets it from --version)."""
    previous = conversation.default_conversation
    conversation.default_conversation = conv
    try:
        yield conv
    finally:
        conversation.default_conversation = previous


def vicuna_v1(eos: str = "</s>", system: str | None = None):
    """LLaVA-1.5's `vicuna_v1` conversation; `eos` as the family's end token (TinyLLaVA_Factory's phi,
    stablelm, qwen2 and gemma templates are this format with their tokenizer's EOS)."""
    conv = conversation.conv_templates["vicuna_v1"].copy()
    conv.sep2 = eos
    if system is not None:
        conv.system = system
    return conv


def prompt(conv, turns: list[dict]) -> str:
    """`get_prompt` of a LLaVA conversation holding these turns (as preprocess_v1 fills it)."""
    conv = conv.copy()
    conv.messages = []
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    for turn in turns:
        conv.append_message(roles[turn["from"]], turn["value"])
    return conv.get_prompt()


def preprocess(record: dict, tokenizer, conv) -> dict:
    """What LLaVA-1.5's LazySupervisedDataset makes of a record's text: `preprocess_multimodal` when the
    record has an image, then `preprocess` under `conv`. Returns input_ids, labels and whether its own
    "tokenization mismatch" check passed (on a mismatch it masks every label)."""
    has_image = "image" in record
    sources = [copy.deepcopy(record["conversations"])]
    if has_image:
        sources = train.preprocess_multimodal(sources, DATA_ARGS)
    with default_conversation(conv):
        out = train.preprocess(sources, tokenizer, has_image=has_image)
    ids, labels = out["input_ids"][0], out["labels"][0]
    return {"input_ids": ids.tolist(), "labels": labels.tolist(), "ok": bool((labels != constants.IGNORE_INDEX).any())}
