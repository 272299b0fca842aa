"""Numerical agreement with pytorch-grad-cam and torchcam where the definitions coincide.

Needs the benchmark extra (``pip install grad-cam torchcam``); skipped without it.
Same model, inputs and targets. pytorch-grad-cam's output (ReLU, min-max, bilinear resize,
min-max again) is our CAM-contract output; torchcam returns the min-max normalised
low-resolution map, compared with our ``raw=True`` map min-max normalised.
Not compared (different definitions): Score-CAM/SS-CAM/IS-CAM (the peers weigh channels by
softmax_k of masked-input logits; we use the confidence increase of Eq. 12), torchcam's
Grad-CAM++ (its α division is applied to a copy and has no effect).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from wsol.cams import minmax_normalize
from wsol.explain import AblationCAM, GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM

pgc = pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

SIZE = 64


class SmallNet(nn.Module):
    """conv stem -> layer3 (target) -> layer4 (conv+ReLU, so gradients vary over space) -> GAP -> fc."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(24, 32, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.layer4(self.layer3(self.stem(x))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        model.fc.weight.mul_(30000.0)  # large gradients: the peers' eps (1e-6 in Grad-CAM++ α) becomes negligible
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        t = model(x).argmax(1)  # predicted: positive logits (Ablation-CAM's division)
    return model, x, t


@pytest.mark.parametrize(
    "ours,peer",
    [(GradCAM, "GradCAM"), (GradCAMPlusPlus, "GradCAMPlusPlus"), (XGradCAM, "XGradCAM"), (LayerCAM, "LayerCAM"),
     (AblationCAM, "AblationCAM")],
)
def test_matches_pytorch_grad_cam(setup, ours, peer):
    model, x, t = setup
    cams = ours(model, "layer3")(x, t)
    with getattr(pgc, peer)(model=model, target_layers=[model.layer3]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t]))
    assert cams.shape == theirs.shape and float(cams.amax()) == 1.0
    assert torch.allclose(cams, theirs, atol=1e-5), float((cams - theirs).abs().max())


@pytest.mark.parametrize("ours,peer", [(GradCAM, "GradCAM"), (XGradCAM, "XGradCAM"), (LayerCAM, "LayerCAM")])
def test_matches_torchcam(setup, ours, peer):
    model, x, t = setup
    raw = ours(model, "layer3")(x, t, raw=True)
    with getattr(torchcam_methods, peer)(model, "layer3", input_shape=(3, SIZE, SIZE)) as ex:
        scores = model(x)
        theirs = ex(class_idx=t.tolist(), scores=scores)[0].detach()
    assert torch.allclose(minmax_normalize(raw), theirs, atol=1e-5), float((minmax_normalize(raw) - theirs).abs().max())
