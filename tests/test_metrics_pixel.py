"""Pixel metrics: hand-computed PxAP / confusion* / Dice / F1 on 3×3 and 4×4 maps, the
threshold semantics (s ≥ τ exactly on the grid), ignore pixels, errors, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsol.errors import MetricError
from wsol.metrics import PixelAccumulator, pixel_metrics, threshold_bins, threshold_grid

U8 = torch.uint8


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


# --- threshold semantics -----------------------------------------------------------------
@pytest.mark.parametrize("interval", [0.001, 0.01, 0.03, 0.25])
def test_metrics_bins_exact_at_every_threshold(interval):
    # wsolevaluation's grid: np.arange(0, 1, step) then 1.0 (float64); a float32 value s is
    # in bin l iff τ_l ≤ s < τ_{l+1}, compared exactly (as np.histogram does)
    taus = np.append(np.arange(0, 1, interval), 1.0)
    assert torch.equal(threshold_grid(interval=interval), torch.from_numpy(taus))
    f32 = taus.astype(np.float32)
    ceil = np.where(f32.astype(np.float64) < taus, np.nextafter(f32, np.float32(2)), f32).astype(np.float32)
    below = np.nextafter(ceil[1:], np.float32(0))
    rnd = np.random.default_rng(0).random(20000, dtype=np.float32)
    probe = np.concatenate([ceil, below, f32, rnd, np.float32([0.0, 1.0, 0.5, 0.7, 0.3])])
    expected = np.searchsorted(taus, probe.astype(np.float64), side="right") - 1
    got = threshold_bins(torch.from_numpy(probe), interval=interval)
    assert torch.equal(got, torch.from_numpy(expected))
    assert torch.equal(got[: len(ceil)], torch.arange(len(taus)))  # each ceiling opens its bin
    assert torch.equal(got[len(ceil) : len(ceil) + len(below)], torch.arange(len(taus) - 1))


def test_metrics_float32_value_below_a_threshold_is_negative_there():
    # float32(0.7) = 0.699999988 < 0.7 = τ_700: below the threshold, as in wsolevaluation
    # (np.histogram compares in float64); float32(0.3) = 0.300000012 ≥ τ_300
    assert int(threshold_bins(torch.tensor([0.7]))) == 699
    assert int(threshold_bins(torch.tensor([0.3]))) == 300


class _CudaScalarDivision(torch.overrides.TorchFunctionMode):
    """CPU emulation of CUDA's true division by a Python scalar: ATen's
    ``div_true_kernel_cuda`` (aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu) computes
    ``a * (1 / b)`` when b is a CPU scalar, which is not the correctly rounded ``a / b``
    the CPU kernel gives (float32(l)/1000 differs from l·float32(1/1000) for 584 of the
    1001 values l)."""

    DIVS = {torch.Tensor.__truediv__, torch.Tensor.div, torch.div, torch.true_divide}
    IDIVS = {torch.Tensor.__itruediv__, torch.Tensor.div_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func in self.DIVS | self.IDIVS and len(args) == 2 and not kwargs and isinstance(args[0], torch.Tensor)
                and args[0].dtype.is_floating_point and isinstance(args[1], (int, float))):
            inv = float(torch.tensor(1.0, dtype=args[0].dtype) / args[1])
            return args[0].mul_(inv) if func in self.IDIVS else args[0] * inv
        return func(*args, **kwargs)


def test_metrics_binning_does_not_depend_on_how_the_device_divides():
    # Regression: on an H200, PxAP of _random_case(3, n=8, h=32, w=32) was 40.06352 on CUDA and
    # 40.06023 on CPU: the bins were computed with `b / 1000`, which CUDA evaluates as
    # b * (1/1000). The binning now uses no division; under the emulated CUDA division the
    # histograms are identical (the old code gave 40.06352 here too).
    cams, masks = _random_case(3, n=8, h=32, w=32)
    plain = PixelAccumulator(track_regions=False)
    plain.update(cams, masks)
    with _CudaScalarDivision():
        assert torch.equal(torch.tensor(8.0) / 1000, torch.tensor(8.0) * float(torch.tensor(1.0) / 1000))
        emulated = PixelAccumulator(track_regions=False)
        emulated.update(cams, masks)
        bins = threshold_bins(cams)
    assert torch.equal(emulated.hist, plain.hist)
    assert torch.equal(bins, threshold_bins(cams))
    assert emulated.compute() == pytest.approx(plain.compute(), nan_ok=True)
    # float64 CAMs are the same values (the CAM contract compares in float32)
    assert pixel_metrics(cams.double(), masks) == pytest.approx(pixel_metrics(cams, masks), nan_ok=True)


@pytest.mark.parametrize("interval", [0.001, 0.01, 0.03])
def test_metrics_pixel_equals_wsolevaluation_mask_evaluator(interval):
    """Histograms and PxAP equal wsolevaluation's MaskEvaluator (evaluation.py, ported in
    wsol.metrics.reference) at the same cam_curve_interval, with CAM values on the grid."""
    from wsol.metrics.reference import WsolEvalMaskEvaluator

    cams, masks = _random_case(5, n=6, h=20, w=18)
    cams[0, 0, :4] = torch.tensor([0.7, 0.3, 0.01, 0.99])  # float32 roundings of thresholds
    ref = WsolEvalMaskEvaluator(interval)
    for c, m in zip(cams.numpy(), masks.numpy()):
        ref.accumulate(c, m)
    acc = PixelAccumulator(track_regions=False, cam_curve_interval=interval)
    acc.update(cams, masks)
    # the reference's bins: [τ_0, τ_1), ..., [τ_{T-1}, 1), [1, 2), [2, 3]
    assert acc.hist[1].tolist() == ref.gt_true_score_hist[:-1].tolist()
    assert acc.hist[0].tolist() == ref.gt_false_score_hist[:-1].tolist()
    r = acc.compute()
    assert r["pxap"] == pytest.approx(ref.compute(), rel=1e-12)
    assert r["cam_curve_interval"] == interval
    assert len(acc.curves()["tau"]) == len(np.arange(0, 1, interval)) + 1


def test_metrics_interval_is_recorded_and_validated():
    cams, masks = _random_case(1)
    assert pixel_metrics(cams, masks)["cam_curve_interval"] == 0.001
    coarse = pixel_metrics(cams, masks, cam_curve_interval=0.01)
    assert coarse["cam_curve_interval"] == 0.01
    assert coarse["tau_star"] == pytest.approx(round(coarse["tau_star"], 2))  # on the 0.01 grid
    with pytest.raises(MetricError, match="cam_curve_interval"):
        PixelAccumulator(cam_curve_interval=0.0)
    with pytest.raises(MetricError, match="different settings"):
        PixelAccumulator().merge(PixelAccumulator(cam_curve_interval=0.01))
    with pytest.raises(MetricError, match="bins"):
        PixelAccumulator().load_state_dict(PixelAccumulator(cam_curve_interval=0.01).state_dict())


def test_metrics_value_on_threshold_counts_as_positive():
    # one fg pixel at exactly 0.3, one bg pixel at 0.2999999 (just below in float32)
    just_below = float(np.nextafter(np.float32(0.3), np.float32(0)))
    cams = t([[[0.3, just_below, 0.0, 1.0]]]).view(1, 2, 2)
    masks = t([[[1, 0, 0, 1]]], U8).view(1, 2, 2)
    acc = PixelAccumulator()
    acc.update(cams, masks)
    # at τ = 0.3 the fg pixel is in (s ≥ τ), the bg pixel is not -> TP = 2/2, FP = 0 -> Dice+ = 100
    r = acc.compute(tau=0.3)
    assert r["dice_fg_pooled"] == pytest.approx(100.0)
    r = acc.compute(tau=0.301)
    # fg pixel 0.3 now negative: TP = 1, FN = 1, FP = 0 -> Dice = 2/3
    assert r["dice_fg_pooled"] == pytest.approx(200 / 3)


# --- hand-computed cases ---------------------------------------------------------------
def test_metrics_pxap_3x3_hand_computed_with_ties():
    # fg pixels: 0.9, 0.5, 0.5 ; bg: 0.5, 0.2, 0.0, 0.0, 0.0, 1.0
    cams = t([[[0.9, 0.5, 0.5], [0.5, 0.2, 0.0], [0.0, 0.0, 1.0]]])
    masks = t([[[1, 1, 1], [0, 0, 0], [0, 0, 0]]], U8)
    # thresholds from the top: τ=1.0: TP0 FP1 -> P=0, R=0.
    # τ in (0.5,0.9]: TP1 FP1 -> P=1/2, R=1/3 ; τ in (0.2,0.5]: TP3 FP2 -> P=3/5, R=1
    # τ in (0,0.2]: TP3 FP3 -> P=1/2 R=1 ; τ=0: P=3/9 R=1.
    # PxAP = 1/2·(1/3 − 0) + 3/5·(1 − 1/3) = 1/6 + 2/5 = 17/30
    r = pixel_metrics(cams, masks)
    assert r["pxap"] == pytest.approx(100 * 17 / 30)
    # TP(τ) for τ=0.001..1.000: 3 fg for τ ≤ 0.5 (500 values), 1 for 0.5 < τ < 0.9 (399: float32(0.9)
    # = 0.89999998 is below τ = 0.9, compared in float64 as wsolevaluation does), 0 above (101)
    tp = (500 * 100 + 399 * 100 / 3) / 1000
    assert r["tp_star"] == pytest.approx(tp)
    assert r["fn_star"] == pytest.approx(100 - tp)
    # FP(τ) of 6 bg: 3 for τ ≤ 0.2 (200), 2 for 0.2 < τ ≤ 0.5 (300), 1 for τ ≤ 1 (500)
    fp = (200 * 300 / 6 + 300 * 200 / 6 + 500 * 100 / 6) / 1000
    assert r["fp_star"] == pytest.approx(fp)
    assert r["tn_star"] == pytest.approx(100 - fp)
    # F1 at 0.5 (s ≥ 0.5): pred = {0.9, 0.5, 0.5 | 0.5, 1.0}: TP3 FP2 FN0 -> F1+ = 6/8
    # background: TN = 4, FN = 0, FP = 2 -> F1- = 8/10
    assert r["f1_fg_mean"] == pytest.approx(75.0)
    assert r["f1_bg_mean"] == pytest.approx(80.0)
    # mIoU: τ ∈ (0.2, 0.5]: IoU+ = 3/5, IoU- = 4/6 -> 19/30 ; τ ∈ (0, 0.2]: 3/6, 3/6 -> 1/2 ;
    # τ ∈ (0.5, 0.9]: 1/(1+1+2)=1/4, 5/(5+2)=5/7 -> 0.482 ; τ*: first maximum = 0.201
    assert r["tau_star"] == pytest.approx(0.201)
    assert r["tau"] == pytest.approx(0.201)
    assert r["miou"] == pytest.approx(100 * 19 / 30)
    assert r["dice_fg_pooled"] == pytest.approx(75.0)
    assert r["dice_bg_pooled"] == pytest.approx(80.0)
    assert r["fg_fraction"] == pytest.approx(100 / 3)


def test_metrics_4x4_ignore_pixels_are_dropped():
    cams = t(
        [[[1.0, 0.8, 0.1, 0.0], [0.8, 0.6, 0.1, 0.0], [0.3, 0.3, 0.9, 0.0], [0.0, 0.0, 0.0, 0.7]]]
    )
    masks = t([[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 255, 0], [0, 0, 0, 255]]], U8)
    r = pixel_metrics(cams, masks)
    # without the two ignored pixels (0.9 and 0.7, both would be FP) the fg scores (1, .8, .8, .6)
    # are all above every bg score (≤ 0.3): perfect ranking -> PxAP 100
    assert r["pxap"] == pytest.approx(100.0)
    assert r["n_pixels_ignored"] == 2
    assert r["n_pixels_fg"] == 4 and r["n_pixels_bg"] == 10
    # same with the ignore pixels relabelled background: two bg pixels (0.9, 0.7) outrank fg 0.8, 0.6
    masks2 = masks.clone()
    masks2[masks2 == 255] = 0
    r2 = pixel_metrics(cams, masks2)
    # descending: 1.0 fg (P1, R1/4), 0.9 bg, 0.8 fg fg (P 3/4, R 3/4), 0.7 bg, 0.6 fg (P 4/6, R 1)
    assert r2["pxap"] == pytest.approx(100 * (1 * 0.25 + 0.75 * 0.5 + (4 / 6) * 0.25))


def test_metrics_perfect_cam_is_100_and_constant_cam_is_fg_fraction():
    masks = t([[[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], U8)
    r = pixel_metrics(masks.float(), masks)
    assert r["pxap"] == pytest.approx(100.0)
    assert r["dice_fg_pooled"] == pytest.approx(100.0) and r["dice_bg_pooled"] == pytest.approx(100.0)
    assert r["tp_star"] == pytest.approx(100.0) and r["fp_star"] == pytest.approx(0.0)
    c = pixel_metrics(torch.zeros(1, 4, 4), masks)
    assert c["pxap"] == pytest.approx(25.0)
    assert c["tp_star"] == pytest.approx(0.0) and c["tn_star"] == pytest.approx(100.0)


def test_metrics_normal_image_with_all_zero_mask_is_evaluated():
    acc = PixelAccumulator()
    fg_img = t([[[1.0, 0.0], [0.0, 0.0]]])
    acc.update(fg_img, t([[[1, 0], [0, 0]]], U8))
    # normal image (all background) whose CAM fires on one pixel: one FP at every τ ≤ 1
    acc.update(t([[[1.0, 0.0], [0.0, 0.0]]]), torch.zeros(1, 2, 2, dtype=U8))
    r = acc.compute()
    assert r["n_pixels_bg"] == 7 and r["n_pixels_fg"] == 1
    assert r["pxap"] == pytest.approx(50.0)  # τ = 1: TP 1, FP 1
    assert r["f1_fg_images"] == 1 and r["f1_bg_images"] == 2
    # F1- per image at 0.5: image 1: TN 3, FP 0, FN 0 -> 1 ; image 2: TN 3, FP 1 -> 6/7
    assert r["f1_bg_mean"] == pytest.approx(100 * (1 + 6 / 7) / 2)
    assert r["f1_fg_mean"] == pytest.approx(100.0)


def test_metrics_images_without_mask_are_skipped():
    acc = PixelAccumulator()
    cams = [t([[1.0, 0.0]]), t([[0.0, 1.0]])]
    acc.update(cams, [t([[1, 0]], U8), None])
    assert acc.compute()["pxap"] == pytest.approx(100.0)
    assert acc.compute()["n_pixel_images"] == 1


def test_metrics_given_tau_and_region_sizes():
    cams = t([[[0.9, 0.6], [0.4, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    masks = t([[[1, 1], [0, 0]], [[1, 1], [1, 0]]], U8)
    acc = PixelAccumulator(region_tau=0.5)
    acc.update(cams, masks)
    r = acc.compute(tau=0.5)
    assert r["tau"] == 0.5
    # at 0.5: TP = 3 (0.9, 0.6, 1.0), FN = 2, FP = 0 -> Dice+ = 6/8 ; TN = 3 -> Dice- = 6/8
    assert r["dice_fg_pooled"] == pytest.approx(75.0)
    assert r["dice_bg_pooled"] == pytest.approx(75.0)
    reg = acc.region_sizes()
    assert reg["tau"] == 0.5
    assert reg["true"] == pytest.approx([0.5, 0.75]) and reg["pred"] == pytest.approx([0.5, 0.25])
    # region_tau=None resolves any τ at the end (here τ* of the split and an explicit one)
    acc2 = PixelAccumulator()
    acc2.update(cams, masks)
    assert acc2.region_sizes(0.5)["pred"] == pytest.approx([0.5, 0.25])
    assert acc2.region_sizes(0.0)["pred"] == pytest.approx([1.0, 1.0])
    assert acc2.curves()["regions"]["tau"] == acc2.compute()["tau_star"]


def test_metrics_curves_shapes_and_histograms():
    cams = torch.rand(3, 8, 8)
    masks = (torch.rand(3, 8, 8) > 0.5).to(U8)
    acc = PixelAccumulator()
    acc.update(cams, masks)
    c = acc.curves()
    for k in ("tau", "precision", "recall", "tp", "fn", "fp", "tn", "miou", "dice_fg", "dice_bg", "hist_fg", "hist_bg"):
        assert len(c[k]) == 1001, k
    assert sum(c["hist_fg"]) == int((masks == 1).sum()) and sum(c["hist_bg"]) == int((masks == 0).sum())
    assert c["recall"][0] == 1.0 and c["tp"][0] == 100.0


# --- errors -----------------------------------------------------------------------------
def test_metrics_nan_cam_is_a_clear_error():
    cams = torch.zeros(1, 3, 3)
    cams[0, 1, 1] = math.nan
    with pytest.raises(MetricError, match="NaN"):
        pixel_metrics(cams, torch.ones(1, 3, 3, dtype=U8))


def test_metrics_no_foreground_is_a_clear_error():
    with pytest.raises(MetricError, match="no foreground"):
        pixel_metrics(torch.rand(2, 3, 3), torch.zeros(2, 3, 3, dtype=U8))
    with pytest.raises(MetricError, match="no foreground"):  # all fg ignored
        pixel_metrics(torch.rand(1, 2, 2), t([[[255, 0], [0, 0]]], U8))


def test_metrics_bad_inputs_are_clear_errors():
    with pytest.raises(MetricError, match=r"\[0, 1\]"):
        pixel_metrics(torch.full((1, 2, 2), 2.0), torch.ones(1, 2, 2, dtype=U8))
    with pytest.raises(MetricError, match="values \\[2\\]"):
        pixel_metrics(torch.rand(1, 2, 2), t([[[2, 0], [1, 0]]], U8))
    with pytest.raises(MetricError, match="shape"):
        pixel_metrics(torch.rand(1, 2, 2), torch.ones(1, 3, 3, dtype=U8))
    with pytest.raises(MetricError, match="nothing to evaluate"):
        PixelAccumulator().compute()
    with pytest.raises(MetricError, match="outside"):
        pixel_metrics(torch.rand(1, 2, 2), torch.ones(1, 2, 2, dtype=U8), tau=1.5)


# --- properties -------------------------------------------------------------------------


def _random_case(seed: int, n: int = 4, h: int = 6, w: int = 5):
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(n, h, w, generator=g)
    cams = torch.where(torch.rand(n, h, w, generator=g) < 0.3, (cams * 10).round() / 10, cams)  # ties on the grid
    masks = (torch.rand(n, h, w, generator=g) < 0.4).to(U8)
    masks[torch.rand(n, h, w, generator=g) < 0.1] = 255
    masks[0, 0, 0] = 1  # at least one fg pixel
    return cams, masks


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_metrics_property_gt_mask_pxap_100_and_tp_fn_sum(seed):
    cams, masks = _random_case(seed)
    perfect = (masks == 1).float()
    assert pixel_metrics(perfect, masks)["pxap"] == pytest.approx(100.0)
    r = pixel_metrics(cams, masks)
    assert r["tp_star"] + r["fn_star"] == pytest.approx(100.0)
    assert r["fp_star"] + r["tn_star"] == pytest.approx(100.0)
    assert 0.0 <= r["pxap"] <= 100.0 + 1e-9


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0))
def test_metrics_property_constant_map_gives_fg_fraction(seed, value):
    _, masks = _random_case(seed)
    r = pixel_metrics(torch.full(masks.shape, value), masks)
    valid = masks != 255
    assert r["pxap"] == pytest.approx(100.0 * float((masks == 1).sum()) / float(valid.sum()))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3))
def test_metrics_property_permutation_and_split_merge(seed, cut):
    cams, masks = _random_case(seed)
    ref = PixelAccumulator(track_regions=False)
    ref.update(cams, masks)
    perm = torch.randperm(len(cams), generator=torch.Generator().manual_seed(seed))
    p = PixelAccumulator(track_regions=False)
    p.update(cams[perm], masks[perm])
    a, b = PixelAccumulator(track_regions=False), PixelAccumulator(track_regions=False)
    a.update(cams[:cut], masks[:cut])
    b.update(cams[cut:], masks[cut:])
    merged = a + b
    via_state = PixelAccumulator(track_regions=False)
    via_state.load_state_dict({k: v + b.state_dict()[k] for k, v in a.state_dict().items()})
    expected = ref.compute()
    for other in (p, merged, via_state):
        got = other.compute()
        assert got.keys() == expected.keys()
        for k in expected:
            assert got[k] == pytest.approx(expected[k], nan_ok=True), k


def test_metrics_pixel_state_does_not_grow_with_images():
    acc = PixelAccumulator(track_regions=False)
    sizes = []
    for _ in range(5):
        acc.update(torch.rand(4, 16, 16), (torch.rand(4, 16, 16) > 0.5).to(U8))
        sizes.append(sum(v.numel() for v in acc.state_dict().values()))
    assert len(set(sizes)) == 1


def test_metrics_float64_and_numpy_inputs():
    cams = np.array([[[0.9, 0.1], [0.2, 0.8]]], dtype=np.float64)
    masks = np.array([[[1, 0], [0, 1]]], dtype=np.uint8)
    assert pixel_metrics(cams, masks)["pxap"] == pytest.approx(100.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_cuda_matches_cpu():
    cams, masks = _random_case(3, n=8, h=32, w=32)
    cpu = pixel_metrics(cams, masks)
    gpu = pixel_metrics(cams.cuda(), masks.cuda())
    for k in cpu:
        assert gpu[k] == pytest.approx(cpu[k], nan_ok=True), k


@pytest.mark.parametrize("interval", [0.001, 0.01])
def test_metrics_pixel_matches_numpy_reference(interval):
    from wsol.metrics.reference import reference_pixel_metrics

    cams, masks = _random_case(7, n=6, h=16, w=12)
    masks[2] = 0  # a normal image
    fast = pixel_metrics(cams, masks, cam_curve_interval=interval)
    ref = reference_pixel_metrics(cams.numpy(), masks.numpy(), cam_curve_interval=interval)
    for k, v in ref.items():
        assert fast[k] == pytest.approx(v), k
    assert fast["tau"] == fast["tau_star"]


def test_metrics_large_batches_are_chunked_exactly():
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(600, 3, 2, generator=g)
    masks = (torch.rand(600, 3, 2, generator=g) > 0.5).to(U8)
    one = PixelAccumulator(track_regions=False)
    one.update(cams, masks)  # one bincount
    chunked = PixelAccumulator(track_regions=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("wsol.metrics.pixel.CHUNK_PIXELS", 60)  # 10 images per bincount: 60 bincounts
        chunked.update(cams, masks)
    assert torch.equal(one.hist, chunked.hist) and len(chunked.region_sizes()["pred"]) == 600
    parts = PixelAccumulator(track_regions=False)
    for i in range(0, 600, 7):
        parts.update(cams[i : i + 7], masks[i : i + 7])
    assert torch.equal(one.hist, parts.hist)
    assert int(one.hist.sum()) == 3600
    assert one.compute() == pytest.approx(parts.compute())


def test_metrics_tau_is_snapped_to_the_grid_and_mask_dtypes():
    cams = t([[[0.9, 0.2], [0.2, 0.0]]])
    masks = t([[[1, 1], [0, 0]]], U8)
    assert pixel_metrics(cams, masks, tau=0.20004)["tau"] == 0.2
    assert pixel_metrics(cams, masks, tau=0.2)["dice_fg_pooled"] == pytest.approx(100 * 4 / 5)  # TP2 FP1
    ref = pixel_metrics(cams, masks)
    assert pixel_metrics(cams, masks.bool()) == pytest.approx(ref)
    assert pixel_metrics(cams, masks.long()) == pytest.approx(ref)
    with pytest.raises(MetricError, match="dtype"):
        pixel_metrics(cams, masks.float())
    # another ignore value
    m9 = t([[[1, 9], [0, 0]]], U8)
    assert pixel_metrics(cams, m9, ignore_index=9)["n_pixels_ignored"] == 1


def test_metrics_all_ignored_image_contributes_nothing():
    cams = t([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]])
    masks = t([[[1, 0], [0, 0]], [[255, 255], [255, 255]]], U8)
    r = pixel_metrics(cams, masks)
    assert r == pytest.approx(pixel_metrics(cams[:1], masks[:1]) | {"n_pixel_images": 2, "n_pixels_ignored": 4})
    assert r["f1_fg_images"] == 1 and r["f1_bg_images"] == 1
    acc = PixelAccumulator(track_regions=False)
    acc.update(cams, masks)
    assert acc.region_sizes() == {"tau": None, "true": [], "pred": []}


@pytest.mark.parametrize("f1_tau", [0.5, 0.7, 0.4321])
def test_metrics_f1_at_any_threshold_is_cam_ge_tau_in_float32(f1_tau):
    # F1± use the method's own binary mask `cam >= f1_tau` (float32), on or off the sweep's grid
    # (0.5 is a grid threshold; float32(0.7) is below τ = 0.7; 0.4321 is off the grid)
    cams, masks = _random_case(11, n=5, h=9, w=7)
    cams[0, 0, :3] = torch.tensor([0.7, 0.5, 0.4321])
    acc = PixelAccumulator(f1_tau=f1_tau, track_regions=False)
    acc.update(cams, masks)
    r = acc.compute()
    f1p, f1n = [], []
    for cam, mask in zip(cams, masks):
        pred, gt, bg, valid = cam >= f1_tau, mask == 1, mask == 0, mask != 255
        if gt.any():
            f1p.append(2 * float((pred & gt).sum()) / float((pred & valid).sum() + gt.sum()))
        if bg.any():
            f1n.append(2 * float((~pred & bg).sum()) / float((~pred & valid).sum() + bg.sum()))
    assert r["f1_tau"] == f1_tau
    assert r["f1_fg_mean"] == pytest.approx(100 * np.mean(f1p)) and r["f1_bg_mean"] == pytest.approx(100 * np.mean(f1n))
    assert r["pxap"] == pytest.approx(pixel_metrics(cams, masks)["pxap"])  # the sweep does not depend on f1_tau


def test_metrics_pixel_update_runs_single_threaded_and_restores_torch_threads():
    cams, masks = _random_case(2, n=4, h=12, w=10)
    before = torch.get_num_threads()
    seen = []

    class Spy(PixelAccumulator):
        def _update_chunk(self, c, m):
            seen.append(torch.get_num_threads())
            super()._update_chunk(c, m)

    one = Spy()
    one.update(cams, masks)
    assert seen == [1] and torch.get_num_threads() == before
    keep = Spy(threads=None)
    keep.update(cams, masks)
    assert seen[-1] == before and torch.equal(one.hist, keep.hist)
