"""Vision encoder over an open_clip visual tower (e.g. ViT-L-14-336-quickgelu, ViT-SO400M-14-SigLIP-384).

open_clip gives two kinds of ViT tower: its own `VisionTransformer` (CLIP: conv1, class token,
ln_pre, batch-first `transformer.resblocks`, ln_post, proj, optional attention pool) and a
`TimmModel` wrapping a timm ViT `trunk` (SigLIP). Both are cut right after the feature block, as in
`HFVisionEncoder`: what lies past it (later blocks, ln_post / norm, pools, projections) would get
no gradient and stop DDP. The timm case reuses the timm encoder's helpers.
"""
from __future__ import annotations

from typing import Literal

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from torch import nn

from lmm.data.transforms import ImageTransform
from lmm.model.spec import spec_target
from lmm.model.vision import check_feature_select, feature_spec, kept_blocks
from lmm.model.vision_timm import (
    check_timm_vit,
    cut_timm_vit,
    square_size,
    timm_vit_tokens,
    unknown_model,
    weights_file,
)

OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# open_clip only builds whole CLIP models; the text tower is thrown away, so when no weights
# will be loaded into it it is built this small.
TINY_TEXT = {"context_length": 2, "vocab_size": 2, "width": 8, "heads": 1, "layers": 1}


def create_visual(model_name: str, pretrained: str | None, model_kwargs: dict) -> nn.Module:
    if open_clip.get_model_config(model_name) is None:
        raise unknown_model("open_clip", model_name, open_clip.list_models())
    kwargs = dict(model_kwargs)
    if pretrained is None:
        kwargs["text_cfg"] = TINY_TEXT
    else:
        file = weights_file(pretrained, OPEN_CLIP_WEIGHT_FILES)
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if file is None and pretrained not in tags:
            raise ValueError(f"pretrained={pretrained!r} is neither a weights file nor an open_clip tag of "
                             f"{model_name} (tags: {tags})")
        pretrained = file or pretrained
    # device=None: open_clip's final `model.to(device)` leaves every tensor where it was built,
    # so parameters built on meta (lmm.model.meta) stay there instead of failing a copy
    model = open_clip.create_model(model_name, pretrained=pretrained, pretrained_text=False,
                                   device=None, **kwargs)
    return model.visual


def library_normalisation(model_name: str, pretrained: str | None, visual: nn.Module):
    """Mean/std of the model's pretrained tags (a weights file path names no tag): they must agree."""
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    tags = [pretrained] if pretrained in tags else tags
    stats = {(tuple(c.get("mean", OPENAI_DATASET_MEAN)), tuple(c.get("std", OPENAI_DATASET_STD)))
             for c in (open_clip.get_pretrained_cfg(model_name, t) for t in tags)}
    if len(stats) > 1:
        raise ValueError(f"the pretrained tags {tags} of {model_name} normalise differently: set image_mean and "
                         "image_std, or pass the tag as `pretrained`")
    if stats:
        return stats.pop()
    return tuple(visual.preprocess_cfg["mean"]), tuple(visual.preprocess_cfg["std"])  # open_clip's default


class OpenCLIPVisionEncoder(nn.Module):
    """An open_clip visual tower by name (`model_kwargs`: extra `open_clip.create_model` arguments).

    `pretrained`: a full open_clip checkpoint file (or a downloaded hub folder holding one), or one
    of open_clip's pretrained tags for the model (e.g. "openai", fetched through its cache); None
    leaves it random. Mean/std default to the model's open_clip pretrained config.
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
        self.model_name, self.model_kwargs = model_name, dict(model_kwargs or {})
        visual = create_visual(model_name, pretrained, self.model_kwargs)
        if isinstance(visual, TimmModel):
            check_timm_vit(visual.trunk, model_name)
            cut_timm_vit(visual.trunk, feature_layer)
            visual.head = nn.Identity()  # open_clip's projection to the joint embedding
            size, has_cls = visual.trunk.patch_embed.img_size, visual.trunk.has_class_token
        elif isinstance(visual, VisionTransformer):
            keep = kept_blocks(len(visual.transformer.resblocks), feature_layer)
            visual.prune_intermediate_layers([keep - 1], prune_norm=True, prune_head=True)
            visual.attn_pool = visual.attn_pool_contrastive = None  # not pruned by open_clip
            size, has_cls = visual.image_size, True
        else:
            why = (f"open_clip model {model_name!r} has a {type(visual).__name__} tower; only ViT towers (open_clip "
                   "VisionTransformer, or TimmModel over a timm VisionTransformer) are supported")
            raise ValueError(why)  # noqa: TRY004 - the config names an unsupported model: a bad value
        check_feature_select(feature_select, has_cls, model_name)
        self.feature_layer, self.feature_select, self.has_cls = feature_layer, feature_select, has_cls
        self.visual = visual
        self.block_class = type(self.layers[0])
        if image_mean is None or image_std is None:
            mean, std = library_normalisation(model_name, pretrained, visual)
            image_mean, image_std = image_mean or mean, image_std or std
        self.transform = ImageTransform(square_size(size, model_name), tuple(image_mean), tuple(image_std),
                                        pad_to_square, backend=resize_backend)

    @property
    def is_timm(self) -> bool:
        return isinstance(self.visual, TimmModel)

    @property
    def hidden_size(self) -> int:
        return self.visual.trunk.embed_dim if self.is_timm else self.visual.transformer.width

    @property
    def layers(self) -> nn.Module:
        """The transformer blocks kept (input side first): partial tuning and FSDP wrap these."""
        return self.visual.trunk.blocks if self.is_timm else self.visual.transformer.resblocks

    @property
    def num_tokens(self) -> int:
        """Visual tokens per image."""
        patches = self.visual.trunk.patch_embed.num_patches if self.is_timm else \
            self.visual.grid_size[0] * self.visual.grid_size[1]
        return patches + int(self.feature_select == "cls_patch")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_tokens, hidden_size)."""
        if self.is_timm:
            dtype = self.visual.trunk.patch_embed.proj.weight.dtype
            return timm_vit_tokens(self.visual.trunk, pixel_values.to(dtype), self.feature_select)
        out = self.visual.forward_intermediates(pixel_values.to(self.visual.conv1.weight.dtype), indices=1,
                                                intermediates_only=True, output_fmt="NLC", output_extra_tokens=True)
        patches = out["image_intermediates"][0]
        if self.feature_select == "cls_patch":
            return torch.cat([out["image_intermediates_prefix"][0], patches], dim=1)
        return patches

    def spec(self) -> dict:
        return {
            "_target_": spec_target(self),
            "model_name": self.model_name,
            "model_kwargs": self.model_kwargs,
            **feature_spec(self),
        }
