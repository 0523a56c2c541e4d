"""AdamW with a linear-warmup cosine schedule (LLaVA-1.5 / TinyLLaVA: 3% warmup, no weight decay)."""
from __future__ import annotations

import math

import torch
from transformers import get_cosine_schedule_with_warmup


def use_fused(params: list[torch.Tensor], fused: bool | None) -> bool:
    """`fused`: None (auto) fuses AdamW's update into one kernel when every parameter is on CUDA
    (torch's fused implementation; also for FSDP2's DTensor parameters); on the CPU the default
    (foreach) implementation stays."""
    if fused is not None:
        return bool(fused)
    return bool(params) and all(p.device.type == "cuda" for p in params)


def build_optimizer(params, total_steps: int, lr: float, weight_decay: float = 0.0, warmup_ratio: float = 0.03,
                    betas: tuple[float, float] = (0.9, 0.999), fused: bool | None = None):
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas),
                                  fused=use_fused(params, fused) or None)
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler
