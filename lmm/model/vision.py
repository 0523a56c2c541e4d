"""Vision encoder over a transformers CLIP / SigLIP vision tower.

Features come from one hidden layer (LLaVA: the second to last). The tower is cut right after
that layer: the layers past it would cost compute and, having no gradient, stop DDP with
"parameters that were not used". CLIP's CLS token is dropped by default; SigLIP has none, so all
its patch tokens are kept (an earlier TinyLLaVA implementation dropped a real patch here).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from lmm.data.transforms import ImageTransform
from lmm.model.hf import hf_config_from_dict
from lmm.model.meta import weights_deferred
from lmm.model.spec import spec_target

# Normalisation used when neither the config nor a saved image processor gives one.
DEFAULT_NORMALISATION = {
    "clip_vision_model": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "siglip_vision_model": (IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
}


def _vision_config(config):
    """The vision part of a config: a full CLIP/SigLIP checkpoint nests it in `vision_config`."""
    return getattr(config, "vision_config", None) or config


def kept_blocks(n: int, feature_layer: int) -> int:
    """Blocks to keep so that the last one is `feature_layer` (HF indexing: k is block k's output, -1 the last)."""
    keep = n + 1 + feature_layer if feature_layer < 0 else feature_layer
    if not 1 <= keep <= n:
        raise ValueError(f"feature_layer={feature_layer} selects no block of a {n}-block tower "
                         f"(valid: 1..{n} or -{n}..-1)")
    return keep


FEATURE_SELECT = ("cls_patch", "patch")
# "drop_first": the first token dropped whatever it is. TinyLLaVA_Factory's "patch" does this on
# every tower, so on SigLIP (no CLS token) its published models lose a real patch (729 -> 728);
# only the transformers towers offer it, to import those checkpoints with their numerics.
HF_FEATURE_SELECT = (*FEATURE_SELECT, "drop_first")


def check_feature_select(feature_select: str, has_cls: bool, tower: str, valid=FEATURE_SELECT) -> None:
    if feature_select not in valid:
        raise ValueError(f"unknown feature_select {feature_select!r}; valid: {list(valid)}")
    if feature_select == "cls_patch" and not has_cls:
        raise ValueError(f"feature_select='cls_patch' but {tower} has no CLS token")


def feature_spec(encoder) -> dict:
    """The spec keys every vision encoder shares: which features it gives and how images are prepared."""
    return {
        "feature_layer": encoder.feature_layer,
        "feature_select": encoder.feature_select,
        "image_mean": list(encoder.transform.mean),
        "image_std": list(encoder.transform.std),
        "pad_to_square": encoder.transform.pad_to_square,
        "resize_backend": encoder.transform.backend,
    }


class HFVisionEncoder(nn.Module):
    """CLIP/SigLIP vision tower from a local path / hub id (`pretrained`) or a config dict (`hf_config`)."""

    def __init__(
        self,
        pretrained: str | None = None,
        hf_config: dict | None = None,
        feature_layer: int = -2,
        feature_select: Literal["patch", "cls_patch", "drop_first"] = "patch",
        image_mean: tuple[float, float, float] | None = None,
        image_std: tuple[float, float, float] | None = None,
        pad_to_square: bool = True,
        resize_backend: str = "pillow",
    ):
        super().__init__()
        if (pretrained is None) == (hf_config is None):
            raise ValueError("give exactly one of `pretrained` (path or hub id) and `hf_config` (architecture dict)")
        self.weights_from = None  # set when the weights are read later (lmm.model.weights)
        if pretrained is not None:
            config = _vision_config(AutoConfig.from_pretrained(pretrained))
            if weights_deferred():  # the architecture only (parameters on meta); weights read later
                tower = AutoModel.from_config(config, dtype=torch.float32)
                self.weights_from = pretrained
            else:
                tower = AutoModel.from_pretrained(pretrained, config=config, dtype=torch.float32)  # fp32 master weights
            mean, std = self._processor_normalisation(pretrained)
            image_mean, image_std = image_mean or mean, image_std or std
        else:
            config = hf_config_from_dict(hf_config)
            tower = AutoModel.from_config(config)
        self.hf_config = config.to_dict()  # the full tower, before cutting: enough to rebuild it
        if image_mean is None or image_std is None:
            if config.model_type not in DEFAULT_NORMALISATION:
                raise ValueError(f"no default normalisation for {config.model_type!r}: set image_mean and image_std")
            image_mean, image_std = DEFAULT_NORMALISATION[config.model_type]
        self.feature_layer = feature_layer
        self.feature_select = feature_select
        self.has_cls = hasattr(tower.embeddings, "class_embedding")
        check_feature_select(feature_select, self.has_cls, type(tower).__name__, HF_FEATURE_SELECT)
        self.tower = self._cut_after_feature_layer(tower, feature_layer)
        self.block_class = type(self.tower.encoder.layers[0])
        self.transform = ImageTransform(config.image_size, tuple(image_mean), tuple(image_std), pad_to_square,
                                        backend=resize_backend)

    defers_pretrained = True  # a meta build can read its pretrained safetensors later (lmm.model.weights)

    def weight_sources(self, at: str) -> dict:
        """Sources of the deferred weights (`at`: this module's key prefix in the LMM)."""
        from lmm.model.weights import hf_sources

        return hf_sources(self.tower, self.weights_from, f"{at}tower.") if self.weights_from else {}

    @staticmethod
    def _processor_normalisation(path: str):
        try:
            processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError):
            return None, None  # no preprocessor_config.json: fall back to the model type's default
        return getattr(processor, "image_mean", None), getattr(processor, "image_std", None)

    @staticmethod
    def _cut_after_feature_layer(tower: nn.Module, feature_layer: int) -> nn.Module:
        keep = kept_blocks(len(tower.encoder.layers), feature_layer)
        tower.encoder.layers = tower.encoder.layers[:keep]
        tower.config.num_hidden_layers = keep
        # The final norm and SigLIP's pooling head sit after the selected layer: unused.
        tower.post_layernorm = nn.Identity()
        if getattr(tower, "use_head", False):
            tower.use_head = False
            del tower.head
        return tower

    @property
    def hidden_size(self) -> int:
        return self.tower.config.hidden_size

    @property
    def layers(self) -> nn.ModuleList:
        """The transformer blocks kept (input side first): partial tuning and FSDP wrap these."""
        return self.tower.encoder.layers

    @property
    def num_patches(self) -> int:
        return (self.tower.config.image_size // self.tower.config.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """Visual tokens per image."""
        dropped = self.feature_select == "drop_first" or (self.feature_select == "patch" and self.has_cls)
        return self.num_patches + int(self.has_cls) - int(dropped)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_tokens, hidden_size)."""
        dtype = self.tower.embeddings.patch_embedding.weight.dtype
        features = self.tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        if (self.has_cls and self.feature_select == "patch") or self.feature_select == "drop_first":
            features = features[:, 1:]
        return features

    def spec(self) -> dict:
        return {
            "_target_": spec_target(self),
            "hf_config": self.hf_config,
            **feature_spec(self),
        }
