"""No-training baselines against closed forms, scored by the one Evaluator: All-ones
(F1+ = 2p/(1+p) per image, F1− = 0, PxAP = the pooled foreground fraction) and the centre
Gaussian (its map, and PxAP on a hand-made mask worked out by hand)."""

import math

import pytest
import torch

from wsol.bench.baselines import AllOnes, CenterGaussian, all_ones_f1, build_baseline
from wsol.data.sample import collate
from wsol.engine.evaluate import Evaluator
from wsol.errors import ConfigError


def _batch(masks):
    return collate([{"image": torch.rand(3, *m.shape), "label": i % 2, "image_id": f"im{i}", "mask": m}
                    for i, m in enumerate(masks)])


def _evaluate(model, masks):
    ev = Evaluator(model, loc_kind="mask", device=torch.device("cpu"))
    return ev.run([_batch(masks)]).metrics


def test_all_ones_closed_forms():
    # image 0: 4 of 16 pixels ROI (p = 1/4); image 1: 12 of 16 (p = 3/4); image 2: all ROI (no background)
    m0 = torch.zeros(4, 4, dtype=torch.uint8)
    m0[0] = 1
    m1 = torch.ones(4, 4, dtype=torch.uint8)
    m1[0] = 0
    m2 = torch.ones(4, 4, dtype=torch.uint8)
    m = _evaluate(AllOnes(2), [m0, m1, m2])
    f1 = [2 * p / (1 + p) for p in (0.25, 0.75, 1.0)]  # 0.4, 0.857..., 1
    assert m["f1_fg_mean"] == pytest.approx(100 * sum(f1) / 3)
    assert m["f1_bg_mean"] == 0.0  # no true negative anywhere (image 2 has no background: left out)
    assert m["f1_bg_images"] == 2
    assert m["pxap"] == pytest.approx(100 * (4 + 12 + 16) / 48)  # one threshold, precision = pooled fraction
    assert m["tp_star"] == pytest.approx(100.0) and m["tn_star"] == pytest.approx(0.0)
    assert all_ones_f1(0.25) == pytest.approx(40.0)
    assert all_ones_f1(1.0) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        all_ones_f1(0.0)


def test_all_ones_does_not_classify():
    out = AllOnes(3)(torch.rand(2, 3, 8, 8))
    assert torch.equal(out.logits, torch.zeros(2, 3))
    assert AllOnes.classifies is False and CenterGaussian.classifies is False


def test_center_gaussian_map():
    s = 0.5
    cams = CenterGaussian(2, sigma=s).localize(torch.rand(2, 3, 4, 4))
    assert cams.shape == (2, 4, 4) and torch.equal(cams[0], cams[1])
    # pixel centres at (i + 0.5) - 2: squared distances 0.5 (centre), 2.5 (edges), 4.5 (corners)
    sig2 = (s * 4) ** 2
    g = [math.exp(-d / (2 * sig2)) for d in (0.5, 2.5, 4.5)]
    edge = (g[1] - g[2]) / (g[0] - g[2])  # min-max normalised
    c = cams[0]
    assert c[1:3, 1:3].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert c[0, 0] == 0 and c[3, 3] == 0 and c[0, 3] == 0
    assert float(c[0, 1]) == pytest.approx(edge, rel=1e-6) and float(c[1, 0]) == pytest.approx(edge, rel=1e-6)
    # isotropic: the map of a non-square image is symmetric about both axes
    r = CenterGaussian(2, 0.25).localize(torch.rand(1, 3, 6, 10))[0]
    assert torch.allclose(r, r.flip(0)) and torch.allclose(r, r.flip(1))


def test_center_gaussian_pxap_on_a_hand_made_mask():
    # ROI: the 2×2 centre and one corner. Ranking: centre (4 px, all ROI) > edges (8 px, none) > corners (4, one).
    # PxAP = P·ΔR summed from the top: 1·(4/5) + (4/12)·0 + (5/16)·(1/5) = 0.8625
    m = torch.zeros(4, 4, dtype=torch.uint8)
    m[1:3, 1:3] = 1
    m[3, 3] = 1
    metrics = _evaluate(CenterGaussian(2, 0.3), [m])
    assert metrics["pxap"] == pytest.approx(86.25)
    # the perfect case: the ROI is the centre, PxAP = 100
    m2 = torch.zeros(4, 4, dtype=torch.uint8)
    m2[1:3, 1:3] = 1
    assert _evaluate(CenterGaussian(2, 0.3), [m2])["pxap"] == pytest.approx(100.0)


def test_build_baseline_names():
    assert isinstance(build_baseline("all-ones"), AllOnes)
    assert build_baseline("center-gaussian", sigma=0.1).sigma == 0.1
    with pytest.raises(ConfigError, match="valid: all-ones, center-gaussian"):
        build_baseline("zeros")
    with pytest.raises(ConfigError, match="sigma"):
        CenterGaussian(2, sigma=0)
