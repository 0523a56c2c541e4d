"""Import TinyLLaVA_Factory's Hugging Face checkpoints (`TinyLlavaForConditionalGeneration`) with
no remote code: `LMM.from_tinyllava(path)`.

Their folder: config.json (`model_type: tinyllava`, the LLM's `text_config` and the tower's
`vision_config`, each written as a diff from its transformers class defaults, `connector_type`,
`vision_feature_layer`, `vision_feature_select_strategy`, `image_aspect_ratio`), safetensors weights
(one file or shards with an index) under three prefixes, and the LLM's tokenizer files:

    language_model.*                a transformers causal LM's own keys (model.*, lm_head.*)
    vision_tower._vision_tower.*    a CLIPVisionModel / SiglipVisionModel's keys (vision_model.*)
    connector._connector.*          the connector's module keys (mlp: 0, 2, ...; linear: weight, bias)

How theirs becomes lmm's:
* Features: `hidden_states[vision_feature_layer]`, then "patch" drops the first token on every tower,
  a real patch on SigLIP (lmm's `drop_first`), "cls_patch" keeps all.
* Images: `image_aspect_ratio: pad` pads to a square of the mean colour, as lmm does; "square" (what
  their published models use) resizes the whole image to the tower's size. Their CLIP processor
  would then centre-crop; lmm has no crop and resizes the whole image (a warning says so).
* Template: the checkpoint does not name one. Their chat templates are all vicuna-v1 with the
  system prompt, ending each answer with the tokenizer's EOS; what differs is the BOS, which their
  `tokenizer_image_token` keeps where the tokenizer adds one. Mapped by LLM family: phi -> phi2,
  llama -> vicuna, stablelm -> stablelm2, gemma -> gemma, qwen2 -> qwen2. `template=` overrides it with
  one of their names (phi, llama, gemma, qwen2_base, qwen2_instruct).
* Refused, naming the part: OpenELM (its model code is not in transformers), DINOv2 / MoF towers,
  the resampler, qformer and mof_mlp connectors, and the refactored Factory layout
  (`connector_config`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from lmm.data import templates

log = logging.getLogger(__name__)

# their template names -> lmm's (all vicuna-v1 + system; the BOS and EOS come from the tokenizer)
TEMPLATES = {"phi": templates.phi2, "llama": templates.vicuna, "gemma": templates.gemma,
             "qwen2_base": templates.qwen2, "qwen2_instruct": templates.qwen2}
FAMILY_TEMPLATE = {"phi": templates.phi2, "llama": templates.vicuna, "stablelm": templates.stablelm2,
                   "gemma": templates.gemma, "qwen2": templates.qwen2}
TOWERS = ("clip_vision_model", "siglip_vision_model")
SELECT = {"patch": "drop_first", "cls_patch": "cls_patch"}
PREFIXES = (("language_model.", "llm.model."), ("vision_tower._vision_tower.", "vision.tower."))


def _connector_spec(connector_type: str) -> tuple[dict, dict[str, str]]:
    """(lmm connector spec, their key prefix -> ours) for a `connector_type`."""
    import re

    match = re.fullmatch(r"mlp(\d+)x_gelu", connector_type or "")
    if match:
        return ({"_target_": "lmm.model.connector.MLPConnector", "depth": int(match.group(1)), "act": "gelu",
                 "bias": True}, {"connector._connector.": "connector."})
    if connector_type == "linear":
        return {"_target_": "lmm.model.connector.LinearConnector", "bias": True}, {"connector._connector.": "connector.0."}
    if connector_type == "identity":
        return {"_target_": "lmm.model.connector.IdentityConnector"}, {}
    raise ValueError(f"TinyLLaVA connector_type {connector_type!r} has no lmm counterpart with the same weights; "
                     f"importable: mlpNx_gelu, linear, identity")


def _template(name: str | None, family: str):
    if name is not None:
        if name not in TEMPLATES:
            raise ValueError(f"TinyLLaVA template {name!r}; importable: {sorted(TEMPLATES)} (their 'pretrain' format "
                             f"is lmm's plain caption prompt, not a chat template)")
        return TEMPLATES[name]()
    if family not in FAMILY_TEMPLATE:
        raise ValueError(f"TinyLLaVA checkpoint with a {family!r} LLM: lmm imports {sorted(FAMILY_TEMPLATE)} "
                         f"(OpenELM's model code is not part of transformers)")
    return FAMILY_TEMPLATE[family]()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from lmm.model.weights import hf_weight_files

    files = hf_weight_files(str(path))  # the shard index, or the one safetensors file
    if files is None:
        raise FileNotFoundError(f"{path}: no model.safetensors (or index); TinyLLaVA weights are read from "
                                f"safetensors files only")
    state = {}
    for name in sorted(set(files.values())):
        with safe_open(name, framework="pt") as f:
            for key in [k for k, file in files.items() if file == name]:
                state[key] = f.get_tensor(key)
    return state


def tinyllava_specs(path, template: str | None = None) -> tuple[dict, dict]:
    """(lmm component specs, their key prefix -> ours) of a TinyLLaVA_Factory folder."""
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != "tinyllava":
        raise ValueError(f"{path / 'config.json'}: model_type {cfg.get('model_type')!r}, expected 'tinyllava'")
    if "connector_config" in cfg:
        raise ValueError(f"{path}: the refactored TinyLLaVA_Factory layout (connector_config) is not importable; "
                         f"lmm reads the layout of their published checkpoints")
    text, vision = dict(cfg["text_config"]), dict(cfg["vision_config"])
    if vision.get("model_type") not in TOWERS:
        raise ValueError(f"TinyLLaVA vision tower {vision.get('model_type')!r}; importable: {list(TOWERS)}")
    for key in ("model_name_or_path", "model_name_or_path2"):
        vision.pop(key, None)
    strategy = cfg.get("vision_feature_select_strategy", "patch")
    if strategy not in SELECT:
        raise ValueError(f"vision_feature_select_strategy {strategy!r}; valid: {sorted(SELECT)}")
    ratio = cfg.get("image_aspect_ratio", "square")
    if ratio not in ("pad", "square"):
        raise ValueError(f"image_aspect_ratio {ratio!r}; importable: ['pad', 'square']")
    if ratio == "square" and vision["model_type"] == "clip_vision_model":
        log.warning("%s: their CLIP processor centre-crops after resizing; lmm resizes the whole image to the square",
                    path)
    connector, renames = _connector_spec(cfg.get("connector_type"))
    specs = {
        "vision": {"_target_": "lmm.model.vision.HFVisionEncoder", "hf_config": vision,
                   "feature_layer": cfg.get("vision_feature_layer", -2), "feature_select": SELECT[strategy],
                   "pad_to_square": ratio == "pad"},
        "connector": connector,
        "llm": {"_target_": "lmm.model.llm.LanguageModel", "hf_config": text, "tokenizer": str(path),
                "template": _template(template, text.get("model_type"))},
    }
    return specs, {**dict(PREFIXES), **renames}


def from_tinyllava(path, template: str | None = None):
    """An LMM (eval mode, float32) from a TinyLLaVA_Factory checkpoint folder."""
    from lmm.model.lmm import LMM

    specs, renames = tinyllava_specs(path, template)
    model = LMM(**specs)
    ours = model.state_dict()
    state = {}
    for key, value in _weights(Path(path)).items():
        for theirs, mine in renames.items():
            if key.startswith(theirs):
                new = mine + key[len(theirs):]
                if new in ours:  # layers past the feature layer, the final norm and SigLIP's head are not kept
                    state[new] = value.to(ours[new].dtype)
                break
    head, embed = "llm.model.lm_head.weight", "llm.model.model.embed_tokens.weight"
    if head in ours and head not in state and embed in state:  # tied: saved once, as the embeddings
        state[head] = state[embed]
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ValueError(f"{path}: TinyLLaVA weights lack {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(state, strict=True)
    return model.eval()
