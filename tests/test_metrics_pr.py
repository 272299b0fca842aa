"""Per-image averaged precision–recall curves of min-max-entropy Fig. 6
(wsol.metrics.pr): hand-worked numbers, a NumPy/scikit-learn reference (the authors'
compute_precision_recall_curve_once: precision_recall_curve per image, cut at full recall as
scikit-learn 0.20 did, np.interp on np.arange(0, 1, 1e-3) + [1]), class handling, merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsol.errors import MetricError
from wsol.metrics import PRAccumulator, pr_curves, recall_axis

R = np.append(np.arange(0, 1, 1e-3), 1.0)


def _ref_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's operating points the obvious way: for every distinct score v
    (descending) the precision / recall of {s >= v}; then (R = 0, P = 1) first; cut after the
    first full recall (scikit-learn 0.20.2). Returned by increasing recall."""
    n_pos = y.sum()
    rec, prec = [0.0], [1.0]
    for v in np.unique(s)[::-1]:
        pos = s >= v
        tp = float((y & pos).sum())
        rec.append(tp / n_pos)
        prec.append(tp / pos.sum())
        if tp == n_pos:
            break
    return np.array(rec), np.array(prec)


def _sklearn_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import precision_recall_curve

    p, r, _ = precision_recall_curve(y, s)
    p, r = p[::-1], r[::-1]  # increasing recall, as the authors reverse them
    k = int(np.argmax(r >= 1.0))  # scikit-learn < 1.1 stopped at the first full recall
    return r[: k + 1], p[: k + 1]


def _ref_mean(cams: np.ndarray, masks: np.ndarray, points) -> tuple[np.ndarray, np.ndarray]:
    fg, bg = [], []
    for c, m in zip(cams, masks):
        keep = m != 255
        y, s = (m[keep] == 1), c[keep].astype(np.float32)
        if y.any():
            fg.append(np.interp(R, *points(y, s)))
        if (~y).any():
            bg.append(np.interp(R, *points(~y, (np.float32(1) - s).astype(np.float32))))
    return np.mean(fg, 0), np.mean(bg, 0)


def _random(seed: int, n: int = 6, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """CAM values k/64 (more than one grid step apart, exact in float32, 1 − s too)."""
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, size, size)) < 0.35).astype(np.uint8)
    cams = rng.integers(0, 65, size=(n, size, size)).astype(np.float32) / 64
    cams = np.where(masks == 1, np.minimum(cams + 0.25, 1.0), cams).astype(np.float32)  # some signal
    masks[0] = 0  # a normal image: background only
    masks[1] = 1  # foreground only
    masks[2, :3] = 255  # ignored rows
    return cams, masks


def test_recall_axis_is_the_authors():
    assert np.array_equal(recall_axis(), np.asarray(np.arange(0, 1.0, 1e-3).tolist() + [1.0]))
    assert len(recall_axis()) == 1001
    with pytest.raises(MetricError, match="recall_step"):
        recall_axis(0.0)


def test_perfect_cam_gives_auc_1_for_both_classes():
    m = torch.zeros(3, 8, 8, dtype=torch.uint8)
    m[:, 2:5, 1:7] = 1
    out = pr_curves(m.float(), m)
    assert out["pr_auc_fg"] == pytest.approx(100.0) and out["pr_auc_bg"] == pytest.approx(100.0)
    assert np.allclose(out["precision_fg"], 1.0) and np.allclose(out["precision_bg"], 1.0)
    assert out["pr_fg_images"] == out["pr_bg_images"] == 3


def test_constant_cam_interpolates_from_1_to_the_foreground_fraction():
    # a constant CAM (all zeros after min-max): one operating point (R = 1, P = f) besides
    # (0, 1), so the interpolated curve is the line 1 − r·(1 − f) and its AUC (1 + f)/2
    m = torch.zeros(2, 8, 8, dtype=torch.uint8)
    m[:, :3, :4] = 1
    f = 12 / 64
    out = pr_curves(torch.zeros(2, 8, 8), m)
    assert out["precision_fg"][-1] == pytest.approx(f)
    assert np.allclose(out["precision_fg"], 1 - R * (1 - f))
    assert out["pr_auc_fg"] == pytest.approx(100 * (1 + f) / 2)
    assert out["precision_bg"][-1] == pytest.approx(1 - f)  # background: 1 − s = 1 against 1 − mask
    assert out["pr_auc_bg"] == pytest.approx(100 * (2 - f) / 2)


def test_hand_worked_four_pixel_image():
    # s = [.9, .6 / .3, .1], ROI = left column. Foreground points by threshold:
    # {.9}: R .5 P 1; {.9,.6}: R .5 P .5; {.9,.6,.3}: R 1 P 2/3 (first full recall: the cut);
    # all: R 1 P .5 (dropped). Interpolated: 1 on [0, .5), .5 at .5, then linear to 2/3 at 1.
    cams = torch.tensor([[[0.9, 0.6], [0.3, 0.1]]])
    masks = torch.tensor([[[1, 0], [1, 0]]], dtype=torch.uint8)
    out = pr_curves(cams, masks)
    p = np.asarray(out["precision_fg"])
    assert p[250] == pytest.approx(1.0) and p[499] == pytest.approx(1.0)
    assert p[500] == pytest.approx(0.5)
    assert p[750] == pytest.approx(0.5 + 0.25 / 3) and p[1000] == pytest.approx(2 / 3)
    # trapezoid over the grid: 0.499·1 + 0.001·(1 + .5)/2 + ∫_.5^1 (.5 + (r − .5)/3) dr
    auc = 0.499 + 0.00075 + 0.25 + 0.125 / 3
    assert out["auc_fg"] == pytest.approx(auc, abs=1e-12)
    # background (1 − s vs right column) has the same points: .9 TP, .7 FP, .4 TP, .1 FP
    assert out["auc_bg"] == pytest.approx(auc, abs=1e-12)
    assert out["pr_auc_fg"] == pytest.approx(100 * auc)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_numpy_reference(seed):
    cams, masks = _random(seed)
    acc = PRAccumulator()
    acc.update(torch.from_numpy(cams), torch.from_numpy(masks))
    fg, bg = acc.mean_curves()
    ref_fg, ref_bg = _ref_mean(cams, masks, _ref_points)
    assert np.abs(fg - ref_fg).max() < 1e-12 and np.abs(bg - ref_bg).max() < 1e-12
    out = acc.compute()
    assert out["pr_auc_fg"] == pytest.approx(100 * np.trapezoid(ref_fg, R), abs=1e-9)
    assert out["pr_auc_bg"] == pytest.approx(100 * np.trapezoid(ref_bg, R), abs=1e-9)
    assert out["pr_fg_images"] == 5 and out["pr_bg_images"] == 5  # image 0: bg only, image 1: fg only


def test_matches_sklearn_precision_recall_curve_per_image():
    pytest.importorskip("sklearn")
    from sklearn.metrics import auc

    cams, masks = _random(3)
    acc = PRAccumulator()
    acc.update(torch.from_numpy(cams), torch.from_numpy(masks))
    fg, bg = acc.mean_curves()
    ref_fg, ref_bg = _ref_mean(cams, masks, _sklearn_points)
    assert np.abs(fg - ref_fg).max() < 1e-12 and np.abs(bg - ref_bg).max() < 1e-12
    # the mean of per-image AUCs (the authors' p_r_auc_avg) = the AUC of the mean curve
    per_image = [auc(R, np.interp(R, *_sklearn_points(m[m != 255] == 1, c[m != 255])))
                 for c, m in zip(cams, masks) if (m == 1).any()]
    assert acc.compute()["pr_auc_fg"] == pytest.approx(100 * np.mean(per_image), abs=1e-9)


def test_image_without_foreground_counts_for_the_background_only():
    m = torch.zeros(1, 6, 6, dtype=torch.uint8)
    c = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0))
    out = pr_curves(c, m)
    assert out["pr_fg_images"] == 0 and math.isnan(out["pr_auc_fg"])
    assert out["pr_bg_images"] == 1 and out["pr_auc_bg"] == pytest.approx(100.0)  # every prediction is right
    # with another image that has ROI, the fg curve is that image's alone
    m2 = torch.zeros(1, 6, 6, dtype=torch.uint8)
    m2[0, :2] = 1
    both, alone = PRAccumulator(), PRAccumulator()
    both.update(torch.cat([c, m2.float()]), torch.cat([m, m2]))
    alone.update(m2.float(), m2)
    assert both.compute()["pr_auc_fg"] == pytest.approx(alone.compute()["pr_auc_fg"])
    assert both.compute()["pr_fg_images"] == 1 and both.compute()["pr_bg_images"] == 2


def test_ignored_pixels_are_left_out():
    m = torch.zeros(2, 8, 8, dtype=torch.uint8)
    m[:, :4] = 1
    perfect = m.float()
    m[:, 0, :] = 255
    perfect[:, 0, :] = 1 - perfect[:, 0, :]  # wrong values on ignored pixels change nothing
    out = pr_curves(perfect, m)
    assert out["pr_auc_fg"] == pytest.approx(100.0) and out["pr_auc_bg"] == pytest.approx(100.0)


def test_merge_state_dict_and_lists_of_sizes_add_up():
    cams, masks = _random(4, n=8)
    whole = PRAccumulator()
    whole.update(torch.from_numpy(cams), torch.from_numpy(masks))
    a, b = PRAccumulator(), PRAccumulator()
    a.update(torch.from_numpy(cams[:3]), torch.from_numpy(masks[:3]))
    b.update(torch.from_numpy(cams[3:]), torch.from_numpy(masks[3:]))
    assert (a + b).compute() == pytest.approx(whole.compute())
    c = PRAccumulator()
    c.load_state_dict({k: a.state_dict()[k] + b.state_dict()[k] for k in a.state_dict()})  # the all-reduce sum
    assert c.compute() == pytest.approx(whole.compute())
    # a list of masks, with None (no pixel label) and different sizes
    lst = PRAccumulator()
    lst.update([torch.from_numpy(cams[0]), torch.from_numpy(cams[1, :6]), torch.zeros(5, 5)],
               [torch.from_numpy(masks[0]), torch.from_numpy(masks[1, :6]), None])
    one = PRAccumulator()
    one.update(torch.from_numpy(cams[:1]), torch.from_numpy(masks[:1]))
    one.update(torch.from_numpy(cams[1:2, :6]), torch.from_numpy(masks[1:2, :6]))
    assert lst.compute() == pytest.approx(one.compute()) and lst.n_images == 2
    with pytest.raises(MetricError, match="different settings"):
        whole.merge(PRAccumulator(recall_step=0.01))


def test_errors_are_worded():
    with pytest.raises(MetricError, match="no image with a pixel mask"):
        PRAccumulator().compute()
    with pytest.raises(MetricError, match="must match"):
        PRAccumulator().update(torch.zeros(1, 4, 4), torch.zeros(1, 5, 5, dtype=torch.uint8))
    with pytest.raises(MetricError, match=r"\[0, 1\]"):
        PRAccumulator().update(torch.full((1, 4, 4), 2.0), torch.zeros(1, 4, 4, dtype=torch.uint8))
