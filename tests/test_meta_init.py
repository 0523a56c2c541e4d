"""Meta-device construction and one read of the weights (lmm.model.meta / lazy / weights).

The reference is the ordinary build: transformers' from_pretrained for pretrained folders, the
checkpoint loader for lmm checkpoints. A meta build must end with the same weights and the same
non-persistent buffers (rotary inv_freq, position ids: in no file), alone and under FSDP2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import lmm
from lmm.data.tokenize import IMAGE_TOKEN_ID
from lmm.model.lazy import build_on_meta
from lmm.model.lmm import LMM
from lmm.model.meta import meta_keys
from lmm.model.weights import load_plain
from lmm.train.tuning import apply_tuning, merge_lora, merged_lora_state
from tests.conftest import CONF, MLP2X_GELU
from tests.test_local_weights import LLMS, TOWERS, local_weights  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[1]


def pretrained_spec(folders: dict, llm: str, vision: str, tokenizer: str) -> dict:
    llm_cfg = OmegaConf.to_container(OmegaConf.load(f"{CONF}/llm/{LLMS[llm][1]}.yaml"))
    vision_cfg = OmegaConf.to_container(OmegaConf.load(f"{CONF}/vision/{TOWERS[vision][1]}.yaml"))
    llm_cfg.pop("hf_config"), vision_cfg.pop("hf_config")
    return {"vision": {**vision_cfg, "pretrained": folders[TOWERS[vision][0]]},
            "connector": dict(MLP2X_GELU),
            "llm": {**llm_cfg, "pretrained": folders[LLMS[llm][0]], "tokenizer": tokenizer}}


def probe(model):
    size = model.vision.transform.image_size
    return torch.tensor([[1, IMAGE_TOKEN_ID, 5, 6, 7, 8]]), torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def assert_same_model(a: LMM, b: LMM, skip: str = "connector."):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.startswith(skip):
            assert torch.equal(sa[key], sb[key]), key
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers()):
        assert torch.equal(x, y), name  # non-persistent buffers were computed, not left garbage


@pytest.mark.parametrize("llm", sorted(LLMS))
def test_meta_build_reads_pretrained_folders_like_from_pretrained(llm, local_weights, data_dir):  # noqa: F811
    spec = pretrained_spec(local_weights, llm, "siglip_so400m_384", str(data_dir / "easyvqa/tokenizer"))
    model, sources = build_on_meta(spec)
    assert set(meta_keys(model)) >= {k for k in model.state_dict() if k.startswith(("llm.", "vision."))} - {
        k for k, _ in model.named_buffers()}
    assert not any(p.is_meta for p in model.connector.parameters())  # random init: built for real
    load_plain(model, sources)
    assert not meta_keys(model)
    reference = LMM(**spec)  # transformers' from_pretrained for both components
    reference.connector.load_state_dict(model.connector.state_dict())
    assert_same_model(model, reference)
    ids, pixels = probe(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, pixels).logits, reference(ids, pixels).logits, rtol=0, atol=0)


def test_clip_tower_reads_its_pretrained_folder(local_weights, data_dir):  # noqa: F811
    spec = pretrained_spec(local_weights, "tinyllama_1_1b", "clip_l14_336", str(data_dir / "easyvqa/tokenizer"))
    model, sources = build_on_meta(spec)
    load_plain(model, sources)
    reference = LMM(**spec)
    assert_same_model(model, reference)


def test_lmm_load_builds_on_meta_with_no_random_init(tiny_lmm, tmp_path, monkeypatch):
    tiny_lmm.save_pretrained(tmp_path / "ckpt")
    calls = []
    real_normal, real_uniform = torch.Tensor.normal_, torch.Tensor.uniform_

    def counted(real):
        def init(self, *a, **k):
            if not self.is_meta:
                calls.append(tuple(self.shape))
            return real(self, *a, **k)
        return init
    monkeypatch.setattr(torch.Tensor, "normal_", counted(real_normal))
    monkeypatch.setattr(torch.Tensor, "uniform_", counted(real_uniform))
    loaded = lmm.load(tmp_path / "ckpt")
    assert calls == []  # no weight was random-initialised before being overwritten
    assert_same_model(loaded, tiny_lmm, skip="\0")


def test_a_checkpoint_that_misses_a_weight_is_an_error(tiny_lmm, tmp_path):
    from safetensors.torch import save_file

    from lmm.model.checkpoint import write_manifest

    path = tiny_lmm.save_pretrained(tmp_path / "ckpt")
    state = load_file(path / "model.safetensors")
    state.pop("connector.0.weight")
    save_file(state, str(path / "model.safetensors"))
    write_manifest(path)  # a finished folder whose weights do not fit
    with pytest.raises(ValueError, match="connector.0.weight"):
        lmm.load(path)


def test_lora_merge_of_a_gathered_state_equals_peft_merge(tiny_specs):
    torch.manual_seed(0)
    model = LMM(**tiny_specs)
    apply_tuning(model, {"llm": {"mode": "lora", "r": 4}, "connector": "full"})
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # B starts at zero: make the adapters matter
    merged = merged_lora_state(model, model.state_dict())
    reference = merge_lora(model).state_dict()
    assert merged.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(merged[key], reference[key], rtol=1e-6, atol=1e-6, msg=key)


def run_workers(spec: dict, out: Path):
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "tests/fsdp_meta_worker.py"), str(out / "spec.json"), str(out)],
                          cwd=out, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return load_file(out / "weights.safetensors"), [torch.load(out / f"logits{r}.pt") for r in (0, 1)]


@pytest.mark.slow
def test_fsdp2_meta_init_broadcasts_pretrained_and_checkpoint_weights(local_weights, data_dir, tmp_path):  # noqa: F811
    spec = pretrained_spec(local_weights, "phi2", "siglip_so400m_384", str(data_dir / "easyvqa/tokenizer"))
    tune = {"vision": "frozen", "connector": "full", "llm": {"mode": "lora", "r": 4}}
    # 1. pretrained folders (the pretrain stage): rank 0 reads, both ranks get its weights
    weights, (logits0, logits1) = run_workers({"model": spec, "tune": tune}, tmp_path / "pretrained")
    torch.manual_seed(0)
    reference = LMM(**spec)
    apply_tuning(reference, tune)
    plain = reference.state_dict()
    assert weights.keys() == plain.keys()
    for key in plain:
        if not key.startswith("connector.") and "lora_" not in key:
            assert torch.equal(weights[key], plain[key]), key
    torch.testing.assert_close(logits0, logits1, rtol=0, atol=0)  # rank 1 holds rank 0's connector and adapters
    reference.load_state_dict(weights)
    with torch.no_grad():
        torch.testing.assert_close(logits0, reference(*probe(reference)).logits, rtol=1e-5, atol=1e-5)
    # 2. an init checkpoint (the SFT stage): read from there, the pretrained files not at all
    reference = LMM(**spec)
    torch.manual_seed(1)
    for p in reference.parameters():
        p.data.normal_()  # unlike any pretrained file
    ckpt = reference.save_pretrained(tmp_path / "ckpt")
    weights, (logits0, _) = run_workers({"model": spec, "tune": {"vision": "frozen", "connector": "full", "llm": "full"},
                                         "init": {"checkpoint": str(ckpt)}}, tmp_path / "checkpoint")
    plain = reference.state_dict()
    assert weights.keys() == plain.keys() and all(torch.equal(weights[k], plain[k]) for k in plain)
    with torch.no_grad():
        torch.testing.assert_close(logits0, reference(*probe(reference)).logits, rtol=1e-5, atol=1e-5)
