"""Write an lmm model as a transformers `LlavaForConditionalGeneration` folder (issue 14).

What maps onto that class: an HF CLIP or SigLIP tower, the `mlp2x_gelu` connector (Linear, act,
Linear) and an HF causal LM whose logits are its LM head's output (no head bias, no softcap or
scaling: Llava's own head is a bias-free Linear). Anything else is refused, naming the part.

The folder holds config.json + model.safetensors (lmm's weights under Llava's names, nothing
random), the tokenizer with `<image>` added and a `chat_template` rendering lmm's template
(lmm.data.chat_jinja), and processor settings equal to lmm's image transform: pad to square with
the mean colour, resize to the tower's size (no crop), the same normalisation. It is written to a
temporary folder beside `out` and renamed into place.

How lmm's choices become Llava's:
* The tower is stored cut after its feature layer (as lmm keeps it), so `vision_feature_layer` is
  -1. Its final norm, which Llava never reads, is stored as the identity; SigLIP's pooling head is
  switched off (`vision_use_head: false`).
* `feature_select: patch` on a CLIP tower drops the CLS token, `drop_first` the first token on any
  tower: Llava's "default" strategy. Every other case keeps all tokens ("full").
* `<image>` becomes a token. When the LLM's embedding matrix has no spare row for it, one row is
  added to the input embeddings and the LM head, each the mean of the others: Llava replaces that
  token's embeddings with the image's features, and a mean head row gives the mean logit, which is
  never above the largest, so greedy decoding never picks it.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from lmm.data.chat_jinja import IMAGE_TEXT, chat_template_jinja
from lmm.data.templates import IMAGE_PLACEHOLDER
from lmm.data.transforms import RESAMPLING
from lmm.files import replace_dir, temp_dir_beside
from lmm.model.connector import LinearConnector, MLPConnector
from lmm.model.hf_llava import KEY_MAP
from lmm.model.loss import post_head

TOWERS = ("clip_vision_model", "siglip_vision_model")
PROJECTOR_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu", "silu": "silu"}
# lmm parameter-name prefixes -> Llava's: lmm.model.hf_llava.KEY_MAP (the import's map) read backwards
RENAMES = tuple((ours, re.sub(r"\\(.)", r"\1", theirs.lstrip("^"))) for theirs, ours in KEY_MAP)


class NotExportable(ValueError):
    """The model has a part transformers' Llava cannot represent."""


def check_exportable(model) -> None:
    """Raises NotExportable naming the first part Llava has no counterpart for."""
    from lmm.model.llm import LanguageModel
    from lmm.model.vision import HFVisionEncoder

    vision, connector, llm = model.vision, model.connector, model.llm
    if not isinstance(vision, HFVisionEncoder):
        raise NotExportable(f"vision tower {type(vision).__name__}: Llava holds transformers' CLIP or SigLIP "
                            f"towers only (vision=clip_*/siglip_* through transformers), not timm or open_clip")
    tower_type = vision.tower.config.model_type
    if tower_type not in TOWERS:
        raise NotExportable(f"vision tower {tower_type!r}: Llava export covers {list(TOWERS)}")
    if type(connector) is not MLPConnector or connector.depth != 2:
        name = ("linear" if isinstance(connector, LinearConnector) else
                f"mlp depth {connector.depth}" if isinstance(connector, MLPConnector) else type(connector).__name__)
        raise NotExportable(f"connector {name}: Llava's projector is mlp2x_gelu's shape (Linear, act, Linear) only")
    if connector.act not in PROJECTOR_ACT:
        raise NotExportable(f"connector activation {connector.act!r}; valid: {sorted(PROJECTOR_ACT)}")
    if not isinstance(llm, LanguageModel):
        raise NotExportable(f"LLM {type(llm).__name__}: Llava holds a transformers causal LM")
    config = llm.model.config
    head = llm.model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise NotExportable(f"LLM {config.model_type!r}: its LM head has a bias, Llava's LM head has none")
    transform = post_head(config)
    if transform is None or transform.softcap is not None or transform.input_scale != 1.0:
        raise NotExportable(f"LLM {config.model_type!r}: its logits are transformed after the LM head "
                            f"(softcap or scaling), which Llava's forward does not do")
    chat_template_jinja(llm.template, tokenizer_adds_bos=False)  # raises for a template with no chat form


def _tokenizer_adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def _llava_state(model, image_row: bool) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        for ours, theirs in RENAMES:
            if key.startswith(ours):
                state[theirs + key[len(ours):]] = value.detach().to("cpu").clone().contiguous()
                break
        else:
            raise NotExportable(f"no Llava name for parameter {key!r}")
    if "lm_head.weight" not in state:  # tied to the input embeddings: Llava re-ties on load
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"].clone()
    if image_row:  # one more vocabulary row for <image>: the mean row (module docstring)
        for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            w = state[key]
            state[key] = torch.cat([w, w.mean(0, keepdim=True)])
    # the tower's final norm, which Llava builds but never reads (hidden_states[-1] comes before it)
    width = model.vision.hidden_size
    state["model.vision_tower.vision_model.post_layernorm.weight"] = torch.ones(width)
    state["model.vision_tower.vision_model.post_layernorm.bias"] = torch.zeros(width)
    return state


PROBE = "what is in the image?"


def _matching_chat_template(llm, tokenizer, image_id: int, adds_bos: bool) -> str:
    """The Jinja chat template whose rendering, tokenised whole as a processor does, gives lmm's ids.
    lmm (as LLaVA's `tokenizer_image_token`) tokenises the text after an image as a fresh sequence:
    a SentencePiece/Metaspace tokenizer then starts it with its word-start mark, which the text after
    an added `<image>` token does not get, so there the image renders with a space before its newline."""
    from lmm.data.templates import Message
    from lmm.data.tokenize import IMAGE_TOKEN_ID, encode_segments

    want, _ = encode_segments(llm.template.render([Message("user", IMAGE_TEXT + PROBE)], add_generation_prompt=True),
                              llm.tokenizer)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROBE}]}]
    for image_text in (IMAGE_TEXT, IMAGE_PLACEHOLDER + " \n"):
        jinja = chat_template_jinja(llm.template, adds_bos, image_text)
        text = tokenizer.apply_chat_template(messages, chat_template=jinja, tokenize=False)
        got = [IMAGE_TOKEN_ID if i == image_id else i for i in tokenizer(text)["input_ids"]]
        if got == want.tolist():
            return jinja
    raise NotExportable("tokenizer: no chat template spelling makes a whole-prompt tokenisation give lmm's ids "
                        "around the image (lmm encodes the text after an image on its own, as LLaVA does)")


def llava_parts(model):
    """(config dict, state dict, tokenizer, image processor) of the Llava form of `model`."""
    from transformers import LlavaConfig
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    check_exportable(model)
    vision, connector, llm = model.vision, model.connector, model.llm
    tokenizer = copy.deepcopy(llm.tokenizer)
    adds_bos = _tokenizer_adds_bos(tokenizer)
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    rows = llm.model.get_input_embeddings().num_embeddings
    if image_id > rows:
        raise NotExportable(f"tokenizer id {image_id} for {IMAGE_PLACEHOLDER} is past the LLM's {rows} embeddings")
    tokenizer.chat_template = _matching_chat_template(llm, tokenizer, image_id, adds_bos)
    text_config = llm.model.config.to_dict()
    text_config["vocab_size"] = max(rows, image_id + 1)
    vision_config = vision.tower.config.to_dict()  # cut after the feature layer, as lmm holds it
    if vision_config["model_type"] == "siglip_vision_model":
        vision_config["vision_use_head"] = False
    drop_first = vision.feature_select == "drop_first" or (vision.has_cls and vision.feature_select == "patch")
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=image_id,
        projector_hidden_act=PROJECTOR_ACT[connector.act], multimodal_projector_bias=connector.bias,
        vision_feature_layer=-1, vision_feature_select_strategy="default" if drop_first else "full",
        image_seq_length=vision.num_tokens, tie_word_embeddings=bool(llm.model.config.tie_word_embeddings),
    )
    t = vision.transform
    size = {"height": t.image_size, "width": t.image_size}
    processor = LlavaImageProcessorPil(
        do_resize=True, size=size, resample=int(RESAMPLING[t.resample]), do_center_crop=False, crop_size=size, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=list(t.mean), image_std=list(t.std),
        do_pad=t.pad_to_square, do_convert_rgb=True)
    return config.to_dict(), _llava_state(model, image_row=image_id == rows), tokenizer, processor


def export_hf_llava(model, out) -> Path:
    """Write `model` (an LMM) as a Llava folder at `out`, atomically (see the module docstring)."""
    from transformers import LlavaProcessor

    config, state, tokenizer, image_processor = llava_parts(model)
    vision = model.vision
    out = Path(out)
    tmp = temp_dir_beside(out)
    try:
        config["architectures"] = ["LlavaForConditionalGeneration"]
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                   patch_size=vision.tower.config.patch_size,
                                   vision_feature_select_strategy=config["vision_feature_select_strategy"],
                                   num_additional_image_tokens=int(vision.has_cls),
                                   chat_template=tokenizer.chat_template)
        processor.save_pretrained(tmp)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
