"""Models: S-ResNet-34 starts as ResNet-34, loads local ImageNet files, and every registry model trains a step."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import sklearn
import torch
import torch.nn.functional as F
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import SVC
from torchvision.models import resnet34 as tv_resnet34

from core import settings
from core.data import phantom
from models.registry import MODELS, build_model
from models.s_resnet import VARIANTS, load_torchvision_weights, s_resnet34
from models.svm import CurvatureSVM

SCALE_KEYS = 3 + 4 + 6 + 3   # one residual_scale.weight per BasicBlock of ResNet-34


@pytest.fixture(scope="module")
def reference_resnet34():
    torch.manual_seed(0)
    model = tv_resnet34(weights=None, num_classes=3).eval()
    # Non-trivial BatchNorm statistics, so "identical output" is not identical by accident.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_s_resnet34_at_init_computes_resnet34(variant, reference_resnet34):
    model = s_resnet34(num_classes=3, in_channels=3, variant=variant, input_size=64)
    result = model.load_state_dict(reference_resnet34.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert len(result.missing_keys) == SCALE_KEYS
    assert all(key.endswith("residual_scale.weight") for key in result.missing_keys)
    model.eval()
    torch.manual_seed(1)
    for side in (64, 80):   # the matrices' own size and one that needs interpolation
        x = torch.rand(2, 3, side, side)
        with torch.no_grad():
            assert torch.allclose(model(x), reference_resnet34(x), atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_nonzero_weight_matrix_changes_the_output(variant, reference_resnet34):
    model = s_resnet34(num_classes=3, in_channels=3, variant=variant, input_size=64)
    model.load_state_dict(reference_resnet34.state_dict(), strict=False)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.layer3[1].residual_scale.weight.fill_(0.5)
        after = model(x)
    assert not torch.allclose(before, after, atol=1e-4)


def test_matrices_are_sized_per_stage_and_resized_for_other_inputs():
    model = s_resnet34(variant="matrix", input_size=64)
    assert [tuple(stage[0].residual_scale.weight.shape) for stage in
            (model.layer1, model.layer2, model.layer3, model.layer4)] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert tuple(s_resnet34(variant="channel").layer2[0].residual_scale.weight.shape) == (128, 1, 1)
    assert tuple(s_resnet34(variant="spatial").layer2[0].residual_scale.weight.shape) == (1, 28, 28)

    # A constant matrix resized bilinearly stays that constant: a model built for 64 px run on 128 px
    # must equal a model built for 128 px holding the same constant.
    small, large = s_resnet34(input_size=64).eval(), s_resnet34(input_size=128).eval()
    state = {k: v for k, v in small.state_dict().items() if not k.endswith("residual_scale.weight")}
    large.load_state_dict(state, strict=False)
    with torch.no_grad():
        for scale in small.residual_scales() + large.residual_scales():
            scale.weight.fill_(0.3)
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        assert torch.allclose(small(x), large(x), atol=1e-5)
    # and the resized matrices still learn
    small.train()
    small(torch.rand(2, 1, 96, 96)).sum().backward()
    assert all(scale.weight.grad is not None and scale.weight.grad.abs().sum() > 0 for scale in small.residual_scales())


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, spec in MODELS.items() if spec.kind == "torch"])
def test_every_torch_model_trains_one_step_on_grayscale(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, in_channels=1)
    spec = MODELS[name]
    images, labels = torch.rand(2, 1, 64, 64), torch.tensor([0, 2])

    captured = {}
    if spec.cam_layer is not None:   # the Grad-CAM layer exists and yields a feature map
        hook = model.get_submodule(spec.cam_layer).register_forward_hook(
            lambda module, args, output: captured.setdefault("output", output))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(images)
    assert logits.shape == (2, 3)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed > len(before) // 2
    if spec.cam_layer is not None:
        hook.remove()
        assert captured["output"].ndim == 4
    if name == "s_resnet34":
        assert all(scale.weight.grad.abs().sum() > 0 for scale in model.residual_scales())


def test_unknown_model_or_option_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="known models: s_resnet34, resnet34, resnet152, densenet121, cnn, rnn, svm"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="no option weights_path"):
        build_model("densenet121", weights_path="x.pth")
    with pytest.raises(ValueError, match="variant"):
        build_model("s_resnet34", variant="diagonal")


@pytest.mark.parametrize("name", ["s_resnet34", "resnet34"])
def test_missing_weights_file_says_so_and_never_downloads(name, tmp_path):
    missing = tmp_path / "resnet34-b627a593.pth"
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_model(name, weights_path=missing)


@pytest.fixture(scope="module")
def imagenet_like_file(tmp_path_factory):
    """A torchvision resnet34 state_dict as ImageNet ships it: RGB conv1, 1000-class head."""
    torch.manual_seed(3)
    reference = tv_resnet34(weights=None).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet34-imagenet.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


def test_imagenet_file_loads_into_grayscale_s_resnet34(imagenet_like_file):
    path, reference = imagenet_like_file
    model = s_resnet34(num_classes=3, in_channels=1, weights_path=path).eval()
    assert torch.equal(model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer3[2].conv2.weight, reference.layer3[2].conv2.weight)
    assert all(torch.count_nonzero(scale.weight) == 0 for scale in model.residual_scales())

    # A gray image is R = G = B: with the same head, the 1-channel model answers like ImageNet's RGB model.
    reference.fc = torch.nn.Linear(512, 3)
    reference.fc.load_state_dict(model.fc.state_dict())
    gray = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        assert torch.allclose(model(gray), reference(gray.repeat(1, 3, 1, 1)), atol=1e-4)

    left = load_torchvision_weights(s_resnet34(num_classes=3), path)
    assert left[:2] == ["fc.weight", "fc.bias"] and len(left) == 2 + SCALE_KEYS
    baseline = build_model("resnet34", weights_path=path)
    assert torch.equal(baseline.conv1.weight, model.conv1.weight)


def test_a_file_that_is_not_resnet_weights_is_a_value_error(tmp_path, imagenet_like_file):
    garbage = tmp_path / "notes.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="weights_only"):
        s_resnet34(weights_path=garbage)
    densenet = tmp_path / "densenet.pth"
    torch.save(build_model("densenet121").state_dict(), densenet)
    with pytest.raises(ValueError, match="conv1.weight"):
        s_resnet34(weights_path=densenet)


# --- SVM -------------------------------------------------------------------------------------------------

def curved_spines(count: int, seed: int, side: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Bright vertical bands bowed left (0), straight (1) or bowed right (2), with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float32)
    images = []
    for label in labels:
        bow = (-1, 0, 1)[label] * rng.uniform(8, 12)
        centre = side / 2 + rng.uniform(-4, 4) + bow * (1 - ((rows - side / 2) / (side / 2)) ** 2)
        image = np.exp(-((cols - centre) / 4.0) ** 2) + rng.normal(0, 0.05, (side, side))
        images.append(np.clip(image, 0, 1).astype(np.float32))
    return np.stack(images), labels


def test_svm_fits_predicts_and_round_trips_without_pickle(tmp_path):
    images, labels = curved_spines(30, seed=0)
    svm = build_model("svm").fit(images, labels)
    test_images, test_labels = curved_spines(15, seed=1)
    proba = svm.predict_proba(test_images)
    assert proba.shape == (15, 3)
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert (svm.predict(test_images) == test_labels).mean() >= 0.8

    # Our saved-array arithmetic is scikit-learn's sigmoid-calibrated SVC.
    reference = CalibratedClassifierCV(SVC(kernel="rbf", gamma="scale", class_weight="balanced"),
                                       method="sigmoid", ensemble=False, cv=3)
    reference.fit(svm.features(images), labels)
    assert np.allclose(proba, reference.predict_proba(svm.features(test_images)), atol=1e-10)

    path = svm.save(tmp_path / "svm.npz")
    with np.load(path, allow_pickle=False) as data:   # plain arrays only
        assert "header" in data.files
    loaded = CurvatureSVM.load(path)
    assert np.array_equal(loaded.predict_proba(test_images), proba)
    # any image size: each image is resized to the SVM's input size
    assert loaded.predict_proba([test_images[0][:50, :40]]).shape == (1, 3)


def test_svm_rejects_bad_input(tmp_path):
    images, labels = curved_spines(6, seed=2)
    with pytest.raises(ValueError, match="2-D grayscale"):
        build_model("svm").fit(images[:, None], labels)
    with pytest.raises(ValueError, match="at least 2 images"):
        build_model("svm").fit(images[:4], labels[:4])
    with pytest.raises(ValueError, match="in_channels=1"):
        build_model("svm", in_channels=3)
    bad = tmp_path / "svm.npz"
    bad.write_bytes(b"PK not really")
    with pytest.raises(ValueError, match="not a CerviCurve SVM file"):
        CurvatureSVM.load(bad)


def test_svm_refuses_a_file_from_another_scikit_learn_series(tmp_path):
    images, labels = curved_spines(12, seed=3)
    path = build_model("svm").fit(images, labels).save(tmp_path / "svm.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(str(arrays["header"]))
    assert header["sklearn"] == sklearn.__version__
    major, minor = sklearn.__version__.split(".")[:2]
    header["sklearn"] = f"{major}.{int(minor) + 1}.0"
    arrays["header"] = np.array(json.dumps(header))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=rf"scikit-learn {major}\.{int(minor) + 1}\.0, this is scikit-learn "
                                         rf"{re.escape(sklearn.__version__)}"):
        CurvatureSVM.load(path)
    # a patch release of the same series loads
    header["sklearn"] = f"{major}.{minor}.999"
    arrays["header"] = np.array(json.dumps(header))
    np.savez(path, **arrays)
    assert CurvatureSVM.load(path).predict(images).shape == (12,)


@pytest.mark.slow
def test_svm_classifies_a_tiny_phantom_set():
    def crops(seeds):
        images, labels = [], []
        for index, seed in enumerate(seeds):
            case = phantom.generate_case(seed, size=192, curvature_class=settings.CLASSES[index % 3])
            x1, y1, x2, y2 = (int(round(v)) for v in case.roi_box)
            images.append(case.image[y1:y2, x1:x2].astype(np.float32) / 255.0)
            labels.append(settings.CLASSES.index(case.curvature_class))
        return images, np.array(labels)

    images, labels = crops(range(60))
    test_images, test_labels = crops(range(100, 115))
    svm = build_model("svm").fit(images, labels)
    # chance is 1/3; 13 of 15 right on v2 phantoms from 36 films; v3 (wedged bodies) needs 60 for 12 of 15
    assert (svm.predict(test_images) == test_labels).mean() >= 0.7
