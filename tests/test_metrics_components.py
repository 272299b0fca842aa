"""The union-find box sweep (wsol.metrics._components) against OpenCV's findContours
(RETR_TREE, the reference's contour finder) on many small random maps — ties, borders,
one-pixel lines, empty maps — outer and hole contours separately; and hand-made cases."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from wsol.errors import MetricError
from wsol.metrics import _components as C
from wsol.metrics import box_iou
from wsol.metrics.boxes import IOU_DELTAS, box_grid, contour_boxes, image_box_hits


def _contours(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """wsolevaluation's boxes of every contour of a binary map, and whether each is a hole
    (odd depth in findContours' hierarchy)."""
    H, W = binary.shape
    found, hierarchy = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2:]
    boxes, hole = [], []
    for i, c in enumerate(found):
        x, y, w, h = cv2.boundingRect(c)
        boxes.append((x, y, min(x + w, W - 1), min(y + h, H - 1)))
        depth, k = 0, hierarchy[0][i][3]
        while k >= 0:
            depth, k = depth + 1, hierarchy[0][k][3]
        hole.append(depth % 2 == 1)
    return np.array(boxes, dtype=np.int64).reshape(-1, 4), np.array(hole, dtype=bool)


def _sweeps(q: np.ndarray, values: np.ndarray, gt: np.ndarray):
    """Both raw passes of the kernel, per value of ``values`` (increasing)."""
    H, W = q.shape
    prep, order, work = C._WORKSPACE.get(H, W)
    n_ge = C._prepare(q, *prep, *order)
    v = values.astype(np.int64)
    outer = [a[::-1] for a in C._sweep_upper(H, W, *order, n_ge, *C._STARTS_8, v[::-1].copy(), gt, *work)]
    holes = C._sweep_lower(H, W, *order, n_ge, *C._STARTS_4, v.copy(), gt, *work)
    return outer, holes


def test_components_equal_findcontours_on_random_maps():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(600):
        H, W = (int(s) for s in rng.integers(1, 14, 2))
        q = rng.integers(0, int(rng.integers(1, 7)), (H, W)).astype(np.uint8) * int(rng.choice([1, 40]))
        k = int(rng.integers(1, 4))
        xy = rng.integers(-1, 15, (k, 2, 2))
        gt = np.concatenate([xy.min(1), xy.max(1)], 1).astype(np.float64)
        deltas = np.sort(rng.random(3)) if rng.random() < 0.5 else np.asarray(IOU_DELTAS)
        values = np.unique(q)
        (o_max, o_min, extent, big_max, big_min, cover, n_holes), (h_max, h_min, *_) = _sweeps(q, values, gt)
        hits, v1_max, v1_min, ext, count = C.level_set_hits(q, values, gt, deltas)
        for j, v in enumerate(values):
            binary = (q >= v).astype(np.uint8)
            boxes, hole = _contours(binary)
            iou = box_iou(boxes, gt).max(axis=1)
            outer = iou[~hole]
            assert (o_max[j], o_min[j]) == (outer.max(), outer.min())
            assert n_holes[j] == hole.sum()  # counted by Euler steps in the upper pass
            # the largest contour (cv2.contourArea, first on ties) is among the candidates
            found = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
            largest = iou[int(np.argmax([cv2.contourArea(c) for c in found]))]
            assert (v1_max[j], v1_min[j]) == (big_max[j], big_min[j])
            assert big_min[j] <= largest <= big_max[j]
            if hole.any():
                assert (h_max[j], h_min[j]) == (iou[hole].max(), iou[hole].min())
                assert iou[hole].max() <= cover[j]  # the bound that lets the hole pass stop early
            else:
                assert h_max[j] == -1.0
            ys, xs = np.nonzero(binary)
            assert ext[j].tolist() == extent[j].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
            assert count[j] == binary.sum()
            assert hits[:, j].tolist() == (iou.max() >= deltas).tolist()
            checked += 1
    assert checked > 1500


def test_components_hole_box_is_the_hole_grown_by_one_and_clipped():
    q = np.zeros((7, 6), np.uint8)
    q[1:6, 1:6] = 9  # touches the right border
    q[2:4, 2:4] = 0  # a 2×2 hole
    q[3:5, 4] = 0  # grown by an L: hole pixels x 2..4, y 2..4
    values = np.array([9])
    gt = np.array([[1.0, 1.0, 5.0, 5.0]])
    (o_max, *_), (h_max, *_) = _sweeps(q, values, gt)
    boxes, hole = _contours((q >= 9).astype(np.uint8))
    # hole pixels x 2..4, y 2..4: (x_min − 1, y_min − 1, min(x_max + 2, W − 1), min(y_max + 2, H − 1))
    assert boxes[hole].tolist() == [[1, 1, 5, 6]]
    assert h_max[0] == box_iou(np.array([[1, 1, 5, 6]]), gt).max()
    assert o_max[0] == box_iou(boxes[~hole], gt).max()


def test_components_v1_is_the_largest_contour_where_the_contours_disagree():
    """Two blobs: a small one on the GT box (IoU 1) and a large one elsewhere (IoU 0). V1
    takes the largest contour (the large blob: miss) while V2 hits; with the large blob
    dimmer, the top levels hold the small blob alone (V1 hit)."""
    q = np.zeros((30, 30), np.uint8)
    q[2:6, 2:6] = 200  # small, bright, on the GT box
    q[12:28, 10:28] = 150  # large, dimmer
    gt = np.array([[2.0, 2.0, 6.0, 6.0]])  # box of the small blob's contour: (2, 2, 5+1, 5+1)
    _, levels = box_grid(0.01)
    hit_v1, hit_v2 = image_box_hits(q, gt, levels)
    t = levels[:, 200] + 1
    both = t <= 150  # both blobs in the map
    assert not hit_v1[both].any() and hit_v2[1][both].all()
    assert hit_v1[~both].all() and hit_v2[1][~both].all()
    # the same decision as OpenCV's largest contour, level by level
    for j in np.flatnonzero(both)[:3]:
        boxes, largest = contour_boxes((q >= t[j]).astype(np.uint8))
        assert not box_iou(boxes[largest : largest + 1], gt).max() >= 0.5


def test_components_empty_map_and_size_limit():
    q = np.zeros((5, 5), np.uint8)
    hit_v1, hit_v2 = image_box_hits(q, np.array([[0.0, 0.0, 0.0, 0.0]]), box_grid(0.1)[1])
    assert hit_v1.all() and hit_v2.all()  # the box (0, 0, 0, 0) of an empty map, as wsolevaluation
    with pytest.raises(MetricError, match="32767"):
        C.level_set_hits(np.zeros((1, 2**15), np.uint8), np.array([1]), np.zeros((1, 4)), np.asarray(IOU_DELTAS))
