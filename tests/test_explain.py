"""core.inference.explain: Grad-CAM maps from the registry's models, placed back on the radiograph."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn as nn

from core.inference.explain import CAM_METHODS, ExplainUnavailable, cam_to_image, explain, overlay
from models.registry import MODELS, build_model


@pytest.fixture(scope="module")
def s_resnet():
    torch.manual_seed(0)
    return build_model("s_resnet34", input_size=64).eval()


class BrightnessNet(nn.Module):
    """Class 0 = 'much bright tissue'. Its evidence map is the image itself, so we know where CAM must point."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.features[0].weight.fill_(1.0)
            self.features[0].bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_every_method_gives_a_unit_map_at_input_size(s_resnet, method):
    x = torch.randn(1, 1, 64, 80)  # not square: height and width must not be swapped
    with torch.no_grad():  # a page may call it inside no_grad; the map still needs gradients
        cam = explain(s_resnet, x, target_class=2, method=method, model_name="s_resnet34")
    assert cam.shape == (64, 80) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0
    assert cam.max() > 0.5  # normalised, not an empty map
    # the CAM's hooks are gone afterwards: repeated calls do not pile them up
    layer = s_resnet.get_submodule(MODELS["s_resnet34"].cam_layer)
    assert not layer._forward_hooks and not layer._backward_hooks


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_map_points_at_the_evidence(method):
    model = BrightnessNet()
    for p in model.parameters():  # frozen weights, as in a deployed model
        p.requires_grad_(False)
    image = torch.zeros(1, 1, 40, 60)
    image[0, 0, 5:15, 40:55] = 1.0  # bright patch top right
    cam = explain(model, image, target_class=0, method=method, layer="features.1")
    row, col = np.unravel_index(np.argmax(cam), cam.shape)
    assert 5 <= row < 15 and 40 <= col < 55
    assert cam[30:, :30].max() < 0.1  # nothing where the image is empty


def test_models_without_a_feature_map_say_so():
    rnn = build_model("rnn")
    with pytest.raises(ExplainUnavailable, match="no convolutional feature map.*rnn.*svm|svm.*rnn"):
        explain(rnn, torch.randn(1, 1, 64, 64), 0, model_name="rnn")
    with pytest.raises(ExplainUnavailable, match="model_name"):
        explain(rnn, torch.randn(1, 1, 64, 64), 0)
    with pytest.raises(ExplainUnavailable, match="no layer 'layer9'"):
        explain(BrightnessNet(), torch.randn(1, 1, 8, 8), 0, layer="layer9")
    with pytest.raises(ValueError, match="gradcam, gradcam\\+\\+, eigencam, layercam"):
        explain(BrightnessNet(), torch.randn(1, 1, 8, 8), 0, method="scorecam", layer="features")


def test_two_threads_share_one_model(s_resnet):
    # Two sessions, two different images and classes, one model. Without the per-model lock each CAM's
    # hooks record the other's pass too: the maps come out wrong (and torch can crash).
    torch.manual_seed(1)
    inputs = [torch.randn(1, 1, 64, 64) for _ in range(2)]
    alone = [explain(s_resnet, inputs[i], i, "gradcam", model_name="s_resnet34") for i in range(2)]
    for _ in range(3):
        results, errors = {}, []
        barrier = threading.Barrier(2)

        def work(i):
            try:
                barrier.wait()
                results[i] = explain(s_resnet, inputs[i], i, "gradcam", model_name="s_resnet34")
            except Exception as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors and set(results) == {0, 1}
        for i in range(2):
            assert np.allclose(results[i], alone[i], atol=1e-4)


def test_training_mode_is_restored():
    model = BrightnessNet().train()
    explain(model, torch.rand(1, 1, 16, 16), 0, layer="features.1")
    assert model.training


def test_cam_to_image_places_the_crop_map_in_its_box():
    cam = np.zeros((10, 10), np.float32)
    cam[:5, :5] = 1.0  # top-left quarter of the crop is hot
    full = cam_to_image(cam, [20, 40, 60, 120], (200, 100))  # box 40 x 80 px; image H 200 x W 100
    assert full.shape == (200, 100)
    assert full[40:120, 20:60].max() == pytest.approx(1.0)
    assert full[50, 25] == pytest.approx(1.0) and full[110, 55] == pytest.approx(0.0)
    outside = full.copy()
    outside[40:120, 20:60] = 0
    assert outside.max() == 0.0
    # a crop region reaching past the image keeps its scale; only the inside part is drawn
    edge = cam_to_image(np.ones((8, 8), np.float32), [-10, -10, 30, 30], (50, 50))
    assert edge[:30, :30].min() == pytest.approx(1.0) and edge[30:, :].max() == 0.0 and edge[:, 30:].max() == 0.0


def test_overlay_colours_only_where_the_map_is_hot():
    pixels = np.full((30, 40), 0.5, np.float32)
    cam = np.zeros((30, 40), np.float32)
    cam[10:20, 10:20] = 1.0
    rgb = overlay(pixels, cam, alpha=0.6)
    assert rgb.shape == (30, 40, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 128).all()  # cold: the plain gray radiograph
    hot = rgb[15, 15].astype(int)
    assert hot[0] > hot[2] + 60  # jet's hot end is red


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_one_pass_gives_the_full_backward_map_and_the_networks_logits(s_resnet, method):
    """The pipeline classifies and explains with one forward pass whose backward stops at the target layer:
    the map must be the package's own (full backward) map, and the logits the plain forward's."""
    from core.inference.explain import cam_class, explain_with_logits

    torch.manual_seed(2)
    x = torch.randn(1, 1, 64, 64)
    layer = s_resnet.get_submodule(MODELS["s_resnet34"].cam_layer)
    with cam_class(method)(model=s_resnet, target_layers=[layer]) as reference:
        expected = reference(input_tensor=x.clone().requires_grad_(True), targets=None)[0]
    cam, logits = explain_with_logits(s_resnet, x, None, method, model_name="s_resnet34")
    assert np.allclose(cam, np.clip(expected, 0, 1), atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(logits, s_resnet(x), atol=1e-4)
    assert not layer._forward_hooks and all(p.grad is None for p in s_resnet.parameters())
