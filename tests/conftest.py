"""Shared fixtures: a tokenizer trained locally and tiny random-initialised component specs."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from lmm.data.tokenizer_build import train_bpe_tokenizer

CORPUS = [
    "what color is the shape? blue", "what shape is in the image? a red circle", "is there a triangle? yes no",
    "USER: ASSISTANT: describe the picture in detail", "[INST] <<SYS>> <</SYS>> [/INST]", "A green rectangle.",
]


CONF = str(Path(__file__).resolve().parents[1] / "conf")
EXTRAS = os.environ.get("LMM_TEST_EXTRAS") == "1"  # set by `make test-lmms-eval`


def pytest_configure(config):
    """In a parallel run (`pytest -n N`), each worker gets its share of the cores: torch's default of
    one thread per core in every worker would put N x cores busy threads on the cores, and small
    matrix products slow down badly when threads outnumber cores. Processes the tests start inherit it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """The longest tests first, so that a parallel run starts them at once and ends with short ones
    that fill the gaps: `slow` before the rest, and among those the ones given a longer timeout."""
    def cost(item):
        timeout = item.get_closest_marker("timeout")
        return (item.get_closest_marker("slow") is None, -(timeout.args[0] if timeout and timeout.args else 0))

    items.sort(key=cost)  # stable: tests of equal cost keep their file order


_SUMMARIES: list[str] = []


def pytest_runtest_logreport(report):
    """A test's `record_property("summary", text)`, kept for the end of the run (with pytest-xdist,
    the report comes from the worker to this process)."""
    if report.when == "call":
        _SUMMARIES.extend(value for key, value in report.user_properties if key == "summary")


def pytest_terminal_summary(terminalreporter):
    for text in _SUMMARIES:
        terminalreporter.section("summary of a run inside a test", sep="-")
        terminalreporter.write_line(text)


def needs(module: str):
    """pytest.importorskip, except in the [lmms-eval] extra's environment (`make test-lmms-eval`), where
    a missing module fails the test: that step exists to run these tests."""
    return importlib.import_module(module) if EXTRAS else pytest.importorskip(module)


def compose_config(name: str, overrides, runs_dir=None):
    """Compose conf/<name>.yaml as `python -m lmm.train` would: the `hydra:` resolvers (run.choices)
    work, and the run folder is <runs_dir>/<run.path> as under Hydra's own launch."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    extra = [f"paths.runs_dir={runs_dir}", "paths.output_dir=${paths.runs_dir}/${run.path}"] if runs_dir else []
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose(name, overrides=[*extra, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder every worker of this run sees (`pytest -n N` runs N worker processes, each with a
    temporary folder of its own under one shared by the run); outside a parallel run, a new one."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return tmp_path_factory.mktemp(name)
    root = tmp_path_factory.getbasetemp().parent / name
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """The easy-vqa demo data (LLaVA files, images, tokenizer), built once per run: the first worker
    to get here builds it under a lock, the others wait and use it."""
    from lmm.data.easyvqa import prepare

    root = shared_dir(tmp_path_factory, "data")
    with FileLock(str(root) + ".lock"):
        prepare(root / "easyvqa")  # returns at once when the folder is already built
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer(CORPUS * 20, path, vocab_size=300)
    return str(path)


def vision_spec(kind: str = "siglip", image_size: int = 32, patch_size: int = 8, layers: int = 3, **kw) -> dict:
    return {
        "_target_": "lmm.model.vision.HFVisionEncoder",
        "hf_config": {"model_type": f"{kind}_vision_model", "image_size": image_size, "patch_size": patch_size,
                      "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers,
                      "num_attention_heads": 2},
        **kw,
    }


def llm_spec(tokenizer_dir: str, template: str = "vicuna", **hf) -> dict:
    return {
        "_target_": "lmm.model.llm.LanguageModel",
        "tokenizer": tokenizer_dir,
        "template": {"_target_": f"lmm.data.templates.{template}"},
        "hf_config": {"model_type": "llama", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, **hf},
    }


MLP2X_GELU = {"_target_": "lmm.model.connector.MLPConnector", "depth": 2, "act": "gelu"}


@pytest.fixture
def tiny_specs(tokenizer_dir) -> dict:
    return {"vision": vision_spec(), "connector": dict(MLP2X_GELU), "llm": llm_spec(tokenizer_dir)}


@pytest.fixture
def tiny_lmm(tiny_specs):
    from lmm.model.lmm import LMM

    torch.manual_seed(0)
    return LMM(**tiny_specs).eval()


@pytest.fixture(scope="session")
def family_tokenizer(tmp_path_factory):
    """`family_tokenizer("llama")`: a local tokenizer that behaves like that LLM family's (built once
    per session; see tests/tokenizer_families.py). Pad and length settings as LLaVA's training sets them."""
    from tests.tokenizer_families import build

    built = {}

    def get(family: str):
        if family not in built:
            tok = build(family, tmp_path_factory.mktemp(f"tokenizer_{family}"))
            tok.pad_token = tok.pad_token or tok.unk_token or tok.eos_token  # LLaVA: pad = unk (Llama)
            tok.model_max_length = 1 << 20
            tok.legacy = family == "llama"  # what LLaVA's and TinyLLaVA's arithmetic asks of Llama tokenizers
            built[family] = tok
        return built[family]

    return get
