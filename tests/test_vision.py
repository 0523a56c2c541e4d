"""The vision encoder's features equal the full HF tower's selected hidden state."""
import pytest
import torch
from transformers import AutoModel

from lmm.model.hf import hf_config_from_dict
from lmm.model.vision import HFVisionEncoder
from tests.conftest import vision_spec


def full_tower(spec):
    torch.manual_seed(0)
    return AutoModel.from_config(hf_config_from_dict(spec["hf_config"])).eval()


@pytest.mark.parametrize("kind,layer", [("clip", -2), ("siglip", -2), ("siglip", -1), ("clip", 1)])
def test_features_match_hf_hidden_states(kind, layer):
    spec = vision_spec(kind, layers=3)
    hf = full_tower(spec)
    torch.manual_seed(0)
    enc = HFVisionEncoder(hf_config=spec["hf_config"], feature_layer=layer).eval()
    enc.tower.load_state_dict(hf.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    expected = hf(pixel_values=x, output_hidden_states=True).hidden_states[layer]
    if kind == "clip":
        expected = expected[:, 1:]  # the CLS token is dropped
    assert torch.allclose(enc(x), expected, atol=1e-6)


def test_siglip_keeps_every_patch_and_clip_drops_cls():
    siglip = HFVisionEncoder(**{k: v for k, v in vision_spec("siglip").items() if k != "_target_"})
    clip = HFVisionEncoder(**{k: v for k, v in vision_spec("clip").items() if k != "_target_"})
    x = torch.randn(1, 3, 32, 32)
    assert not siglip.has_cls and siglip.num_tokens == 16 and siglip(x).shape == (1, 16, 32)
    assert clip.has_cls and clip.num_tokens == 16 and clip(x).shape == (1, 16, 32)
    clip_cls = HFVisionEncoder(hf_config=vision_spec("clip")["hf_config"], feature_select="cls_patch")
    assert clip_cls.num_tokens == 17 and clip_cls(x).shape == (1, 17, 32)


def test_layers_after_the_feature_layer_are_dropped():
    enc = HFVisionEncoder(hf_config=vision_spec("siglip", layers=4)["hf_config"], feature_layer=-2)
    assert len(enc.tower.encoder.layers) == 3
    assert not hasattr(enc.tower, "head")
    names = [n for n, _ in enc.named_parameters()]
    assert not any("post_layernorm" in n for n in names)


def test_bad_choices_are_clear_errors():
    cfg = vision_spec("siglip", layers=3)["hf_config"]
    with pytest.raises(ValueError, match="no CLS token"):
        HFVisionEncoder(hf_config=cfg, feature_select="cls_patch")
    with pytest.raises(ValueError, match="valid: 1..3"):
        HFVisionEncoder(hf_config=cfg, feature_layer=-5)
    with pytest.raises(ValueError, match="hidden_sizee"):
        HFVisionEncoder(hf_config={**cfg, "hidden_sizee": 8})
    with pytest.raises(ValueError, match="exactly one"):
        HFVisionEncoder()


def test_pretrained_from_a_full_clip_checkpoint_folder(tmp_path):
    """A CLIPModel folder (text + vision, as on the hub) loads its vision tower and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(vision_config=vision_spec("clip")["hf_config"],
                     text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "vocab_size": 50})
    full = CLIPModel(cfg).eval()
    full.save_pretrained(tmp_path)
    CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], size={"shortest_edge": 32},
                       crop_size=32).save_pretrained(tmp_path)
    enc = HFVisionEncoder(pretrained=str(tmp_path)).eval()
    assert enc.transform.mean == (0.1, 0.2, 0.3) and enc.transform.std == (0.4, 0.5, 0.6)
    x = torch.randn(1, 3, 32, 32)
    expected = full.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
    assert torch.allclose(enc(x), expected, atol=1e-6)
