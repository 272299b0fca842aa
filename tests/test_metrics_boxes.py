"""Box metrics (wsolevaluation semantics): hand-computed cases (border, multiple GT boxes,
hole contours, empty maps, the τ sweep, top-k), the weight-map rule, agreement with the
straightforward 1000-threshold reference, and summability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsol.errors import MetricError
from wsol.metrics import BoxAccumulator, box_iou, box_metrics, rescale_boxes, weight_map_box
from wsol.metrics.boxes import contour_boxes, quantize
from wsol.metrics.reference import reference_box_metrics


def rect_cam(h, w, y0, y1, x0, x1, value=1.0):
    cam = torch.zeros(1, h, w)
    cam[0, y0:y1, x0:x1] = value
    return cam


def test_metrics_iou_inclusive_areas():
    a = np.array([[0, 0, 1, 1]])
    b = np.array([[1, 1, 2, 2], [0, 0, 1, 1], [5, 5, 6, 6]])
    # 2×2 boxes sharing one pixel: 1 / (4 + 4 − 1)
    assert box_iou(a, b)[0] == pytest.approx([1 / 7, 1.0, 0.0])
    assert box_iou(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 1, 0]]))[0, 0] == pytest.approx(0.5)


def test_metrics_box_of_contour_is_x_plus_w_and_clipped_at_border():
    # rectangle rows 2..4, cols 1..5 -> boundingRect (1, 2, w=5, h=3) -> box (1, 2, 6, 5)
    r = box_metrics(rect_cam(8, 8, 2, 5, 1, 6), [np.array([[1, 2, 6, 5]])])
    assert r["max_box_acc"] == 100.0 and r["max_box_acc_v2"] == 100.0
    # the tight GT box (1, 2, 5, 4) has IoU 15/24 = 0.625: hit at δ = 0.3, 0.5, miss at 0.7
    r = box_metrics(rect_cam(8, 8, 2, 5, 1, 6), [np.array([[1, 2, 5, 4]])])
    assert r["max_box_acc"] == 100.0
    assert (r["max_box_acc_v2_iou30"], r["max_box_acc_v2_iou50"], r["max_box_acc_v2_iou70"]) == (100.0, 100.0, 0.0)
    assert r["max_box_acc_v2"] == pytest.approx(200 / 3)
    # fractional GT coordinates are truncated (wsolevaluation's int() after resizing)
    assert box_metrics(rect_cam(8, 8, 2, 5, 1, 6), [np.array([[1.9, 2.7, 5.2, 4.99]])])["max_box_acc_v2_iou70"] == 0.0
    assert box_metrics(rect_cam(8, 8, 2, 5, 1, 6), [np.array([[1.9, 2.7, 6.2, 5.99]])])["max_box_acc_v2_iou70"] == 100.0
    # touching the right/bottom border: x + w = 8 is clipped to W − 1 = 7
    boxes, largest = contour_boxes(np.pad(np.ones((8, 3), np.uint8), ((0, 0), (5, 0))))
    assert boxes.tolist() == [[5, 0, 7, 7]] and largest == 0
    assert box_metrics(rect_cam(8, 8, 0, 8, 5, 8), [np.array([[5, 0, 7, 7]])])["max_box_acc"] == 100.0


def test_metrics_hole_contour_and_multiple_gt_boxes():
    ring = np.zeros((16, 16), np.uint8)
    ring[1:15, 1:15] = 1
    ring[6:10, 6:10] = 0
    boxes, largest = contour_boxes(ring)
    # RETR_TREE: the outer contour and the hole's contour (the ring pixels around the hole)
    assert boxes.tolist() == [[1, 1, 15, 15], [5, 5, 11, 11]] and largest == 0
    cam = torch.from_numpy(ring.astype(np.float32))[None]
    # GT = the hole's box: V1 (largest = outer, IoU 49/225) misses, V2 (all contours) hits
    r = box_metrics(cam, [np.array([[5, 5, 11, 11]])])
    assert r["max_box_acc"] == 0.0
    assert r["max_box_acc_v2"] == 100.0
    # several GT boxes: the best match counts
    assert box_metrics(cam, [np.array([[20, 20, 30, 30], [1, 1, 15, 15]])])["max_box_acc"] == 100.0


def test_metrics_threshold_sweep_picks_tau_per_variant():
    # big blob at 0.5 (quantised 127), small blob at 1.0 (255). q > int(τ·255) keeps the big
    # blob while int(τ·255) ≤ 126, i.e. τ ≤ 0.498; from τ = 0.499 only the small blob remains
    cam = torch.zeros(1, 16, 16)
    cam[0, 0:8, 0:8] = 0.5
    cam[0, 12:14, 12:14] = 1.0
    assert int(quantize(cam).max()) == 255 and sorted(np.unique(quantize(cam)).tolist()) == [0, 127, 255]
    gt = [np.array([[12, 12, 14, 14]])]  # box of the small blob (x + w convention)
    r = box_metrics(cam, gt)
    assert r["max_box_acc"] == 100.0 and r["max_box_acc_tau"] == pytest.approx(0.499)
    # with all contours the small blob's box is there from τ = 0
    assert r["max_box_acc_v2_iou50"] == 100.0 and r["max_box_acc_v2_iou50_tau"] == 0.0
    curves = BoxAccumulator()
    curves.update(cam, gt)
    c = curves.curves()
    assert c["box_acc"][498] == 0.0 and c["box_acc"][499] == 100.0 and len(c["tau"]) == 1000


def test_metrics_empty_map_gives_box_zero():
    cam = torch.zeros(1, 8, 8)
    # no contour -> box (0, 0, 0, 0), a 1-pixel box with inclusive areas
    r = box_metrics(cam, [np.array([[0, 0, 1, 0]])])  # IoU 1/2
    assert r["max_box_acc"] == 100.0
    assert (r["max_box_acc_v2_iou30"], r["max_box_acc_v2_iou50"], r["max_box_acc_v2_iou70"]) == (100.0, 100.0, 0.0)
    assert box_metrics(cam, [np.array([[2, 2, 5, 5]])])["max_box_acc"] == 0.0


def test_metrics_top1_top5_loc():
    cams = torch.cat([rect_cam(8, 8, 2, 5, 1, 6), rect_cam(8, 8, 2, 5, 1, 6), torch.zeros(1, 8, 8)])
    gts = [np.array([[1, 2, 6, 5]])] * 3
    logits = torch.tensor(
        [[0.0, 5.0, 1.0, 0.0, 0.0, 0.0], [9.0, 8.0, 7.0, 0.5, 6.0, 0.1], [0.0, 5.0, 0.0, 0.0, 0.0, 0.0]]
    )
    targets = torch.tensor([1, 2, 1])  # image 0: top-1 ; image 1: rank 3 ; image 2: top-1 but mislocalised
    r = box_metrics(cams, gts, logits, targets)
    assert r["gt_known_loc"] == pytest.approx(200 / 3)
    assert r["top1_loc"] == pytest.approx(100 / 3) and r["top5_loc"] == pytest.approx(200 / 3)
    # predicted class ids instead of scores: top-1 only (top-5 needs ≥ 5 ranked ids)
    r2 = box_metrics(cams, gts, logits.argmax(1), targets)
    assert r2["top1_loc"] == pytest.approx(100 / 3) and "top5_loc" not in r2
    r3 = box_metrics(cams, gts, logits.topk(5, 1).indices, targets)
    assert r3["top5_loc"] == pytest.approx(200 / 3)
    with pytest.raises(MetricError, match="targets"):
        box_metrics(cams, gts, logits)


def test_metrics_weight_map_rule():
    cam = np.full((16, 16), 0.05, np.float32)  # below max/10 -> zeroed (M̂)
    cam[0:6, 0:6] = 0.5  # largest contour
    cam[10:12, 10:12] = 1.0
    box, s = weight_map_box(cam)
    assert box.tolist() == [0, 0, 6, 6]
    # S = 0.5·36 / (0.5·36 + 1.0·4)
    assert s == pytest.approx(18 / 22)
    r = box_metrics(torch.from_numpy(cam)[None], [np.array([[0, 0, 6, 6]])])
    assert r["weight_map_box_acc"] == 100.0 and r["weight_map_score_s"] == pytest.approx(18 / 22)
    assert weight_map_box(np.zeros((4, 4), np.float32))[1] == 1.0


def test_metrics_rescale_boxes_like_wsolevaluation():
    b = rescale_boxes([[10, 20, 300, 400]], (500, 375), (224, 224))  # (H, W) -> (H', W')
    assert b.tolist() == [[int(10 * 224 / 375), int(20 * 224 / 500), int(300 * 224 / 375), int(400 * 224 / 500)]]


def test_metrics_box_errors():
    with pytest.raises(MetricError, match="no ground-truth box"):
        box_metrics(torch.zeros(1, 4, 4), [np.zeros((0, 4))])
    with pytest.raises(MetricError, match="NaN"):
        box_metrics(torch.full((1, 4, 4), float("nan")), [np.array([[0, 0, 1, 1]])])
    with pytest.raises(MetricError, match="ground-truth box lists"):
        box_metrics(torch.zeros(2, 4, 4), [np.array([[0, 0, 1, 1]])])
    with pytest.raises(MetricError, match="nothing"):
        BoxAccumulator().compute()


def _smooth_cams(seed: int, n: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 5, 5, generator=g) ** 3
    cams = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = cams.amin((1, 2), keepdim=True), cams.amax((1, 2), keepdim=True)
    return (cams - lo) / (hi - lo)


def _random_boxes(seed: int, n: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = rng.integers(1, 3)
        xy = rng.integers(0, size, size=(k, 2, 2))
        lo, hi = xy.min(1), xy.max(1)
        out.append(np.concatenate([lo, hi], 1))  # (x1, y1, x2, y2)
    return out


def test_metrics_boxes_match_the_1000_threshold_reference():
    cams = torch.cat([_smooth_cams(0, 6, 24), _noisy_cams(0, 2, 24)])
    boxes = _random_boxes(0, 8, 24)
    boxes[0] = np.array([[0, 0, 23, 23]])  # border-touching GT
    logits = torch.randn(8, 7, generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 7, (8,), generator=torch.Generator().manual_seed(2))
    fast = box_metrics(cams, boxes, logits, targets)
    ref = reference_box_metrics(cams.numpy(), boxes, logits.numpy(), targets.numpy())
    for k, v in ref.items():
        assert fast[k] == pytest.approx(v), k
    serial = BoxAccumulator(workers=1)
    serial.update(cams, boxes, logits, targets)
    threaded = BoxAccumulator(workers=3)
    threaded.update(cams, boxes, logits, targets)
    assert serial.compute() == threaded.compute() == fast


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_metrics_property_box_split_merge_and_permutation(seed, cut):
    cams = _smooth_cams(seed, 5, 16)
    boxes = _random_boxes(seed, 5, 16)
    ref = BoxAccumulator()
    ref.update(cams, boxes)
    a, b = BoxAccumulator(), BoxAccumulator()
    a.update(cams[:cut], boxes[:cut])
    b.update(cams[cut:], boxes[cut:])
    perm = np.random.default_rng(seed).permutation(5)
    p = BoxAccumulator()
    p.update(cams[torch.from_numpy(perm)], [boxes[i] for i in perm])
    via_state = BoxAccumulator()
    via_state.load_state_dict({k: v + b.state_dict()[k] for k, v in a.state_dict().items()})
    expected = ref.compute()
    for other in (a + b, p, via_state):
        got = other.compute()
        for k in expected:
            assert got[k] == pytest.approx(expected[k]), k


def test_metrics_box_state_does_not_grow_with_images():
    acc = BoxAccumulator()
    sizes = []
    for seed in range(3):
        acc.update(_smooth_cams(seed, 2, 12), _random_boxes(seed, 2, 12))
        sizes.append(sum(v.numel() for v in acc.state_dict().values()))
    assert len(set(sizes)) == 1


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 15), st.integers(0, 15), st.integers(1, 16), st.integers(1, 16), st.floats(0.01, 1.0))
def test_metrics_property_rectangle_cam_localises_its_box(x0, y0, w, h, value):
    x1, y1 = min(x0 + w, 16), min(y0 + h, 16)
    cam = rect_cam(16, 16, y0, y1, x0, x1, value=value)  # thresholds are relative to the map's max
    # boundingRect (x0, y0, x1 − x0, y1 − y0) -> box (x0, y0, min(x1, 15), min(y1, 15))
    gt = [np.array([[x0, y0, min(x1, 15), min(y1, 15)]])]
    r = box_metrics(cam, gt)
    assert r["max_box_acc"] == 100.0 and r["max_box_acc_v2"] == 100.0 and r["weight_map_box_acc"] == 100.0
    assert r["weight_map_score_s"] == pytest.approx(1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_boxes_cuda_matches_cpu():
    cams = _smooth_cams(1, 4, 24)
    boxes = _random_boxes(1, 4, 24)
    logits = torch.randn(4, 6)
    targets = torch.tensor([0, 1, 2, 3])
    cpu = box_metrics(cams, boxes, logits, targets)
    assert box_metrics(cams.cuda(), boxes, logits.cuda(), targets.cuda()) == cpu


def _noisy_cams(seed: int, n: int, size: int) -> torch.Tensor:
    """CAMs with many contours (holes, several blobs, equal-area ties) from 5×5 noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 5, 5, generator=g)
    cams = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    cams = cams - cams.amin((1, 2), keepdim=True)
    cams = cams / cams.amax((1, 2), keepdim=True)
    cams[0] = 0.0  # two identical square blobs: equal contour areas (V1 takes the first)
    cams[0, 2:6, 2:6] = 1.0
    cams[0, 2:6, 12:16] = 1.0
    cams[0, 3:5, 3:5] = 0.5  # a hole at the top levels
    return cams


@pytest.mark.parametrize("interval", [0.001, 0.01, 0.05])
def test_metrics_boxes_equal_wsolevaluation_box_evaluator(interval):
    """MaxBoxAcc (V1, multi_contour_eval=False, IoU 50) and MaxBoxAccV2 (all contours, IoU
    30/50/70) equal wsolevaluation's BoxEvaluator (evaluation.py, ported in
    wsol.metrics.reference) at the same cam_curve_interval."""
    from wsol.metrics.reference import WsolEvalBoxEvaluator

    cams = torch.cat([_noisy_cams(3, 6, 20), _smooth_cams(4, 4, 20)])
    boxes = _random_boxes(5, 10, 20)
    boxes[0] = np.array([[12, 2, 15, 5]])  # the second of the two tied blobs
    v1 = WsolEvalBoxEvaluator(interval, multi_contour_eval=False, iou_threshold_list=(50,))
    v2 = WsolEvalBoxEvaluator(interval, multi_contour_eval=True, iou_threshold_list=(30, 50, 70))
    for cam, gt in zip(cams.numpy(), boxes):
        v1.accumulate(cam, gt)
        v2.accumulate(cam, gt)
    got = box_metrics(cams, boxes, cam_curve_interval=interval)
    assert got["max_box_acc"] == pytest.approx(v1.compute()[0], abs=1e-12)
    per_delta = v2.compute()
    assert [got[f"max_box_acc_v2_iou{d}"] for d in (30, 50, 70)] == pytest.approx(per_delta, abs=1e-12)
    assert got["max_box_acc_v2"] == pytest.approx(np.mean(per_delta), abs=1e-12)
    assert got["cam_curve_interval"] == interval
    acc = BoxAccumulator(cam_curve_interval=interval)
    acc.update(cams, boxes)
    assert len(acc.curves()["tau"]) == len(np.arange(0, 1, interval))
    with pytest.raises(MetricError, match="cam_curve_interval"):
        acc.merge(BoxAccumulator(cam_curve_interval=interval * 2))


def test_metrics_vectorised_contour_boxes_and_areas_equal_opencv():
    import cv2

    from wsol.metrics.boxes import _rects_and_areas

    q = quantize(_noisy_cams(7, 4, 32))
    for m in q:
        for v in np.unique(m)[::9]:
            contours = cv2.findContours((m >= v).view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
            if not contours:
                continue
            rects, areas = _rects_and_areas(contours)
            assert rects.tolist() == [list(cv2.boundingRect(c)) for c in contours]
            assert areas.tolist() == [cv2.contourArea(c) for c in contours]
