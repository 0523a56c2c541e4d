"""The paper's full-size configs with local weights: every LLM and HF tower config builds from a
folder (as a researcher's downloaded checkpoints), and the paper experiments run end to end.

No download is possible here, so the folders hold tiny random models of the same families, saved
in the standard transformers layout; the configs find them through their environment variables.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModel

from lmm.model.hf import hf_config_from_dict
from lmm.model.llm import LanguageModel
from lmm.model.spec import build
from lmm.train.module import LMMTrainModule
from lmm.train.run import model_spec, train
from tests.conftest import CONF, compose_config

LLMS = {  # paper config -> (its env var, the tiny config of the same family)
    "tinyllama_1_1b": ("LMM_TINYLLAMA", "tiny_llama"),
    "stablelm2_1_6b": ("LMM_STABLELM2_1_6B", "tiny_stablelm"),
    "phi2": ("LMM_PHI2", "tiny_phi"),
    "qwen2_0_5b": ("LMM_QWEN2_0_5B", "tiny_qwen2"),
    "gemma_2b": ("LMM_GEMMA_2B", "tiny_gemma"),
}
TOWERS = {"clip_l14_336": ("LMM_CLIP_L14_336", "tiny_clip"), "siglip_so400m_384": ("LMM_SIGLIP_SO400M_384", "tiny_siglip")}


@pytest.fixture(scope="module")
def local_weights(data_dir, tmp_path_factory) -> dict[str, str]:
    """{env var: folder} for every paper LLM and HF tower, each a tiny model of its family."""
    root, env = tmp_path_factory.mktemp("weights"), {}
    tokenizer = str(data_dir / "easyvqa/tokenizer")
    for name, (var, tiny) in LLMS.items():
        spec = OmegaConf.to_container(OmegaConf.load(f"{CONF}/llm/{tiny}.yaml"))
        llm = LanguageModel(tokenizer=tokenizer, template=spec["template"], hf_config=spec["hf_config"])
        llm.model.save_pretrained(root / name)
        llm.tokenizer.save_pretrained(root / name)
        env[var] = str(root / name)
    for name, (var, tiny) in TOWERS.items():
        spec = OmegaConf.to_container(OmegaConf.load(f"{CONF}/vision/{tiny}.yaml"))
        AutoModel.from_config(hf_config_from_dict(spec["hf_config"])).save_pretrained(root / name)
        env[var] = str(root / name)
    return env


@pytest.fixture
def with_local_weights(local_weights, monkeypatch):
    for var, path in local_weights.items():
        monkeypatch.setenv(var, path)
    return local_weights


@pytest.mark.parametrize("llm", sorted(LLMS))
@pytest.mark.parametrize("vision", sorted(TOWERS))
def test_paper_configs_build_from_local_folders_and_train_a_step(llm, vision, with_local_weights, data_dir, tmp_path):
    cfg = compose_config("train", runs_dir=tmp_path, overrides=[f"paths.data_dir={data_dir}", f"llm={llm}",
                                                                f"vision={vision}", "recipe=base",
                                                                "connector=mlp2x_gelu"])  # the paper's connector
    assert cfg.llm.pretrained == with_local_weights[LLMS[llm][0]]
    stage = cfg.recipe.stages.sft
    module = LMMTrainModule(model_spec(cfg), stage.tune, stage.optim)
    model = module.model
    assert model.llm.decoder_layer_class.__name__ == cfg.llm.decoder_layer
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(m.training for m in model.modules())  # from_pretrained's eval mode would switch dropout off
    assert module.trainable["vision"] == 0 and module.trainable["llm"] > 0
    template = build(cfg.llm.template)
    assert model.template == template  # the family's template, from the LLM config
    ids = model.prompt_ids("<image>\nwhat shape is this?")[None]
    out = model(ids, torch.randn(1, 3, model.vision.transform.image_size, model.vision.transform.image_size), labels=ids.clamp(min=0))
    out.loss.backward()
    assert model.connector[0].weight.grad is not None and model.vision.layers[0].mlp.fc1.weight.grad is None


def test_paper_experiments_base_then_share_run_on_cpu_stand_ins(with_local_weights, data_dir, tmp_path):
    tiny = [f"paths.data_dir={data_dir}", "data=easyvqa", "trainer=cpu", "strategy=auto", "logger=csv",
            "data.loader.micro_batch_size=4", "recipe.stages.pretrain.global_batch_size=8",
            "recipe.stages.sft.global_batch_size=8", "+trainer.limit_train_batches=4", "evaluation.limit=8",
            "+trainer.enable_progress_bar=false", "callbacks.samples.num_samples=1"]
    base = compose_config("train", runs_dir=tmp_path, overrides=["+experiment=TinyLLaVA-base-Sig-Phi", *tiny])
    out = train(base)
    # the experiment scores the paper's benchmarks; none of their files exist here: each is skipped and
    # reported (after training, a missing benchmark is not an error)
    skipped = out["results"]["skipped"]
    assert set(skipped) == {"vqav2", "gqa", "textvqa", "textvqa_no_ocr", "sqa_img", "pope", "mme", "mmbench",
                            "mmvet", "llavaw"}
    assert all(f"{name}: missing" in reason for name, reason in skipped.items())
    assert "| mme " in out["results"]["table"] and "skipped" in out["results"]["table"]
    # the share variant finds the base pretrain of the same cell (here on easyvqa, not llava15)
    share = compose_config("train", runs_dir=tmp_path, overrides=[
        "+experiment=TinyLLaVA-share-Sig-Phi", *tiny, "recipe.base_data=easyvqa",
        "recipe.stages.pretrain.tune.vision.frozen_layers=1"])  # the stand-in tower keeps 1 block, not 26
    train(share)
    runs = tmp_path / "easyvqa/siglip_so400m_384__mlp2x_gelu__phi2__seed0"
    info = json.loads((runs / "share/run.json").read_text())
    assert info["experiment"] == "TinyLLaVA-share-Sig-Phi" and info["choices"]["recipe"] == "share"
    from safetensors.torch import load_file

    base_pre = load_file(runs / "base/pretrain/checkpoint/model.safetensors")
    share_pre = load_file(runs / "share/pretrain/checkpoint/model.safetensors")
    # share pretrain trained the connector onward from base's, and trained the LLM (base kept it frozen)
    assert any(not torch.equal(base_pre[k], share_pre[k]) for k in base_pre if k.startswith("llm."))
    assert Path(runs / "share/sft/checkpoint/model.safetensors").is_file()
