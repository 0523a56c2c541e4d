"""timm and open_clip vision encoders: features equal the library's own output of the selected block
on the uncut tower, the cut leaves no unused parameter, and specs, checkpoints and Hydra configs
rebuild them (the full-size paper towers on the meta device)."""
import json

import open_clip
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import save_file

import lmm
from lmm.data.tokenize import IMAGE_TOKEN_ID
from lmm.model.lmm import LMM
from lmm.model.spec import build
from lmm.model.vision_open_clip import TINY_TEXT, OpenCLIPVisionEncoder, library_normalisation
from lmm.model.vision_timm import TimmVisionEncoder
from tests.conftest import CONF, MLP2X_GELU, llm_spec

TIMM = "lmm.model.vision_timm.TimmVisionEncoder"
OPEN_CLIP = "lmm.model.vision_open_clip.OpenCLIPVisionEncoder"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)


def conf_spec(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(f"{CONF}/vision/{name}.yaml"), resolve=True)


TINY = {
    "timm_siglip": conf_spec("tiny_timm_vit"),  # no CLS, attention-pool head
    "open_clip_clip": conf_spec("tiny_open_clip"),  # open_clip's own ViT: CLS, ln_pre, QuickGELU
    "timm_clip": {"_target_": TIMM, "model_name": "vit_large_patch14_clip_quickgelu_336",
                  "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 4}},
    # a register token (a prefix token that is not CLS), layer scale, attention pool
    "timm_reg": {"_target_": TIMM, "model_name": "test_vit3",
                 "model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 3}},
    # open_clip's SigLIP kind: a TimmModel around a timm trunk (9 blocks, 16 px patches: 4 tokens),
    # here with a linear projection head to cut away as well
    "open_clip_siglip": {"_target_": OPEN_CLIP, "model_name": "ViT-SO400M-14-SigLIP-384",
                         "model_kwargs": {"vision_cfg": {"timm_model_name": "test_vit3", "image_size": 32,
                                                         "timm_pool": "map", "timm_proj": "linear"},
                                          "force_image_size": 32}},
    # open_clip's own ViT with an attentional pooler (CoCa-style), which open_clip's pruning keeps
    "open_clip_attn_pool": {"_target_": OPEN_CLIP, "model_name": "ViT-B-32",
                            "model_kwargs": {"vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32,
                                                            "layers": 3, "head_width": 16, "attentional_pool": True,
                                                            "attn_pooler_queries": 4, "attn_pooler_heads": 2}}},
}
HAS_CLS = {"timm_clip", "open_clip_clip", "open_clip_attn_pool"}


def make(name: str, **kw):
    torch.manual_seed(0)
    return build({**TINY[name], **kw})


def library_reference(enc, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix tokens, patch tokens) of the selected block, computed by the library on the uncut tower
    holding the encoder's weights; also checks that the encoder holds every block up to it and none past it."""
    spec, keep = TINY[name], len(enc.layers)
    kwargs = dict(spec.get("model_kwargs", {}))
    if spec["_target_"] == TIMM:
        ref = timm.create_model(spec["model_name"], **kwargs).eval()
        tower, prefix, blocks = ref, "trunk.", "blocks"
    else:
        ref = open_clip.create_model(spec["model_name"], **{**kwargs, "text_cfg": TINY_TEXT}).eval()
        is_timm = hasattr(ref.visual, "trunk")
        tower, prefix = ref.visual, "visual."
        blocks = "trunk.blocks" if is_timm else "transformer.resblocks"
    weights = {k.removeprefix(prefix): v for k, v in enc.state_dict().items()}
    missing, unexpected = tower.load_state_dict(weights, strict=False)
    n = len(tower.get_submodule(blocks))
    assert not unexpected and not any(k.startswith(tuple(f"{blocks}.{i}." for i in range(keep))) for k in missing)
    assert all(any(k.startswith(f"{blocks}.{i}.") for k in missing) for i in range(keep, n))  # cut away
    if spec["_target_"] == TIMM:
        with torch.no_grad():
            out = ref.forward_intermediates(x, indices=[keep - 1], output_fmt="NLC", intermediates_only=True,
                                            return_prefix_tokens=True)[0]
        # timm returns (patches, prefix) when the tower has prefix tokens, else the patches alone
        return (out[1], out[0]) if ref.num_prefix_tokens else (out[:, :0], out)
    # a hook on block `keep` while open_clip encodes the image with its whole tower
    seen = {}
    handle = tower.get_submodule(blocks)[keep - 1].register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        ref.encode_image(x)
    handle.remove()
    n_prefix = tower.trunk.num_prefix_tokens if is_timm else 1
    return seen["out"][:, :n_prefix], seen["out"][:, n_prefix:]


def perturb_(module):
    """Random weights everywhere, so that norms are not the identity and every weight matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("name,layer,select", [
    *[(n, -2, "patch") for n in TINY], *[(n, -1, "patch") for n in TINY], *[(n, 1, "patch") for n in TINY],
    *[(n, -2, "cls_patch") for n in sorted(HAS_CLS)],
])
def test_features_equal_the_library_block_output(name, layer, select):
    enc = make(name, feature_layer=layer, feature_select=select).eval()
    perturb_(enc)
    x = torch.randn(2, 3, 32, 32)
    prefix, patches = library_reference(enc, name, x)
    expected = torch.cat([prefix[:, :1], patches], dim=1) if select == "cls_patch" else patches
    with torch.no_grad():
        out = enc(x)
    n_patches = 4 if name == "open_clip_siglip" else 16
    assert out.shape == (2, enc.num_tokens, enc.hidden_size)
    assert enc.num_tokens == n_patches + (select == "cls_patch")
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("layer", [-2, -1])
def test_the_cut_leaves_no_unused_parameter(name, layer):
    enc = make(name, feature_layer=layer).train()
    n_blocks = 9 if name == "open_clip_siglip" else 3
    assert len(enc.layers) == n_blocks + 1 + layer
    assert all(type(b) is enc.block_class for b in enc.layers)
    enc(torch.randn(2, 3, 32, 32)).square().sum().backward()
    unused = [n for n, p in enc.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused


def test_prefix_tokens_and_sizes():
    siglip = make("timm_siglip")
    assert siglip.hidden_size == 64 and not siglip.has_cls and siglip.num_tokens == 16
    reg = make("timm_reg")
    assert reg.trunk.num_prefix_tokens == 1 and reg.num_tokens == 16  # the register token is dropped
    clip = make("open_clip_clip")
    assert clip.has_cls and clip.num_tokens == 16 and clip.hidden_size == 64
    assert make("open_clip_clip", feature_select="cls_patch").num_tokens == 17
    for name in ("timm_siglip", "timm_reg", "open_clip_siglip"):
        with pytest.raises(ValueError, match="no CLS token"):
            make(name, feature_select="cls_patch")


@pytest.mark.parametrize("name", sorted(TINY))
def test_spec_rebuilds_the_same_encoder(name):
    enc = make(name).eval()
    spec = json.loads(json.dumps(enc.spec()))  # as a checkpoint's config.json stores it
    assert "pretrained" not in spec
    torch.manual_seed(123)
    again = build(spec).eval()
    again.load_state_dict(enc.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc(x), again(x))
    assert again.transform == enc.transform


@pytest.mark.parametrize("name", ["timm_siglip", "open_clip_clip", "open_clip_siglip"])
def test_lmm_checkpoint_round_trip(name, tokenizer_dir, tmp_path):
    torch.manual_seed(0)
    model = LMM(vision=TINY[name], connector=dict(MLP2X_GELU), llm=llm_spec(tokenizer_dir)).eval()
    loaded = lmm.load(model.save_pretrained(tmp_path / "ckpt"))
    assert type(loaded.vision) is type(model.vision)
    ids = torch.tensor([[model.tokenizer.bos_token_id, IMAGE_TOKEN_ID, 10, 11, 12]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(ids, pixels).logits, loaded(ids, pixels).logits)
    assert loaded.image_transform == model.image_transform


def test_timm_loads_a_local_weights_file_or_folder(tmp_path):
    spec = TINY["timm_clip"]
    torch.manual_seed(5)
    ref = timm.create_model(spec["model_name"], **spec["model_kwargs"]).eval()
    save_file(ref.state_dict(), tmp_path / "model.safetensors")
    x = torch.randn(1, 3, 32, 32)
    expected = ref.forward_intermediates(x, indices=[1], output_fmt="NLC", intermediates_only=True)[0]
    for path in (tmp_path, tmp_path / "model.safetensors"):
        enc = TimmVisionEncoder(spec["model_name"], spec["model_kwargs"], pretrained=str(path)).eval()
        with torch.no_grad():
            assert torch.allclose(enc(x), expected, atol=1e-5)
        assert enc.transform.mean == OPENAI_MEAN  # timm's pretrained_cfg of the OpenAI CLIP tower


def test_open_clip_loads_a_local_checkpoint_file(tmp_path):
    spec = TINY["open_clip_clip"]
    kwargs = {**spec["model_kwargs"], "text_cfg": {**TINY_TEXT, "width": 16}}  # the checkpoint's whole model
    torch.manual_seed(5)
    ref = open_clip.create_model(spec["model_name"], **kwargs).eval()
    torch.save(ref.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    enc = OpenCLIPVisionEncoder(spec["model_name"], kwargs, pretrained=str(tmp_path)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = ref.visual.forward_intermediates(x, indices=[1], output_fmt="NLC",
                                                    intermediates_only=True)["image_intermediates"][0]
        assert torch.allclose(enc(x), expected, atol=1e-5)
    assert enc.transform.mean == OPENAI_MEAN


def test_open_clip_normalisation_comes_from_the_pretrained_tags():
    # a weights file names no tag, and open_clip's create_model would then default to OpenAI's mean/std
    assert library_normalisation("ViT-SO400M-14-SigLIP-384", "/weights.bin", None) == ((0.5,) * 3, (0.5,) * 3)
    assert library_normalisation("ViT-L-14-336-quickgelu", "openai", None)[0] == OPENAI_MEAN


def test_bad_choices_are_clear_errors():
    with pytest.raises(ValueError, match="vit_so400m_patch14_siglip_384"):
        TimmVisionEncoder("vit_so400m_patch14_siglip_38")
    with pytest.raises(ValueError, match="ViT-L-14-336-quickgelu"):
        OpenCLIPVisionEncoder("ViT-L-14-336-quickgelux")
    for name in ("timm_siglip", "open_clip_clip"):
        with pytest.raises(ValueError, match=r"valid: 1\.\.3 or -3\.\.-1"):
            make(name, feature_layer=-4)
        with pytest.raises(ValueError, match="valid: \\['cls_patch', 'patch'\\]"):
            make(name, feature_select="cls")
    with pytest.raises(ValueError, match="only timm VisionTransformer"):
        TimmVisionEncoder("resnet10t")
    # neither a file nor a tag: refused before anything is downloaded
    with pytest.raises(ValueError, match="'openai'"):
        TimmVisionEncoder("vit_large_patch14_clip_quickgelu_336", pretrained="/no/such/file")
    with pytest.raises(ValueError, match="'webli'"):
        OpenCLIPVisionEncoder("ViT-SO400M-14-SigLIP-384", pretrained="/no/such/file")


@pytest.mark.parametrize("name", ["tiny_timm_vit", "tiny_open_clip"])
def test_tiny_configs_compose_with_hydra(name):
    with initialize_config_dir(CONF, version_base="1.3"):
        cfg = compose("train", overrides=[f"vision={name}"])
    enc = build(cfg.vision)
    assert enc(torch.randn(1, 3, 32, 32)).shape == (1, 16, 64)
    assert enc.transform.image_size == 32


@pytest.mark.parametrize("name,env,tag,tokens,width,blocks,size,mean", [
    ("clip_l14_336_timm", "LMM_CLIP_L14_336_TIMM", "openai", 576, 1024, 24, 336, OPENAI_MEAN),
    ("siglip_so400m_384_timm", "LMM_SIGLIP_SO400M_384_TIMM", "webli", 729, 1152, 27, 384, (0.5,) * 3),
    ("clip_l14_336_open_clip", "LMM_CLIP_L14_336_OPEN_CLIP", "openai", 576, 1024, 24, 336, OPENAI_MEAN),
    ("siglip_so400m_384_open_clip", "LMM_SIGLIP_SO400M_384_OPEN_CLIP", "webli", 729, 1152, 27, 384, (0.5,) * 3),
])
def test_full_size_configs_describe_the_paper_towers(name, env, tag, tokens, width, blocks, size, mean, monkeypatch):
    monkeypatch.delenv(env, raising=False)
    with initialize_config_dir(CONF, version_base="1.3"):
        assert compose("train", overrides=[f"vision={name}"]).vision.pretrained == tag
        monkeypatch.setenv(env, "/models/weights")
        assert compose("train", overrides=[f"vision={name}"]).vision.pretrained == "/models/weights"
        cfg = compose("train", overrides=[f"vision={name}", "vision.pretrained=null"])
    with torch.device("meta"):  # the architecture only: no weights, no download, no memory
        enc = build(cfg.vision)
        out = enc(torch.empty(1, 3, size, size))
    assert enc.num_tokens == tokens and enc.hidden_size == width and out.shape == (1, tokens, width)
    assert len(enc.layers) == blocks - 1  # LLaVA's second-to-last layer
    assert enc.transform.image_size == size and enc.transform.mean == mean
