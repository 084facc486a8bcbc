"""Class activation maps: which part of the cervical crop drove the network's class.

Built on the grad-cam package (pytorch-grad-cam). Four methods, one small mapping name -> class:
``gradcam``, ``gradcam++``, ``eigencam`` (gradient-free: the first principal component of the
activations, so it ignores the target class) and ``layercam``.

The target layer comes from the model registry (``ModelSpec.cam_layer``, a dotted attribute path such
as ``layer4.2``). Models without one cannot be explained: the SVM (HOG features, no layers) and the
RNN (a recurrent network over image rows, no spatial feature map) have ``cam_layer=None`` in
``models.registry``; asking for their map raises :class:`ExplainUnavailable`.

A CAM object puts the model in eval mode and hooks the target layer while it runs, so two callers
sharing one model (several Streamlit sessions) must take turns: :func:`model_lock` hands out one lock
per model object, and both :func:`explain` and the pipeline's forward pass hold it.
"""
from __future__ import annotations

import math
import threading
import weakref

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

# method name -> pytorch_grad_cam class; imported on first use, so listing the methods (CLI help,
# page widgets) does not load torch and grad-cam.
CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}


def cam_class(method: str):
    """The grad-cam class of a method name; ValueError listing the names for an unknown one."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of: {', '.join(CAM_METHODS)}")
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, CAM_METHODS[method])


class ExplainUnavailable(ValueError):
    """The model has no layer a class activation map can be taken from, or the layer path is wrong."""


_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: object) -> "threading.RLock":
    """The one (re-entrant) lock of this model object; hold it around any forward pass on a shared model."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


def resolve_layer(model: torch.nn.Module, model_name: str | None = None,
                  layer: str | torch.nn.Module | None = None) -> torch.nn.Module:
    """The target layer: ``layer`` when given (a module or a dotted path), else the registry's ``cam_layer``."""
    import torch

    if isinstance(layer, torch.nn.Module):
        return layer
    if layer is None:
        from models.registry import MODELS

        if model_name is None:
            raise ExplainUnavailable("cannot tell which registry model this is: pass model_name or layer")
        spec = MODELS.get(model_name)
        if spec is None:
            raise ExplainUnavailable(f"unknown model {model_name!r}; known: {', '.join(MODELS)}")
        if spec.cam_layer is None:
            without = ", ".join(n for n, s in MODELS.items() if s.cam_layer is None)
            raise ExplainUnavailable(
                f"model {model_name!r} has no convolutional feature map to explain "
                f"(models without a Grad-CAM layer: {without})"
            )
        layer = spec.cam_layer
    try:
        return model.get_submodule(layer)
    except AttributeError as error:
        raise ExplainUnavailable(f"the model has no layer {layer!r} ({error})") from None


def explain(model: torch.nn.Module, input_tensor: torch.Tensor, target_class: int | None,
            method: str = "gradcam", layer: str | torch.nn.Module | None = None,
            model_name: str | None = None) -> np.ndarray:
    """Map of evidence for ``target_class`` (None = the predicted class) over the network's input.

    ``input_tensor`` is the normalised crop, ``C x H x W`` or ``1 x C x H x W``. Returns ``float32``
    ``H x W`` in ``[0, 1]`` at the input size.
    """
    return explain_with_logits(model, input_tensor, target_class, method, layer, model_name)[0]


def explain_with_logits(model: torch.nn.Module, input_tensor: torch.Tensor, target_class: int | None,
                        method: str = "gradcam", layer: str | torch.nn.Module | None = None,
                        model_name: str | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """The map of :func:`explain` and the network's logits (``1 x classes``) from the same forward pass, so a
    caller that wants both (the pipeline) runs the network once.

    The backward pass stops at the target layer: its output is made a leaf of the graph, so gradients reach
    the layer (all any CAM method reads) without being pushed through the layers below it. That also gives
    gradients when the weights are frozen, and the same map as a full backward pass."""
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    method_class = cam_class(method)
    target_layer = resolve_layer(model, model_name, layer)
    batch = input_tensor if input_tensor.dim() == 4 else input_tensor.unsqueeze(0)
    if batch.shape[0] != 1:
        raise ValueError(f"explain takes one image at a time, got a batch of {batch.shape[0]}")
    device = next(model.parameters()).device
    batch = batch.detach().to(device)
    targets = None if target_class is None else [ClassifierOutputTarget(int(target_class))]
    maps = logits = None
    with model_lock(model):
        was_training = model.training
        # registered before the CAM object's own hooks, so they record the leaf and its gradient
        cut = target_layer.register_forward_hook(lambda module, args, output: output.detach().requires_grad_(True))
        try:
            # Gradients are needed even when a caller (a page, a test) runs under no_grad.
            with torch.enable_grad(), method_class(model=model, target_layers=[target_layer]) as cam:
                maps = cam(input_tensor=batch, targets=targets)
                logits = cam.outputs.detach().float().cpu()
        finally:
            cut.remove()
            model.train(was_training)
            model.zero_grad(set_to_none=True)
    if maps is None:  # the package's `with` block swallows IndexError (a layer path into the wrong place)
        raise ExplainUnavailable(f"{method} failed on layer {target_layer.__class__.__name__} of this model")
    return np.clip(np.nan_to_num(maps[0].astype(np.float32)), 0.0, 1.0), logits


def cam_to_image(cam: np.ndarray, roi_box, image_shape: tuple[int, int]) -> np.ndarray:
    """A map over the ROI crop placed back in the original image (``H x W``); zero outside the box.

    ``roi_box`` is the region the crop was cut from (``core.training.crops.crop_box``: the ROI plus its margin),
    which may reach past the image. Its pixel extent (floor of the start, ceil of the end) is the one the
    trainer's crop uses; the map is resized to it and the part inside the image kept.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    full = np.zeros((height, width), dtype=np.float32)
    x1, y1, x2, y2 = (float(v) for v in roi_box)
    left, top = math.floor(x1), math.floor(y1)
    box_w, box_h = max(1, math.ceil(x2) - left), max(1, math.ceil(y2) - top)
    inside_l, inside_t = max(0, left), max(0, top)
    inside_r, inside_b = min(width, left + box_w), min(height, top + box_h)
    if inside_r <= inside_l or inside_b <= inside_t:
        return full
    resized = cv2.resize(np.asarray(cam, dtype=np.float32), (box_w, box_h), interpolation=cv2.INTER_LINEAR)
    # linear interpolation of a map in [0, 1] stays in [0, 1]: no clip over the whole film
    full[inside_t:inside_b, inside_l:inside_r] = resized[inside_t - top:inside_b - top, inside_l - left:inside_r - left]
    return full


def overlay(pixels: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The radiograph in gray with the map in the jet colormap on top, as ``uint8`` RGB ``H x W x 3``.

    The colour's opacity grows with the map's value (``alpha`` at 1), so areas the network ignored,
    and everything outside the ROI box, keep the plain radiograph rather than a blue veil.
    """
    pixels = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    if cam.shape != pixels.shape:
        cam = cv2.resize(cam, (pixels.shape[1], pixels.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.round(cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    weight = (float(alpha) * cam)[..., None]
    blended = (1.0 - weight) * pixels[..., None] + weight * heat
    return np.round(np.clip(blended, 0.0, 1.0) * 255).astype(np.uint8)
