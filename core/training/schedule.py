"""Learning-rate schedule shared by the trainers: linear warm-up, then cosine decay to zero, stepped per batch."""
from __future__ import annotations

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """torch's LinearLR (from lr/warmup up to lr) followed by CosineAnnealingLR over the remaining steps."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps == 0:
        return cosine
    if warmup_steps == 1:  # LinearLR needs two points: one warm-up step at full lr
        warmup = LinearLR(optimizer, start_factor=1.0, end_factor=1.0, total_iters=1)
    else:
        warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
