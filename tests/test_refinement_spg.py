"""SPG: seeds follow the thresholds on hand-made maps (strict > / <, background wins, the
0.7·max fallback when the foreground is tiny), the seeded BCE ignores 255, each loss term
is the BCE of its branch against the seeds of its guide, taps default per backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsol.cams import to_cam
from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.methods import TrainState, build_method
from wsol.methods.spg import seeded_bce, spg_seeds

IGN = 255.0  # ignore


def test_seeds_follow_the_thresholds():
    att = torch.tensor([[[0.0, 0.05, 0.1, 0.3], [0.5, 0.69, 0.7, 0.71], [0.9, 1.0, 0.2, 0.09]]])
    seeds = spg_seeds(att, high=0.7, low=0.1, min_fg=0)
    want = torch.tensor([[[0, 0, IGN, IGN], [IGN, IGN, IGN, 1], [1, 1, IGN, 0]]])
    assert torch.equal(seeds, want)


def test_background_wins_over_foreground():
    att = torch.tensor([[[0.2, 0.6], [0.8, 1.0]]])  # 0.6 is both > high and < low: background
    assert torch.equal(spg_seeds(att, high=0.5, low=0.7, min_fg=0), torch.tensor([[[0.0, 0.0], [1.0, 1.0]]]))


def test_tiny_foreground_falls_back_to_fraction_of_max():
    # image 0: 40 pixels > 0.5 (enough); image 1: peak 0.4 < high, so fg = (> 0.7·0.4 = 0.28)
    a0 = torch.zeros(10, 10)
    a0.view(-1)[:40] = 0.9
    a1 = torch.zeros(10, 10)
    a1[0, :3] = torch.tensor([0.4, 0.3, 0.25])
    seeds = spg_seeds(torch.stack([a0, a1]), high=0.5, low=0.01)  # default min_fg = 30
    assert int((seeds[0] == 1).sum()) == 40 and int((seeds[0] == 0).sum()) == 60
    assert torch.equal(seeds[1, 0, :3], torch.tensor([1.0, 1.0, IGN]))  # 0.25 < 0.28: ignored
    assert int((seeds[1] == 0).sum()) == 97


def test_seeded_bce_by_hand():
    logits = torch.zeros(1, 2, 2)
    seeds = torch.tensor([[[1.0, 0.0], [IGN, IGN]]])
    assert seeded_bce(logits, seeds).item() == pytest.approx(math.log(2))
    logits = torch.tensor([[[2.0, -1.0], [50.0, -50.0]]])
    want = (F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0))) / 2  # -log σ(2), -log(1-σ(-1))
    assert seeded_bce(logits, seeds).item() == pytest.approx(want.item(), rel=1e-6)
    assert seeded_bce(logits, torch.full((1, 2, 2), IGN)).item() == 0.0  # nothing seeded


def build(**params):
    params = {"branch_channels": 8, **params}
    return build_method(MethodConfig(name="spg", params=params), BackboneConfig(name="resnet18", cam_friendly=True), 3)


def test_loss_terms_are_branch_bce_against_their_guides():
    method = build(delta1_high=0.6, delta1_low=0.05, delta2_high=0.55, delta2_low=0.1, delta3_high=0.5, delta3_low=0.2)
    method.train()
    images, labels = torch.rand(2, 3, 48, 64), torch.tensor([1, 2])
    terms = method.training_step(Batch(images=images, labels=labels, image_ids=["a", "b"]), TrainState())
    out = method(images)  # train-mode BN: batch statistics, the same outputs

    def up(t):
        return F.interpolate(t, size=(48, 64), mode="bilinear", align_corners=False)[:, 0]

    b1, b2, c = up(out.extras["b1"]), up(out.extras["b2"]), up(out.extras["c"])
    attention = to_cam(out.maps.detach()[torch.arange(2), labels], (48, 64))
    s2 = torch.sigmoid(b2.detach())
    fused = (torch.sigmoid(b1.detach()) + s2) / 2
    assert torch.allclose(terms["ce"], F.cross_entropy(out.logits, labels), atol=1e-6)
    assert torch.allclose(terms["spg_b2"], seeded_bce(b2, spg_seeds(attention, 0.6, 0.05)), atol=1e-6)
    assert torch.allclose(terms["spg_b1"], seeded_bce(b1, spg_seeds(s2, 0.55, 0.1)), atol=1e-6)
    assert torch.allclose(terms["spg_c"], seeded_bce(c, spg_seeds(fused, 0.5, 0.2)), atol=1e-6)
    assert torch.allclose(terms["total"], terms["ce"] + terms["spg_b2"] + terms["spg_b1"] + terms["spg_c"])
    # the attention seeds have both kinds of pixels, so the B2 term is a real supervision
    seeds = spg_seeds(attention, 0.6, 0.05)
    assert (seeds == 1).any() and (seeds == 0).any()


def test_cam_is_the_classifier_map():
    method = build().eval()
    images, t = torch.rand(2, 3, 64, 64), torch.tensor([0, 2])
    with torch.no_grad():
        out = method(images)
        assert torch.allclose(method.localize(images, t), to_cam(out.maps[torch.arange(2), t], (64, 64)))
        assert out.extras["b1"].shape[:2] == out.extras["b2"].shape[:2] == out.extras["c"].shape[:2] == (2, 1)


def test_taps_defaults_and_errors():
    assert build().taps == ("layer3.0", "layer3.1")
    assert build(b1_after="layer2.1", b2_after="layer3.0").taps == ("layer2.1", "layer3.0")
    with pytest.raises(ConfigError, match="not a unit of this backbone"):
        build(b1_after="layer5.0")
    with pytest.raises(ConfigError, match="delta2_low"):
        build(delta2_low=0.8, delta2_high=0.5)
