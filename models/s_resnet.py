"""S-ResNet-34: ResNet-34 with a learnable weight matrix inside every residual block.

RECONSTRUCTION, not the authors' network. Liang et al. (BMC Musculoskeletal Disorders 2025,
doi 10.1186/s12891-025-09273-9) describe S-ResNet-34 only in an abstract ("a learnable weight matrix in
the residual blocks"); their code, hyper-parameters and the exact placement of the matrix are not public.
This module is our reading of it:

    out = relu(residual(x) * (1 + W) + shortcut(x))

``W`` is zero-initialised, so at initialisation S-ResNet-34 computes exactly ResNet-34, and a torchvision
ImageNet ``resnet34`` state_dict loads unchanged. Only the ``W`` keys are new (``layer{1..4}.{i}.residual_scale.weight``,
16 of them, one per BasicBlock) and they are the only keys loaded with ``strict=False``.

Variants of ``W`` (for the ablation; the benchmark decides the default):
  "matrix"   C x H x W at the stage's feature size for ``input_size`` (default)
  "channel"  C x 1 x 1 (a per-channel gain, like a fixed squeeze-excitation)
  "spatial"  1 x H x W (a per-position gain shared by the channels)
  "gated"    C x H x W, applied as ``2 * sigmoid(W)`` (bounded in (0, 2), 1 at initialisation)
For an input of another size the H x W matrices are resized bilinearly to the feature map.

Layout follows torchvision's resnet.py: helper -> block -> network -> one-line builder; the attribute names
(conv1, bn1, layer1..4, fc) are torchvision's, so its checkpoints and Grad-CAM paths ("layer4.2") apply.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

VARIANTS = ("matrix", "channel", "spatial", "gated")
RESNET34_LAYERS = (3, 4, 6, 3)
SCALE_KEY_SUFFIX = "residual_scale.weight"


# --- helpers ---------------------------------------------------------------------------------------------

def stage_sides(input_size: int) -> tuple[int, int, int, int]:
    """Feature-map side of layer1..layer4 for a square input (conv1 /2, maxpool /2, then /2 per stage)."""
    side = math.ceil(math.ceil(input_size / 2) / 2)
    sides = [side]
    for _ in range(3):
        side = math.ceil(side / 2)
        sides.append(side)
    return tuple(sides)  # type: ignore[return-value]


def conv_with_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh copy of a first convolution that reads ``in_channels`` planes (1 for a radiograph)."""
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
    return new


class ResidualScale(nn.Module):
    """Multiplies a residual branch element-wise by ``1 + W`` (or ``2 * sigmoid(W)`` when gated)."""

    def __init__(self, variant: str, channels: int, side: int) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown S-ResNet variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        shape = {"matrix": (channels, side, side), "gated": (channels, side, side),
                 "channel": (channels, 1, 1), "spatial": (1, side, side)}[variant]
        self.variant = variant
        self.weight = nn.Parameter(torch.zeros(shape))

    def forward(self, residual: Tensor) -> Tensor:
        weight = self.weight
        spatial = residual.shape[-2:]
        if weight.shape[-2:] != (1, 1) and weight.shape[-2:] != spatial:
            # Another input size than the one the matrix was built for: stretch it over the feature map.
            weight = F.interpolate(weight.unsqueeze(0), size=spatial, mode="bilinear", align_corners=False)[0]
        factor = 2.0 * torch.sigmoid(weight) if self.variant == "gated" else 1.0 + weight
        return residual * factor

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, shape={tuple(self.weight.shape)}"


# --- block -----------------------------------------------------------------------------------------------

class ScaledBasicBlock(BasicBlock):
    """torchvision's BasicBlock with a ``residual_scale`` on the residual branch before the addition.

    Built with an identity scale; ``SResNet`` installs the learnable one, because only the network knows
    each stage's feature size.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.residual_scale: nn.Module = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.residual_scale(out)
        return self.relu(out + identity)


# --- network ---------------------------------------------------------------------------------------------

class SResNet(ResNet):
    """A torchvision ResNet of ScaledBasicBlocks, with a first convolution for ``in_channels`` planes."""

    def __init__(self, layers=RESNET34_LAYERS, num_classes: int = 3, in_channels: int = 1,
                 variant: str = "matrix", input_size: int = 224) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown S-ResNet variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if not isinstance(input_size, int) or input_size < 32:
            raise ValueError(f"input_size must be an integer of at least 32 px, got {input_size!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        super().__init__(ScaledBasicBlock, list(layers), num_classes=num_classes)
        self.conv1 = conv_with_in_channels(self.conv1, in_channels)
        self.variant = variant
        self.input_size = input_size
        for stage, side in zip((self.layer1, self.layer2, self.layer3, self.layer4), stage_sides(input_size)):
            for block in stage:
                block.residual_scale = ResidualScale(variant, block.bn2.num_features, side)

    def residual_scales(self) -> list[ResidualScale]:
        return [m for m in self.modules() if isinstance(m, ResidualScale)]


# --- weights ---------------------------------------------------------------------------------------------

def load_torchvision_weights(model: ResNet, weights_path: str | Path) -> list[str]:
    """Load a local torchvision ResNet state_dict (e.g. ImageNet ``resnet34-b627a593.pth``) into ``model``.

    conv1's RGB kernels are summed into one grayscale channel (a gray image is R = G = B, so the response
    is unchanged); a head of another size (ImageNet's 1000 classes) is left at its initial values; S-ResNet's
    ``residual_scale`` matrices stay at zero. Returns the keys left at their initial values. Never downloads.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ResNet weights file not found: {path}. CerviCurve never downloads weights; copy torchvision's "
            "ImageNet resnet34 file (resnet34-b627a593.pth) to this machine and give its path, "
            "or leave weights_path empty to start from scratch.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; the user needs one message
        raise ValueError(f"{path} is not a torch state_dict readable with weights_only=True ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a CerviCurve checkpoint {"state_dict", "meta"}
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise ValueError(f"{path} is not a torchvision ResNet state_dict (it has no conv1.weight)")

    own = model.state_dict()
    state = dict(state)
    state["conv1.weight"] = _adapt_input_channels(state["conv1.weight"], own["conv1.weight"].shape[1], path)
    left_at_init = []
    for key in ("fc.weight", "fc.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            del state[key]  # ImageNet's 1000-class head does not fit the curvature classes
            left_at_init.append(key)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k in state if k in own and state[k].shape != own[k].shape]
    not_allowed = [k for k in missing if not k.endswith(SCALE_KEY_SUFFIX) and k not in left_at_init]
    if not_allowed or unexpected or wrong_shape:
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: missing {not_allowed[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shape {wrong_shape[:4]}. Is it a torchvision resnet34 file?")
    model.load_state_dict(state, strict=False)
    return left_at_init + [k for k in missing if k.endswith(SCALE_KEY_SUFFIX)]


def _adapt_input_channels(weight: Tensor, in_channels: int, path: Path) -> Tensor:
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"{path}: conv1 reads {weight.shape[1]} channels; only RGB (3) can be adapted")
    gray = weight.sum(dim=1, keepdim=True)
    return gray.repeat(1, in_channels, 1, 1) / in_channels


# --- builder ---------------------------------------------------------------------------------------------

def s_resnet34(num_classes: int = 3, in_channels: int = 1, variant: str = "matrix", input_size: int = 224,
               weights_path: str | Path | None = None) -> SResNet:
    """S-ResNet-34 (reconstruction); ``weights_path``: optional local torchvision ImageNet resnet34 file."""
    model = SResNet(RESNET34_LAYERS, num_classes, in_channels, variant, input_size)
    if weights_path:
        load_torchvision_weights(model, weights_path)
    return model
