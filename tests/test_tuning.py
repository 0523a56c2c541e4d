"""Tune modes: frozen / full / partial / lora, the share recipe's freezing, LoRA merge and export."""
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import lmm
from lmm.model.checkpoint import load_weights
from lmm.model.lmm import LMM
from lmm.train.module import LMMTrainModule
from lmm.train.tuning import apply_tuning, has_lora, merge_lora
from tests.conftest import CONF, MLP2X_GELU, llm_spec, vision_spec


def trainable_names(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_share_recipe_freezes_exactly_vision_blocks_0_to_11_of_a_24_block_tower(tokenizer_dir):
    share = OmegaConf.load(f"{CONF}/recipe/share.yaml").stages.pretrain.tune
    model = LMM(vision_spec(layers=24, feature_layer=-1), dict(MLP2X_GELU), llm_spec(tokenizer_dir))
    counts = apply_tuning(model, OmegaConf.to_container(share))
    blocks = model.vision.layers
    assert len(blocks) == 24
    for i, block in enumerate(blocks):
        assert all(p.requires_grad == (i >= 12) for p in block.parameters()), i
    outside = [n for n in trainable_names(model.vision) if ".layers." not in n]
    assert outside == []  # patch and position embeddings stay frozen
    assert counts["vision"] == sum(p.numel() for b in list(blocks)[12:] for p in b.parameters())
    assert all(p.requires_grad for p in model.llm.parameters()) and all(p.requires_grad for p in model.connector.parameters())


def test_partial_llm_trains_later_layers_norm_and_head(tokenizer_dir):
    model = LMM(vision_spec(), dict(MLP2X_GELU), llm_spec(tokenizer_dir, num_hidden_layers=3, tie_word_embeddings=False))
    apply_tuning(model, {"connector": "full", "llm": {"mode": "partial", "frozen_layers": 2}})
    names = trainable_names(model.llm)
    assert names and all(".layers.2." in n or n.endswith(("norm.weight", "lm_head.weight")) for n in names)
    assert "model.lm_head.weight" in names and "model.model.norm.weight" in names
    assert not any("embed_tokens" in n or ".layers.0." in n or ".layers.1." in n for n in names)


@pytest.mark.parametrize("tune, message", [
    ({"llm": "half"}, "unknown tune mode 'half' for llm; valid"),
    ({"llm": {"mode": "partial"}}, "needs frozen_layers"),
    ({"llm": {"mode": "partial", "frozen_layers": 9}}, "out of 0..2"),
    ({"llm": {"mode": "lora", "rank": 4}}, r"unknown option\(s\) \['rank'\]"),
    ({"connector": {"mode": "partial", "frozen_layers": 1}}, "has none"),
    ({"encoder": "full"}, r"unknown module\(s\) \['encoder'\]"),
    ({}, "trains nothing"),
])
def test_bad_tune_specs_say_what_is_valid(tiny_lmm, tune, message):
    with pytest.raises(ValueError, match=message):
        apply_tuning(tiny_lmm, tune)


def test_lora_trains_only_adapters_and_merges_to_the_same_function(tiny_lmm):
    torch.manual_seed(0)
    apply_tuning(tiny_lmm, {"connector": "full", "llm": {"mode": "lora", "r": 4, "alpha": 8, "dropout": 0.0}})
    lora = trainable_names(tiny_lmm.llm)
    assert lora and all("lora_" in n for n in lora)
    assert not any("lm_head" in n for n in lora)  # the LM head is not a LoRA target
    ids = torch.randint(5, 200, (2, 12))
    pixels = torch.randn(2, 3, 32, 32)
    ids[:, 1] = -200  # one image per sample
    before = {k: v.clone() for k, v in tiny_lmm.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in tiny_lmm.parameters() if p.requires_grad], lr=0.5)
    tiny_lmm.train()
    tiny_lmm(ids, pixels, labels=ids.clamp(min=0)).loss.backward()
    optimizer.step()
    after = tiny_lmm.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k or k.startswith("connector.") for k in changed)
    assert any("lora_B" in k for k in changed)  # B starts at zero: a changed B makes the adapter matter
    tiny_lmm.eval()
    adapted = tiny_lmm(ids, pixels).logits
    merge_lora(tiny_lmm)
    assert not has_lora(tiny_lmm) and not any("base_layer" in k for k in tiny_lmm.state_dict())
    torch.testing.assert_close(tiny_lmm(ids, pixels).logits, adapted, atol=1e-5, rtol=1e-5)


def test_lora_model_loads_a_plain_checkpoint_and_a_module_subset(tiny_specs, tmp_path):
    source = LMM(**tiny_specs)
    source.save_pretrained(tmp_path / "ckpt")
    target = LMM(**tiny_specs)
    apply_tuning(target, {"llm": {"mode": "lora", "r": 2}})
    load_weights(target, tmp_path / "ckpt")
    q = "llm.model.model.layers.0.self_attn.q_proj"
    assert torch.equal(target.state_dict()[f"{q}.base_layer.weight"], source.state_dict()[f"{q}.weight"])
    other = LMM(**tiny_specs)
    load_weights(other, tmp_path / "ckpt", modules=["connector"])
    assert all(torch.equal(v, source.connector.state_dict()[k]) for k, v in other.connector.state_dict().items())
    assert not torch.equal(other.llm.model.lm_head.weight, source.llm.model.lm_head.weight)


def test_lora_stage_exports_a_merged_plain_checkpoint(tiny_specs, tmp_path, data_dir):
    from lmm.data.datamodule import LlavaDataModule
    from lmm.train.run import export

    tune = {"connector": "full", "llm": {"mode": "lora", "r": 4, "dropout": 0.0}}
    module = LMMTrainModule(tiny_specs, tune, {"lr": 1e-2})
    root = data_dir / "easyvqa"
    dm = LlavaDataModule([str(root / "sft.json")], str(root), micro_batch_size=4).attach(module.model, module.model.template)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    module.model.eval()
    batch = next(iter(dm.train_dataloader()))
    adapted = module.model(batch["input_ids"], batch["pixel_values"], batch["attention_mask"]).logits
    export(module, trainer, tmp_path / "exported")
    keys = set(load_file(tmp_path / "exported/model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in keys)
    reloaded = lmm.load(tmp_path / "exported")
    torch.testing.assert_close(reloaded(batch["input_ids"], batch["pixel_values"], batch["attention_mask"]).logits,
                               adapted, atol=1e-5, rtol=1e-5)
