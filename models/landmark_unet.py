"""A small U-Net that turns a ROI crop into one heatmap per landmark, read out by soft-argmax.

Why heatmaps: a Cobb angle hangs on endplate corners a few pixels apart, so the points must be right to about
1 % of the C2-C7 length. Heatmaps keep the image's geometry in the output (each cell votes for "here"), which
trains to that precision from scratch in minutes on a CPU, where direct coordinate regression (YOLO-pose) does
not (measured in core/training/landmarks.py). Soft-argmax (the probability-weighted mean of the cell centres, also
called integral regression) gives sub-cell coordinates and is differentiable, so the loss is on the points.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_WIDTHS = (24, 32, 64, 128, 160)


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class LandmarkUNet(nn.Module):
    """``(N, 1, S, S)`` crop -> ``(N, K, S/4, S/4)`` heatmap logits.

    Five stride-2 encoder stages (S/32 at the bottom, so every cell sees the whole crop and can tell C3 from
    C4) and three decoder stages with skip connections back up to S/4.
    """

    def __init__(self, num_landmarks: int = 23, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"widths needs 5 numbers (one per encoder stage), got {widths}")
        w = tuple(int(v) for v in widths)
        self.widths = w
        self.encoder = nn.ModuleList([_block(1, w[0], 2)] + [_block(w[i - 1], w[i], 2) for i in range(1, 5)])
        self.decoder = nn.ModuleList([_block(w[4] + w[3], w[3], 1), _block(w[3] + w[2], w[2], 1),
                                      _block(w[2] + w[1], w[1], 1)])
        self.head = nn.Conv2d(w[1], num_landmarks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        y = features[4]
        for stage, skip in zip(self.decoder, (features[3], features[2], features[1])):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = stage(torch.cat([y, skip], dim=1))
        return self.head(y)


def soft_argmax(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points, probabilities)``: points ``(N, K, 2)`` as (x, y) in [-1, 1] (cell centres, align_corners=False
    convention) and the softmax maps ``(N, K, H, W)``."""
    n, k, h, w = logits.shape
    prob = logits.flatten(2).softmax(-1).view(n, k, h, w)
    xs = (torch.arange(w, device=logits.device, dtype=prob.dtype) + 0.5) / w * 2 - 1
    ys = (torch.arange(h, device=logits.device, dtype=prob.dtype) + 0.5) / h * 2 - 1
    x = (prob.sum(2) * xs).sum(-1)
    y = (prob.sum(3) * ys).sum(-1)
    return torch.stack([x, y], dim=-1), prob


def peak_mass(prob: torch.Tensor, points: torch.Tensor, radius_cells: float = 2.0) -> torch.Tensor:
    """``(N, K)`` share of each heatmap within ``radius_cells`` of its point: near 1 for a sharp single peak,
    low when the network is unsure where the landmark is (no spine in the crop, a hidden vertebra)."""
    n, k, h, w = prob.shape
    xs = (torch.arange(w, device=prob.device, dtype=prob.dtype) + 0.5) / w * 2 - 1
    ys = (torch.arange(h, device=prob.device, dtype=prob.dtype) + 0.5) / h * 2 - 1
    dx = (xs[None, None, None, :] - points[..., 0, None, None]) * (w / 2)
    dy = (ys[None, None, :, None] - points[..., 1, None, None]) * (h / 2)
    near = (dx ** 2 + dy ** 2) <= radius_cells ** 2
    return (prob * near).sum((-1, -2))
