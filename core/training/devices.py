"""Which torch device a run or a prediction uses; shared by training and inference."""
from __future__ import annotations

import torch

from core.runs.configs import ConfigError


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{requested}' asked for, but this machine has no usable CUDA GPU (use auto or cpu)")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' asked for, but this machine has no Apple GPU (use auto or cpu)")
    if requested == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(requested)
