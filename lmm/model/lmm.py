"""`LMM`: vision encoder -> connector -> LLM, as a plain `nn.Module` (no Lightning in here)."""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from lmm.data.templates import IMAGE_PLACEHOLDER, Message
from lmm.data.tokenize import IMAGE_TOKEN_ID, encode_segments
from lmm.model.loss import LOSS_IMPLS, causal_lm_loss, post_head, trained_positions_loss
from lmm.model.meta import deferred_weights, parameters_on_meta
from lmm.model.spec import build
from lmm.model.splice import splice_images


@dataclass
class LMMOutput:
    # (B, L, vocab) over the expanded sequence (text + visual tokens); None for a forward with labels
    # unless asked for (return_logits=True): the loss alone never builds them
    logits: torch.Tensor | None
    attention_mask: torch.Tensor  # (B, L) of the expanded sequence
    labels: torch.Tensor | None = None  # (B, L) expanded labels, -100 on visual tokens
    loss: torch.Tensor | None = None  # mean next-token loss over labelled tokens


class LMM(nn.Module):
    """Built from three component specs (Hydra configs or a checkpoint's config.json)."""

    def __init__(self, vision: Mapping, connector: Mapping, llm: Mapping, on_meta: Collection[str] = ()):
        """`on_meta`: components built with their parameters on the meta device, their weights to
        be read later (lmm.model.lazy); the others are built (and initialised or loaded) for real."""
        super().__init__()
        self.always_run_vision = False  # set by the trainer under FSDP2, and under DDP when the tower or connector trains
        # How a forward with labels computes its loss (plain attributes the trainer may set):
        # "chunked" (the head on the trained positions only, `loss_chunk_tokens` rows at a time) or
        # "liger" (Liger-Kernel's fused linear cross-entropy, CUDA only); see lmm/model/loss.py.
        self.loss_impl = "chunked"
        self.loss_chunk_tokens = 4096
        with parameters_on_meta("vision" in on_meta), deferred_weights("vision" in on_meta):
            self.vision = build(vision)
        with parameters_on_meta("llm" in on_meta), deferred_weights("llm" in on_meta):
            self.llm = build(llm)
        with parameters_on_meta("connector" in on_meta):
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
            # gathered collectively), and DDP reduces every trained parameter's gradient: a text-only
            # batch on one rank while another has images would hang or crash. One blank image goes
            # through, joined to the graph with weight 0, so the backward's gradient reductions match too.
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

    def forward(self, input_ids, pixel_values=None, attention_mask=None, labels=None, segment_ids=None,
                return_logits: bool | None = None) -> LMMOutput:
        """segment_ids (B, T): packed rows, 1, 2, ... per sample and 0 on padding (see splice_images).
        return_logits: the full (B, L, vocab) logits in the output; by default only without labels.
        With labels and no logits, the LM head runs only on the positions with a trained target."""
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"unknown loss_impl {self.loss_impl!r}; valid: {list(LOSS_IMPLS)}")
        want_logits = labels is None if return_logits is None else bool(return_logits)
        s = self._splice(input_ids, pixel_values, attention_mask, labels, "right", segment_ids)
        # Packed: no 2-D mask, so transformers reads the sample boundaries from the restarting
        # position ids (given a padding mask it would build one causal mask over the whole row).
        batch, width, dim = s.inputs_embeds.shape
        rows, mask = (batch, s.attention_mask) if segment_ids is None else (self._packed_rows(batch), None)
        inputs = {"inputs_embeds": s.inputs_embeds.reshape(rows, -1, dim), "attention_mask": mask,
                  "position_ids": s.position_ids.reshape(rows, -1), "use_cache": False}
        transform = None if labels is None or want_logits else post_head(self.llm.model.config)
        if labels is not None and not want_logits and transform is None and self.loss_impl == "liger":
            raise ValueError(f"loss_impl='liger' is not available for LLM family "
                             f"{self.llm.model.config.model_type!r} (its LM head's transform is not known)")
        if transform is None:  # full logits: the HF causal LM's own forward
            logits = self.llm.model(**inputs).logits.reshape(batch, width, -1)
            loss = causal_lm_loss(logits, s.labels, s.segment_ids) if labels is not None else None
            return LMMOutput(logits=logits if want_logits else None, attention_mask=s.attention_mask,
                             labels=s.labels, loss=loss)
        # The decoder without its LM head (the final norm is inside it), then the head on the
        # trained positions only. FSDP2: the LM head belongs to the root unit (fully_shard(model) in
        # lmm/train/parallel.py), whose parameters are unsharded during this forward (and again in
        # the backward, where a chunk's head call is recomputed), so the head must be called here,
        # inside LMM.forward, never from outside it.
        hidden = self.llm.model.base_model(**inputs).last_hidden_state.reshape(batch, width, -1)
        loss = trained_positions_loss(hidden, s.labels, self.llm.model.get_output_embeddings(), s.segment_ids,
                                      transform, chunk_tokens=self.loss_chunk_tokens, impl=self.loss_impl)
        return LMMOutput(logits=None, attention_mask=s.attention_mask, labels=s.labels, loss=loss)

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

    @classmethod
    def from_tinyllava(cls, path, template: str | None = None) -> LMM:
        """A TinyLLaVA_Factory checkpoint folder (lmm.model.tinyllava); `template`: one of their names."""
        from lmm.model.tinyllava import from_tinyllava
        return from_tinyllava(path, template)
