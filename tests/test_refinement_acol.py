"""ACoL: branch B sees the features zeroed exactly where branch A's normalised class map is
>= δ; the CAM is the max of the two normalised maps; the erased class follows the labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsol.cams import minmax_normalize
from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import Batch
from wsol.methods import TrainState, build_method
from wsol.methods.acol import erase_features


def build(**params):
    params = {"mid_channels": 8, **params}
    return build_method(MethodConfig(name="acol", params=params), BackboneConfig(name="resnet18", cam_friendly=True), 3)


def test_erase_features_by_hand():
    feats = torch.arange(1.0, 9.0).view(1, 2, 2, 2)
    attention = torch.tensor([[[0.0, 0.69], [0.7, 1.0]]])
    out = erase_features(feats, attention, 0.7)
    want = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]], [[5.0, 6.0], [0.0, 0.0]]]])
    assert torch.equal(out, want)


@pytest.mark.parametrize("delta", [0.5, 0.9])
def test_erased_features_zero_exactly_where_first_cam_reaches_delta(delta):
    method = build(delta=delta).eval()
    images, labels = torch.rand(2, 3, 64, 64), torch.tensor([2, 0])
    with torch.no_grad():
        r = method.branches(images, labels)
    idx = torch.arange(2)
    attention = minmax_normalize(r["maps_a"][idx, labels])  # branch A's CAM of the label class
    assert torch.equal(r["attention"], attention)
    region = attention >= delta
    assert region.any() and (~region).any()  # the peak (1) is erased, the minimum (0) kept
    erased, feats = r["erased"], r["features"]
    assert torch.equal(erased, torch.where(region[:, None], torch.zeros_like(feats), feats))
    assert (feats[region[:, None].expand_as(feats)] != 0).any()  # something non-zero was erased
    # branch B is the second classifier applied to exactly those features
    assert torch.allclose(r["maps_b"], method.classifier_b(erased))
    assert torch.allclose(r["logits_b"], r["maps_b"].mean(dim=(2, 3)))


def test_erasing_follows_the_label_and_prediction():
    method = build().eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        r0 = method.branches(images, torch.tensor([0, 0]))
        r1 = method.branches(images, torch.tensor([1, 1]))
        rp = method.branches(images)  # no labels: branch A's predicted class
    assert not torch.equal(r0["attention"], r1["attention"])
    pred = rp["logits_a"].argmax(1)
    assert torch.equal(rp["targets"], pred)
    assert torch.equal(rp["attention"], method.branches(images, pred)["attention"])


@pytest.mark.parametrize("fuse", ["max", "mean"])
def test_cam_fuses_both_normalised_maps(fuse):
    method = build(fuse=fuse).eval()
    images, t = torch.rand(2, 3, 64, 48), torch.tensor([1, 2])
    with torch.no_grad():
        r = method.branches(images, t)
        cams = method.localize(images, t)
    a, b = minmax_normalize(r["maps_a"][torch.arange(2), t]), minmax_normalize(r["maps_b"][torch.arange(2), t])
    fused = torch.maximum(a, b) if fuse == "max" else (a + b) / 2
    want = minmax_normalize(F.interpolate(fused[:, None], size=(64, 48), mode="bilinear", align_corners=False)[:, 0])
    assert cams.shape == (2, 64, 48)
    assert torch.allclose(cams, want, atol=1e-6)


def test_loss_is_both_branches_cross_entropy():
    method = build().train()
    images, labels = torch.rand(2, 3, 64, 64), torch.tensor([0, 2])
    terms = method.training_step(Batch(images=images, labels=labels, image_ids=["a", "b"]), TrainState())
    r = method.branches(images, labels)  # train-mode BN: batch statistics, the same outputs
    assert torch.allclose(terms["ce_a"], F.cross_entropy(r["logits_a"], labels), atol=1e-6)
    assert torch.allclose(terms["ce_b"], F.cross_entropy(r["logits_b"], labels), atol=1e-6)
    assert torch.allclose(terms["total"], terms["ce_a"] + terms["ce_b"])
