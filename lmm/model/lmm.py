"""`LMM`: vision encoder -> connector -> LLM, as a plain `nn.Module` (no Lightning in here)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lmm.data.templates import IMAGE_PLACEHOLDER, Message
from lmm.data.tokenize import IGNORE_INDEX, IMAGE_TOKEN_ID, encode_segments
from lmm.model.spec import build
from lmm.model.splice import splice_images


@dataclass
class LMMOutput:
    logits: torch.Tensor  # (B, L, vocab) over the expanded sequence (text + visual tokens)
    attention_mask: torch.Tensor  # (B, L) of the expanded sequence
    labels: torch.Tensor | None = None  # (B, L) expanded labels, -100 on visual tokens
    loss: torch.Tensor | None = None  # mean next-token loss over labelled tokens


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[t + 1] from position t, over labelled tokens. In a
    packed row, a target in another segment than t (the next sample's first token) is ignored."""
    shift_logits = logits[:, :-1].flatten(0, 1).float()
    shift_labels = labels[:, 1:]
    if segment_ids is not None:
        shift_labels = shift_labels.masked_fill(segment_ids[:, 1:] != segment_ids[:, :-1], IGNORE_INDEX)
    shift_labels = shift_labels.flatten()
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (shift_labels != IGNORE_INDEX).sum().clamp(min=1)


class LMM(nn.Module):
    """Built from three component specs (Hydra configs or a checkpoint's config.json)."""

    def __init__(self, vision: Mapping, connector: Mapping, llm: Mapping):
        super().__init__()
        self.always_run_vision = False  # set by the trainer when the tower is sharded (FSDP)
        self.vision = build(vision)
        self.llm = build(llm)
        self.connector = build(connector, in_dim=self.vision.hidden_size, out_dim=self.llm.hidden_size)

    # Facts the data pipeline needs, owned by the components.
    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def template(self):
        return self.llm.template

    @property
    def image_transform(self):
        return self.vision.transform

    @property
    def num_visual_tokens(self) -> int:
        """Tokens per image in the LLM sequence: what the connector makes of the tower's tokens."""
        return self.connector.output_tokens(self.vision.num_tokens)

    def spec(self) -> dict:
        return {"vision": self.vision.spec(), "connector": self.connector.spec(), "llm": self.llm.spec()}

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_visual_tokens, llm hidden). A frozen tower runs without autograd.
        uint8 pixels (what the data pipeline ships) are normalised here, on the model's device."""
        if pixel_values.dtype == torch.uint8:
            pixel_values = self.vision.transform.normalize(pixel_values)
        tower_trains = any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(tower_trains and torch.is_grad_enabled()):
            features = self.vision(pixel_values)
        return self.connector(features)

    def _splice(self, input_ids, pixel_values, attention_mask, labels, padding_side, segment_ids=None):
        # Text-only batches never touch the vision tower, except when it is sharded (below).
        has_images = pixel_values is not None and pixel_values.shape[0] > 0
        image_embeds = self.encode_images(pixel_values) if has_images else None
        text_ids = input_ids.masked_fill(input_ids == IMAGE_TOKEN_ID, self.tokenizer.pad_token_id)
        text_embeds = self.llm.embed(text_ids)
        if not has_images and self.always_run_vision:
            # Under FSDP every rank must run the same sharded blocks in a step (their weights are
            # gathered collectively): a text-only batch on one rank while another has images would
            # hang or crash. One blank image goes through, joined to the graph with weight 0, so
            # the backward's gradient reductions match too.
            size = self.vision.transform.image_size
            blank = self.encode_images(torch.zeros(1, 3, size, size, device=text_embeds.device))
            text_embeds = text_embeds + 0 * blank.sum().to(text_embeds.dtype)
        if image_embeds is not None:
            image_embeds = image_embeds.to(text_embeds.dtype)
        return splice_images(input_ids, text_embeds, image_embeds, attention_mask, labels, padding_side, segment_ids)

    def _packed_rows(self, batch: int) -> int:
        """Rows to hand a packed batch to the LLM in. Flash attention finds the samples from the
        position ids only at batch size 1 (transformers' _is_packed_sequence) and would otherwise
        attend across them, so there the rows go end to end: each row starts at position 0, so rows
        stay separate. Eager/sdpa/flex get a block-diagonal mask per row (find_packed_sequence_indices)."""
        return 1 if "flash" in (self.llm.model.config._attn_implementation or "") else batch

    def forward(self, input_ids, pixel_values=None, attention_mask=None, labels=None, segment_ids=None) -> LMMOutput:
        """segment_ids (B, T): packed rows, 1, 2, ... per sample and 0 on padding (see splice_images)."""
        s = self._splice(input_ids, pixel_values, attention_mask, labels, "right", segment_ids)
        # Packed: no 2-D mask, so transformers reads the sample boundaries from the restarting
        # position ids (given a padding mask it would build one causal mask over the whole row).
        batch, width, dim = s.inputs_embeds.shape
        rows, mask = (batch, s.attention_mask) if segment_ids is None else (self._packed_rows(batch), None)
        out = self.llm.model(inputs_embeds=s.inputs_embeds.reshape(rows, -1, dim), attention_mask=mask,
                             position_ids=s.position_ids.reshape(rows, -1), use_cache=False)
        logits = out.logits.reshape(batch, width, -1)
        loss = causal_lm_loss(logits, s.labels, s.segment_ids) if labels is not None else None
        return LMMOutput(logits=logits, attention_mask=s.attention_mask, labels=s.labels, loss=loss)

    @torch.no_grad()
    def generate(self, input_ids, pixel_values=None, attention_mask=None, max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, **kwargs) -> torch.Tensor:
        """New token ids (B, <= max_new_tokens), KV-cached; prompts may be padded on either side."""
        s = self._splice(input_ids, pixel_values, attention_mask, None, "left")
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
        options = {"eos_token_id": self.tokenizer.eos_token_id, "pad_token_id": self.tokenizer.pad_token_id,
                   "use_cache": True, **sampling, **kwargs}
        return self.llm.model.generate(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask,
                                       max_new_tokens=max_new_tokens, **options)

    def prompt_ids(self, text: str, n_images: int = 0) -> torch.Tensor:
        """Token ids of a single-turn chat prompt ending where the assistant's answer starts."""
        content = (IMAGE_PLACEHOLDER + "\n") * n_images + text if IMAGE_PLACEHOLDER not in text else text
        segments = self.template.render([Message("user", content)], add_generation_prompt=True)
        return encode_segments(segments, self.tokenizer)[0]

    def chat(self, image=None, text: str = "", **gen) -> str:
        """Answer `text` about `image` (a PIL image, a path, a list of them, or None)."""
        images = [] if image is None else image if isinstance(image, (list, tuple)) else [image]
        pixels = [self.image_transform(Image.open(im) if isinstance(im, (str, Path)) else im) for im in images]
        device = next(self.parameters()).device
        ids = self.prompt_ids(text, len(images))[None].to(device)
        pixel_values = torch.stack(pixels).to(device) if pixels else None
        new = self.generate(ids, pixel_values, **gen)
        return self.tokenizer.decode(new[0], skip_special_tokens=True).strip()

    def save_pretrained(self, path) -> Path:
        from lmm.model.checkpoint import save_pretrained
        return save_pretrained(self, path)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> LMM:
        from lmm.model.checkpoint import load
        return load(path, **kwargs)

    @classmethod
    def from_hf_llava(cls, model_or_path, tokenizer=None) -> LMM:
        from lmm.model.hf_llava import from_hf_llava
        return from_hf_llava(model_or_path, tokenizer)
