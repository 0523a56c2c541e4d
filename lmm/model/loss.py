"""Next-token loss, computed only where it is trained.

A training batch trains a small part of its positions: the 729 visual tokens of a SigLIP image, the
prompts and the padding have no target. `trained_positions_loss` takes the LLM's final hidden
states (the HF model without its LM head), keeps the positions t whose target labels[t + 1] is
trained, and applies the LM head, the float32 upcast and the cross-entropy to those rows only, in
chunks of `chunk_tokens` rows: the (batch, length, vocab) logits never exist. `causal_lm_loss` is the
same loss from full logits (the path of a forward asked for its logits).

Which positions count is defined once, in `next_token_targets`: predicting labels[t + 1] from t,
and, in a packed row, not across a sample boundary (segment_ids[t + 1] != segment_ids[t]).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from lmm.data.tokenize import IGNORE_INDEX

LOSS_IMPLS = ("chunked", "liger")

# What each family's *ForCausalLM.forward does between its decoder's last hidden state and the
# logits, read from transformers' modeling code (tests/test_trained_positions_loss.py re-reads it, so
# a transformers release that changes a head fails there). A family not listed gets the full-logits
# path: correct, only not cheaper.
PLAIN_HEAD = frozenset({"llama", "mistral", "phi", "phi3", "qwen2", "qwen3", "stablelm", "gemma"})
SOFTCAP_HEAD = frozenset({"gemma2", "gemma3_text"})  # logits = tanh(logits / cap) * cap
MULTIPLY_HEAD = frozenset({"cohere", "cohere2"})  # logits = logits * config.logit_scale
DIVIDE_HEAD = frozenset({"granite"})  # logits = logits / config.logits_scaling
# config attributes of a post-head transform: a plain family that somehow has one is not plain
TRANSFORM_KEYS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class PostHead:
    """The family's transform of the LM head's output, applied to a chunk of logits (in the head's
    dtype, as transformers does, before the float32 upcast). `scale` multiplies, `divisor` divides,
    `softcap` caps; at most one of them is set."""

    def __init__(self, scale: float | None = None, divisor: float | None = None, softcap: float | None = None):
        self.scale, self.divisor, self.softcap = scale, divisor, softcap

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale is not None:
            logits = logits * self.scale
        if self.divisor is not None:
            logits = logits / self.divisor
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @property
    def input_scale(self) -> float:
        """The linear scale as a factor on the head's input (for a fused kernel)."""
        return (1.0 if self.scale is None else self.scale) / (1.0 if self.divisor is None else self.divisor)

    def __repr__(self) -> str:
        return f"PostHead(scale={self.scale}, divisor={self.divisor}, softcap={self.softcap})"


def post_head(config) -> PostHead | None:
    """The post-head transform of an HF causal LM's config, or None when the family is not known to
    compute `logits = transform(lm_head(last_hidden_state))` (then only full logits are safe)."""
    model_type = getattr(config, "model_type", None)
    if model_type in PLAIN_HEAD:
        if any(getattr(config, key, None) is not None for key in TRANSFORM_KEYS):
            return None
        return PostHead()
    if model_type in SOFTCAP_HEAD:
        return PostHead(softcap=getattr(config, "final_logit_softcapping", None))
    if model_type in MULTIPLY_HEAD:
        return PostHead(scale=config.logit_scale)
    if model_type in DIVIDE_HEAD:
        return PostHead(divisor=config.logits_scaling)
    return None


def next_token_targets(labels: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L - 1): the target of position t is labels[t + 1]; in a packed row, a target in another
    segment than t (the next sample's first token) is IGNORE_INDEX."""
    targets = labels[:, 1:]
    if segment_ids is not None:
        targets = targets.masked_fill(segment_ids[:, 1:] != segment_ids[:, :-1], IGNORE_INDEX)
    return targets


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of predicting labels[t + 1] from position t, over labelled tokens, from full
    logits (B, L, vocab). In a packed row, a target in another segment than t is ignored."""
    shift_logits = logits[:, :-1].flatten(0, 1).float()
    shift_labels = next_token_targets(labels, segment_ids).flatten()
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (shift_labels != IGNORE_INDEX).sum().clamp(min=1)


def _chunk_ce_sum(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, transform: PostHead) -> torch.Tensor:
    logits = transform(head(hidden))  # the head's own dtype (bf16 under mixed precision), as the HF model
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def trained_positions_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    segment_ids: torch.Tensor | None = None,
    transform: PostHead | None = None,
    chunk_tokens: int = 4096,
    impl: str = "chunked",
) -> torch.Tensor:
    """`causal_lm_loss(transform(head(hidden)), labels, segment_ids)`, with the head applied only to
    the positions that have a trained target.

    hidden (B, L, D): the LLM's final hidden states (after its final norm). With more than
    `chunk_tokens` trained positions the rows go through the head in chunks, each recomputed in the
    backward (activation checkpointing), so only one chunk's float32 logits is alive at a time, in
    the forward and in the backward; the gradients are exact. impl "liger": Liger-Kernel's fused
    linear cross-entropy (CUDA only), which never materialises more than its own small chunk.
    """
    if impl not in LOSS_IMPLS:
        raise ValueError(f"unknown loss_impl {impl!r}; valid: {list(LOSS_IMPLS)}")
    if not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"loss_chunk_tokens must be a positive int, got {chunk_tokens!r}")
    transform = transform or PostHead()
    targets = next_token_targets(labels, segment_ids)
    trained = targets != IGNORE_INDEX
    rows = hidden[:, :-1][trained]  # (N, D): gathered once; its backward scatters into the hidden states
    wanted = targets[trained]
    count = wanted.numel()
    if impl == "liger" and count > 0:
        total = _liger_ce_sum(rows, wanted, head, transform)
    elif count <= chunk_tokens:
        # One chunk (also N = 0: an empty head call keeps every parameter in the graph with a zero
        # gradient, as the full-logits loss does, so no rank of a sharded job skips a gradient).
        total = _chunk_ce_sum(rows, wanted, head, transform)
    else:
        chunks = zip(rows.split(chunk_tokens), wanted.split(chunk_tokens))
        if torch.is_grad_enabled():
            total = sum(checkpoint(_chunk_ce_sum, h, y, head, transform, use_reentrant=False) for h, y in chunks)
        else:
            total = sum(_chunk_ce_sum(h, y, head, transform) for h, y in chunks)
    return total / max(count, 1)


def _liger_ce_sum(rows: torch.Tensor, targets: torch.Tensor, head: nn.Module, transform: PostHead) -> torch.Tensor:
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError as error:
        raise RuntimeError("loss_impl='liger' needs Liger-Kernel (pip install 'lmm[liger]', a CUDA-only "
                           "Triton package); use loss_impl='chunked' otherwise") from error
    if not rows.is_cuda:
        raise RuntimeError(f"loss_impl='liger' runs on CUDA only, the hidden states are on {rows.device}; "
                           "use loss_impl='chunked'")
    if not isinstance(head, nn.Linear):
        raise TypeError(f"loss_impl='liger' needs an nn.Linear LM head, got {type(head).__name__}")
    weight, bias = head.weight, head.bias
    # What autocast would run the head in (a custom kernel is not autocast); else the weight's dtype.
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else weight.dtype
    rows, weight = rows.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    scale = transform.input_scale  # a linear scale of the logits is a scale of the head's input (and bias)
    if scale != 1.0:
        rows = rows * scale
        bias = None if bias is None else bias * scale
    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum", softcap=transform.softcap)
    total = loss_fn(weight, rows, targets, bias)
    return total[0] if isinstance(total, tuple) else total  # some releases return (loss, z_loss)

