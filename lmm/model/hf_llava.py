"""Build an `LMM` from a transformers `LlavaForConditionalGeneration` (config and weights).

LLaVA-format checkpoints on the hub become lmm models, and the same mapping is the reference our
forward pass is tested against (tests/test_hf_llava_parity.py).
"""
from __future__ import annotations

import re

from transformers import LlavaForConditionalGeneration

from lmm.data.templates import vicuna

# transformers' LLaVA parameter names -> ours (first match wins).
KEY_MAP = [
    (r"^model\.vision_tower\.", "vision.tower."),
    (r"^model\.multi_modal_projector\.linear_1\.", "connector.0."),
    (r"^model\.multi_modal_projector\.linear_2\.", "connector.2."),
    (r"^model\.language_model\.", "llm.model.model."),
    (r"^lm_head\.", "llm.model.lm_head."),
]
ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu", "silu": "silu"}


def map_key(key: str) -> str | None:
    for pattern, repl in KEY_MAP:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def from_hf_llava(model_or_path, tokenizer: str | None = None, template=None):
    """`tokenizer`: a tokenizer folder (default: the checkpoint folder); `template`: the chat
    template (default: vicuna, LLaVA-1.5's conversation format)."""
    from lmm.model.lmm import LMM

    if isinstance(model_or_path, LlavaForConditionalGeneration):
        hf = model_or_path
    else:
        hf = LlavaForConditionalGeneration.from_pretrained(model_or_path)
        tokenizer = tokenizer or str(model_or_path)
    if tokenizer is None:
        raise ValueError("from_hf_llava needs `tokenizer` (a folder) when given a model object")
    cfg = hf.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise ValueError(f"only a single vision_feature_layer is supported, got {cfg.vision_feature_layer!r}")  # noqa: TRY004 (a list is a valid value lmm does not support)
    has_cls = hasattr(hf.model.vision_tower.embeddings, "class_embedding")
    # 'default' drops the first token; on a tower without CLS (SigLIP) that is a real patch, which
    # lmm's "drop_first" reproduces (TinyLLaVA_Factory's published models were trained that way)
    select = {("default", True): "patch", ("default", False): "drop_first", ("full", True): "cls_patch",
              ("full", False): "patch"}.get((cfg.vision_feature_select_strategy, has_cls))
    if select is None:
        raise ValueError(f"unknown vision_feature_select_strategy {cfg.vision_feature_select_strategy!r}; "
                         f"valid: ['default', 'full']")
    if cfg.projector_hidden_act not in ACTIVATIONS:
        raise ValueError(f"unsupported projector activation {cfg.projector_hidden_act!r}; valid: {sorted(ACTIVATIONS)}")
    vision = {
        "_target_": "lmm.model.vision.HFVisionEncoder",
        "hf_config": cfg.vision_config.to_dict(),
        "feature_layer": cfg.vision_feature_layer,
        "feature_select": select,
    }
    connector = {"_target_": "lmm.model.connector.MLPConnector", "depth": 2,
                 "act": ACTIVATIONS[cfg.projector_hidden_act], "bias": cfg.multimodal_projector_bias}
    llm = {"_target_": "lmm.model.llm.LanguageModel", "hf_config": cfg.text_config.to_dict(),
           "tokenizer": tokenizer, "template": template or vicuna()}
    model = LMM(vision=vision, connector=connector, llm=llm)

    ours = model.state_dict()
    state = {}
    for key, value in hf.state_dict().items():
        new = map_key(key)
        if new in ours:  # layers past the feature layer, post-layernorm and heads are not kept
            state[new] = value
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ValueError(f"LLaVA checkpoint lacks weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(state, strict=True)
    return model.eval()
