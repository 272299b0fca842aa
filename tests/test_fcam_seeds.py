"""F-CAM / NEGEV seeds (f-cam.txt Eqs. 1-2): batched Otsu equals scikit-image's
``threshold_otsu``, the sampling regions, the sampler, and the partial cross-entropy."""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from skimage.filters import threshold_otsu

from wsol.methods._seeds import (
    IGNORE,
    SeedParams,
    dilate,
    draw_uniform,
    erode,
    otsu_threshold,
    partial_cross_entropy,
    sample_seeds,
    seed_regions,
)


def _hand_maps() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    two = np.zeros((6, 7))
    two[:2] = 1.0
    ties = np.array([[0.0, 0.0, 0.5, 0.5], [1.0, 1.0, 0.5, 0.5], [0.0, 1.0, 0.25, 0.75]])
    sym = np.array([[0.0, 1.0, 2.0, 3.0]]) / 3  # symmetric histogram: several equal variances
    steps = np.repeat(np.arange(4.0), 9).reshape(6, 6) / 3
    return [
        two, ties, sym, steps,
        np.full((5, 5), 0.3),  # constant
        np.full((4, 4), 1.0),  # constant at the top
        rng.random((17, 23)),
        rng.beta(0.3, 0.3, (32, 32)),
        np.round(rng.random((20, 20)) * 7) / 7,  # few levels: many ties
        rng.random((48, 48)) ** 3,
    ]


@pytest.mark.parametrize("i", range(len(_hand_maps())))
def test_otsu_equals_skimage_float(i):
    m = _hand_maps()[i]
    got = otsu_threshold(torch.from_numpy(m)[None]).item()
    assert got == threshold_otsu(m)


@pytest.mark.parametrize("i", range(len(_hand_maps())))
def test_otsu_equals_skimage_uint8(i):
    m = _hand_maps()[i]
    got = otsu_threshold(torch.from_numpy(m)[None], quantize=True).item()
    assert got == threshold_otsu((m * 255).astype(np.uint8))


def test_otsu_batched_and_float32_equal_per_map():
    rng = np.random.default_rng(1)
    maps = np.stack([rng.random((24, 24)) ** (1 + k) for k in range(6)])
    maps[2] = 0.7  # a constant map inside the batch
    got = otsu_threshold(torch.from_numpy(maps)).tolist()
    assert got == [threshold_otsu(m) for m in maps]
    # 224² maps: w1·w2 exceeds 2^24, where skimage's float32 product rounds
    big = rng.random((3, 224, 224)) ** 2
    assert otsu_threshold(torch.from_numpy(big)).tolist() == [threshold_otsu(m) for m in big]
    # float32 input: same threshold as skimage on its float64 version
    f32 = torch.from_numpy(big).float()
    assert otsu_threshold(f32).tolist() == [threshold_otsu(m.double().numpy()) for m in f32]


def test_otsu_two_level_map_splits_the_levels():
    m = torch.zeros(1, 8, 8, dtype=torch.float64)
    m[0, :3] = 1.0
    thr = otsu_threshold(m).item()
    assert 0.0 < thr < 1.0
    assert torch.equal(m[0] > thr, m[0] == 1.0)


@pytest.mark.parametrize("quantize", [False, True])
def test_fg_region_equals_skimage(quantize):
    rng = np.random.default_rng(2)
    maps = rng.random((4, 30, 30)) ** 2
    fg, _ = seed_regions(torch.from_numpy(maps), SeedParams(quantize=quantize))
    for m, f in zip(maps, fg):
        if quantize:  # the code: uint8 CAM, threshold clamped to [1, 254]
            q = (m * 255).astype(np.uint8)
            want = q > min(max(threshold_otsu(q), 1), 254)
        else:
            want = m > threshold_otsu(m)
        assert np.array_equal(f.numpy(), want)


def test_bg_region_is_the_n_minus_lowest():
    cam = torch.arange(100, dtype=torch.float64).view(1, 10, 10) / 99
    _, bg = seed_regions(cam, SeedParams(bg_fraction=0.3))
    assert bg.sum() == 30 and bg.view(-1)[:30].all()  # the 30 lowest values
    _, bg = seed_regions(cam, SeedParams(bg_extent=7))
    assert bg.view(-1).nonzero().view(-1).tolist() == list(range(7))
    fg, _ = seed_regions(cam, SeedParams(fg_extent=5))
    assert fg.view(-1).nonzero().view(-1).tolist() == list(range(95, 100))


def test_constant_cam_gives_no_seeds():
    cam = torch.full((2, 16, 16), 0.4)
    for q in (False, True):
        fg, bg = seed_regions(cam, SeedParams(quantize=q))
        assert not fg.any() and not bg.any()
        assert (sample_seeds(cam, SeedParams(fg_count=3, bg_count=3, quantize=q)) == IGNORE).all()


def test_erosion_equals_skimage_and_falls_back_when_it_empties():
    rng = np.random.default_rng(3)
    region = rng.random((3, 20, 20)) > 0.3
    region[2] = False
    region[2, 0:6, 0:6] = True  # touches the border: the border does not erode
    got = erode(torch.from_numpy(region), 3).numpy()
    for r, g in zip(region, got):
        assert np.array_equal(g, binary_erosion(r, np.ones((3, 3), bool), border_value=1))
    assert got[2, 0:5, 0:5].all() and not got[2, 5].any()
    # an 11×11 erosion empties a 5×5 blob: C+ is kept un-eroded (F-CAM code)
    cam = torch.zeros(1, 24, 24)
    cam[0, 10:15, 10:15] = 1.0
    fg, _ = seed_regions(cam, SeedParams(fg_erode=11))
    assert torch.equal(fg[0], cam[0] > 0.5)
    big = torch.zeros(1, 40, 40)
    big[0, 5:30, 5:30] = 1.0
    fg, _ = seed_regions(big, SeedParams(fg_erode=11))
    assert torch.equal(fg[0], erode(big > 0.5, 11)[0]) and fg.sum() == 15 * 15


def test_sampler_stays_in_its_region_and_counts():
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(4, 20, 20, generator=g) ** 2
    p = SeedParams(fg_count=5, bg_count=3, bg_fraction=0.2)
    fg_region, bg_region = seed_regions(cams, p)
    for _ in range(50):
        s = sample_seeds(cams, p, generator=g)
        assert not ((s == 1) & ~fg_region).any()
        assert not ((s == 0) & ~bg_region).any()
        assert ((s == 1).flatten(1).sum(1) == 5).all() and ((s == 0).flatten(1).sum(1) == 3).all()


def test_sampler_is_uniform_and_redrawn():
    region = torch.zeros(1, 4, 5, dtype=torch.bool)
    region[0, 1:3, 1:4] = True  # 6 pixels
    g = torch.Generator().manual_seed(1)
    n = 3000
    hits = torch.zeros(1, 4, 5)
    for _ in range(n):
        hits += draw_uniform(region, 2, generator=g).float()
    assert (hits[~region] == 0).all()
    freq = hits[region] / n  # each pixel: 2/6 of the draws; binomial std ≈ 0.0086
    assert (freq - 1 / 3).abs().max() < 0.04
    # a region smaller than the count gives all its pixels
    assert torch.equal(draw_uniform(region, 10, generator=g), region)


def test_dilated_seeds_and_overlap_dropped():
    cam = torch.zeros(1, 9, 9)
    cam[0, 4, 4] = 1.0
    s = sample_seeds(cam, SeedParams(fg_count=1, bg_count=0, dilate=3))
    assert (s == 1).sum() == 9 and (s[0, 3:6, 3:6] == 1).all()
    # C+ = {centre}, C− = the 8 other pixels; dilated by 3×3 both seeds cover the whole
    # image, and a pixel claimed by both is dropped from both
    cam2 = torch.zeros(1, 3, 3)
    cam2[0, 1, 1] = 1.0
    s2 = sample_seeds(cam2, SeedParams(fg_count=1, bg_count=8, bg_fraction=8 / 9, dilate=3))
    assert (s2 == IGNORE).all()
    assert torch.equal(dilate(torch.eye(3, dtype=torch.bool)[None], 1), torch.eye(3, dtype=torch.bool)[None])


def test_partial_ce_hand_computed_and_ignores_unsampled():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = math.log(3.0)  # p(fg) = 3/4 at (0,0)
    logits[0, 0, 1, 1] = math.log(4.0)  # p(bg) = 4/5 at (1,1)
    logits[0, 1, 0, 1] = 50.0  # an unsampled pixel: must not count
    seeds = torch.full((1, 2, 2), IGNORE, dtype=torch.long)
    seeds[0, 0, 0] = 1
    seeds[0, 1, 1] = 0
    want = (-math.log(3 / 4) - math.log(4 / 5)) / 2
    lg = logits.clone().requires_grad_(True)
    got = partial_cross_entropy(lg, seeds)
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()
    assert (lg.grad[0, :, 0, 1] == 0).all() and (lg.grad[0, :, 1, 0] == 0).all()
    # no seed at all: 0, not NaN
    none = torch.full((1, 2, 2), IGNORE, dtype=torch.long)
    assert partial_cross_entropy(logits, none).item() == 0.0


def test_seed_params_validation():
    with pytest.raises(ValueError, match="odd"):
        SeedParams(fg_erode=4)
    with pytest.raises(ValueError):
        SeedParams(bg_fraction=0)
