"""The study's comparison networks: ResNet-34, ResNet-152, DenseNet-121, a plain CNN and a row-reading RNN.

The torchvision models are built with ``weights=None`` (nothing is downloaded) and their first convolution
reads ``in_channels`` planes (1 for a radiograph). The CNN and the RNN are our own small baselines: the
paper names "CNN" and "RNN" without describing them.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tv

from models.s_resnet import conv_with_in_channels, load_torchvision_weights


def resnet34(num_classes: int = 3, in_channels: int = 1, weights_path: str | Path | None = None) -> tv.ResNet:
    """torchvision ResNet-34; ``weights_path``: optional local ImageNet file (RGB conv1 summed to gray)."""
    model = tv.resnet34(weights=None, num_classes=num_classes)
    model.conv1 = conv_with_in_channels(model.conv1, in_channels)
    if weights_path:
        load_torchvision_weights(model, weights_path)
    return model


def resnet152(num_classes: int = 3, in_channels: int = 1) -> tv.ResNet:
    model = tv.resnet152(weights=None, num_classes=num_classes)
    model.conv1 = conv_with_in_channels(model.conv1, in_channels)
    return model


def densenet121(num_classes: int = 3, in_channels: int = 1) -> tv.DenseNet:
    model = tv.densenet121(weights=None, num_classes=num_classes)
    model.features.conv0 = conv_with_in_channels(model.features.conv0, in_channels)
    return model


class PlainCNN(nn.Module):
    """Conv3x3-BN-ReLU-MaxPool blocks, global average pooling, dropout, linear head."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256, 256),
                 dropout: float = 0.3) -> None:
        super().__init__()
        blocks, planes = [], in_channels
        for width in widths:
            blocks.append(nn.Sequential(
                nn.Conv2d(planes, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)))
            planes = width
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                        nn.Linear(planes, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class RowGRU(nn.Module):
    """A bidirectional GRU that reads the radiograph row by row, top (C2) to bottom (C7) and back.

    The image is first average-pooled to ``rows x row_features`` so any input size gives the same sequence
    shape; the last layer's final hidden states of both directions feed a linear head.
    """

    def __init__(self, num_classes: int = 3, in_channels: int = 1, rows: int = 64, row_features: int = 64,
                 hidden_size: int = 128, num_layers: int = 2, dropout: float = 0.2) -> None:
        super().__init__()
        self.rows, self.row_features = rows, row_features
        self.norm = nn.LayerNorm(in_channels * row_features)
        self.gru = nn.GRU(in_channels * row_features, hidden_size, num_layers=num_layers, batch_first=True,
                          bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.adaptive_avg_pool2d(x, (self.rows, self.row_features))      # N, C, rows, features
        sequence = x.permute(0, 2, 1, 3).flatten(2)                        # N, rows, C * features
        _, hidden = self.gru(self.norm(sequence))                          # hidden: layers * 2, N, hidden
        return self.head(torch.cat((hidden[-2], hidden[-1]), dim=1))


def plain_cnn(num_classes: int = 3, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128, 256, 256),
              dropout: float = 0.3) -> PlainCNN:
    return PlainCNN(num_classes, in_channels, tuple(widths), dropout)


def row_rnn(num_classes: int = 3, in_channels: int = 1, rows: int = 64, row_features: int = 64,
            hidden_size: int = 128, num_layers: int = 2, dropout: float = 0.2) -> RowGRU:
    return RowGRU(num_classes, in_channels, rows, row_features, hidden_size, num_layers, dropout)
