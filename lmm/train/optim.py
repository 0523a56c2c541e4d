"""AdamW with a linear-warmup cosine schedule (LLaVA-1.5 / TinyLLaVA: 3% warmup, no weight decay)."""
from __future__ import annotations

import math

import torch
from transformers import get_cosine_schedule_with_warmup


def build_optimizer(params, total_steps: int, lr: float, weight_decay: float = 0.0, warmup_ratio: float = 0.03,
                    betas: tuple[float, float] = (0.9, 0.999)):
    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler
