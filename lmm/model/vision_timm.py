"""Vision encoder over a timm VisionTransformer (e.g. CLIP-L/14-336, SigLIP so400m/14-384).

Same contract as `HFVisionEncoder`: features come from one block (LLaVA: the second to last) and
the tower is cut right after it, because the blocks past it, the final norm and the pooling head
(SigLIP's attention pool) would get no gradient and stop DDP. timm puts its prefix tokens (CLS,
registers) first; feature_select="patch" drops them all, "cls_patch" keeps the CLS token only.

The helpers here are shared with the open_clip encoder, whose SigLIP tower wraps a timm trunk.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Literal

import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from lmm.data.transforms import ImageTransform
from lmm.model.spec import spec_target
from lmm.model.vision import check_feature_select, feature_spec, kept_blocks

# The names under which the hub repos of timm / open_clip keep their weights (a downloaded folder).
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def unknown_model(library: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=8, cutoff=0.6)
    hint = f"close matches: {close}" if close else f"valid names start {known[:8]} ..."
    return ValueError(f"unknown {library} model {name!r}; {hint} ({len(known)} in all)")


def weights_file(path: str, names: tuple[str, ...]) -> str | None:
    """`path` if it is a file, the library's weights file if it is a downloaded hub folder, else None."""
    p = Path(path)
    if p.is_dir():
        found = [p / n for n in names if (p / n).is_file()]
        if not found:
            raise FileNotFoundError(f"no weights file in {p} (looked for {list(names)})")
        return str(found[0])
    return str(p) if p.is_file() else None


def square_size(size, tower: str) -> int:
    h, w = (size, size) if isinstance(size, int) else size
    if h != w:
        raise ValueError(f"{tower} takes {h}x{w} images; the image transform makes square ones")
    return h


def check_timm_vit(model: nn.Module, name: str) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        why = f"timm model {name!r} is a {type(model).__name__}; only timm VisionTransformer (vit_*) is supported"
        raise ValueError(why)  # noqa: TRY004 - the config names an unsupported model: a bad value
    return model


def cut_timm_vit(vit: VisionTransformer, feature_layer: int) -> VisionTransformer:
    keep = kept_blocks(len(vit.blocks), feature_layer)
    # timm's own pruning: drops the later blocks, norm, fc_norm, attention pool and head.
    vit.prune_intermediate_layers([keep - 1], prune_norm=True, prune_head=True)
    return vit


def timm_vit_tokens(vit: VisionTransformer, x: torch.Tensor, feature_select: str) -> torch.Tensor:
    x = vit.forward_features(x)  # of a cut tower: embeddings, pre-norm, the kept blocks
    patches = x[:, vit.num_prefix_tokens:]
    return torch.cat([x[:, :1], patches], dim=1) if feature_select == "cls_patch" else patches


class TimmVisionEncoder(nn.Module):
    """A timm ViT by name (`model_name`, `model_kwargs` override its architecture), weights optional.

    `pretrained`: a timm-format weights file (or a downloaded hub folder holding one), or one of
    timm's pretrained tags for the model (e.g. "openai", fetched through timm's hub cache); None
    leaves it random. Mean/std default to the model's timm `pretrained_cfg`.
    """

    def __init__(
        self,
        model_name: str,
        model_kwargs: dict | None = None,
        pretrained: str | None = None,
        feature_layer: int = -2,
        feature_select: Literal["patch", "cls_patch"] = "patch",
        image_mean: tuple[float, float, float] | None = None,
        image_std: tuple[float, float, float] | None = None,
        pad_to_square: bool = True,
        resize_backend: str = "pillow",
    ):
        super().__init__()
        if not timm.is_model(model_name):
            raise unknown_model("timm", model_name, timm.list_models())
        self.model_name, self.model_kwargs = model_name, dict(model_kwargs or {})
        name, weights = self._weights(pretrained)
        vit = check_timm_vit(timm.create_model(name, **weights, **self.model_kwargs), model_name)
        check_feature_select(feature_select, vit.has_class_token, model_name)
        self.feature_layer, self.feature_select = feature_layer, feature_select
        self.trunk = cut_timm_vit(vit, feature_layer)
        self.block_class = type(self.trunk.blocks[0])
        cfg = vit.pretrained_cfg
        self.transform = ImageTransform(square_size(vit.patch_embed.img_size, model_name),
                                        tuple(image_mean or cfg["mean"]), tuple(image_std or cfg["std"]), pad_to_square,
                                        backend=resize_backend)

    def _weights(self, pretrained: str | None) -> tuple[str, dict]:
        """The name and weight arguments for `timm.create_model`."""
        if pretrained is None:
            return self.model_name, {"pretrained": False}
        file = weights_file(pretrained, TIMM_WEIGHT_FILES)
        if file is not None:
            return self.model_name, {"pretrained": True, "pretrained_cfg_overlay": {"file": file}}
        base = self.model_name.partition(".")[0]
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{base}.*")]
        if pretrained not in tags:
            raise ValueError(f"pretrained={pretrained!r} is neither a weights file nor a timm tag of {base} "
                             f"(tags: {tags})")
        return f"{base}.{pretrained}", {"pretrained": True}

    @property
    def hidden_size(self) -> int:
        return self.trunk.embed_dim

    @property
    def layers(self) -> nn.Sequential:
        """The transformer blocks kept (input side first): partial tuning and FSDP wrap these."""
        return self.trunk.blocks

    @property
    def has_cls(self) -> bool:
        return self.trunk.has_class_token

    @property
    def num_tokens(self) -> int:
        """Visual tokens per image."""
        return self.trunk.patch_embed.num_patches + int(self.feature_select == "cls_patch")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_tokens, hidden_size)."""
        dtype = self.trunk.patch_embed.proj.weight.dtype
        return timm_vit_tokens(self.trunk, pixel_values.to(dtype), self.feature_select)

    def spec(self) -> dict:
        return {
            "_target_": spec_target(self),
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            **feature_spec(self),
        }
