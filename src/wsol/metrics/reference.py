"""Straightforward NumPy/OpenCV implementations of the same semantics as the fast
accumulators, written the way the protocol is usually coded (wsolevaluation style): one
``np.histogram`` per image for the pixel metrics, one ``cv2.threshold`` +
``cv2.findContours`` per image and per threshold (1000 per image) for the box metrics.

They are slow on purpose and exist to cross-check :mod:`wsol.metrics` (tests) and to be
the baseline of ``benchmarks/bench_metrics.py``. Same keys as the fast versions for the
numbers they compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

N = 1000


def reference_pixel_metrics(cams: Any, masks: Any, ignore_index: int = 255) -> dict[str, float]:
    """PxAP, confusion*, τ*, pooled Dice at τ*, per-image F1± at 0.5 from ``cams`` N×H×W
    (float32 in [0, 1]) and ``masks`` N×H×W (0/1/ignore)."""
    cams = np.asarray(cams, dtype=np.float32)
    masks = np.asarray(masks)
    grid = (np.arange(N + 1, dtype=np.float64) / N).astype(np.float32).astype(np.float64)
    edges = np.append(grid, 2.0)  # bin l = [τ_l, τ_{l+1}), last bin [1, 2]
    hist_fg = np.zeros(N + 1)
    hist_bg = np.zeros(N + 1)
    f1p, f1n = [], []
    half = np.float32(0.5)
    for cam, mask in zip(cams, masks):
        hist_fg += np.histogram(cam[mask == 1], bins=edges)[0]
        hist_bg += np.histogram(cam[mask == 0], bins=edges)[0]
        pred = cam >= half
        valid = mask != ignore_index
        gt = mask == 1
        if (gt & valid).any():  # Eq. 14, max-min-uncertainty
            f1p.append(2 * (pred & gt).sum() / ((pred & valid).sum() + gt.sum()))
        bg = (mask == 0)
        if bg.any():  # Eq. 15
            f1n.append(2 * (~pred & bg).sum() / ((~pred & valid).sum() + bg.sum()))
    fg_ge = np.cumsum(hist_fg[::-1])[::-1]
    bg_ge = np.cumsum(hist_bg[::-1])[::-1]
    n_fg, n_bg = fg_ge[0], bg_ge[0]
    pxap = 0.0
    prev_recall = 0.0
    for level in range(N, -1, -1):  # walking τ from 1.0 down to 0
        tp, fp = fg_ge[level], bg_ge[level]
        recall = tp / n_fg
        if tp + fp > 0:
            pxap += tp / (tp + fp) * (recall - prev_recall)
        prev_recall = recall
    tp_c = 100 * fg_ge[1:] / n_fg
    fp_c = 100 * bg_ge[1:] / n_bg
    iou_fg = fg_ge / (n_fg + bg_ge)
    iou_bg = (n_bg - bg_ge) / (n_bg + n_fg - fg_ge)
    l_star = int(np.argmax((iou_fg + iou_bg) / 2))
    tp, fp = fg_ge[l_star], bg_ge[l_star]
    fn, tn = n_fg - tp, n_bg - fp
    return {
        "pxap": 100 * pxap,
        "tp_star": float(tp_c.mean()),
        "fn_star": float(100 - tp_c.mean()),
        "fp_star": float(fp_c.mean()),
        "tn_star": float(100 - fp_c.mean()),
        "tau_star": l_star / N,
        "dice_fg_pooled": 100 * 2 * tp / (2 * tp + fp + fn),
        "dice_bg_pooled": 100 * 2 * tn / (2 * tn + fn + fp),
        "f1_fg_mean": 100 * float(np.mean(f1p)),
        "f1_bg_mean": 100 * float(np.mean(f1n)),
    }


def _boxes_at_thresholds(cam: np.ndarray, multi_contour: bool) -> list[np.ndarray]:
    """wsolevaluation's compute_bboxes_from_scoremaps: one threshold + findContours per τ."""
    height, width = cam.shape
    scoremap = np.expand_dims((cam * 255).astype(np.uint8), 2)
    out = []
    for tau in np.arange(0, 1, 0.001):
        _, thr = cv2.threshold(scoremap, int(tau * np.max(scoremap)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(thr, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if len(contours) == 0:
            out.append(np.array([[0, 0, 0, 0]]))
            continue
        if not multi_contour:
            contours = [max(contours, key=cv2.contourArea)]
        boxes = []
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
        out.append(np.array(boxes))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """wsolevaluation's calculate_multiple_iou (inclusive areas)."""
    a = a[:, None].astype(np.float64)
    b = b[None].astype(np.float64)
    x0, y0 = np.maximum(a[..., 0], b[..., 0]), np.maximum(a[..., 1], b[..., 1])
    x1, y1 = np.minimum(a[..., 2], b[..., 2]), np.minimum(a[..., 3], b[..., 3])
    inter = np.clip(x1 - x0 + 1, 0, None) * np.clip(y1 - y0 + 1, 0, None)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


def reference_box_metrics(
    cams: Any, gt_boxes: Sequence[Any], preds: Any = None, targets: Any = None
) -> dict[str, float]:
    """MaxBoxAcc (V1), MaxBoxAccV2 (+ per δ), top-1/top-5 loc (V1 sweep; ``preds`` N×C scores)."""
    cams = np.asarray(cams, dtype=np.float32)
    n_tau = len(np.arange(0, 1, 0.001))
    v1 = np.zeros(n_tau)
    v2 = {d: np.zeros(n_tau) for d in (30, 50, 70)}
    t1, t5 = np.zeros(n_tau), np.zeros(n_tau)
    for i, cam in enumerate(cams):
        gt = np.trunc(np.asarray(gt_boxes[i], dtype=np.float64).reshape(-1, 4))
        best1 = np.array([_iou(b, gt).max() for b in _boxes_at_thresholds(cam, False)])
        best2 = np.array([_iou(b, gt).max() for b in _boxes_at_thresholds(cam, True)])
        v1 += best1 >= 0.5
        for d in v2:
            v2[d] += best2 >= d / 100
        if preds is not None:
            order = np.argsort(-np.asarray(preds[i]), kind="stable")
            t1 += (best1 >= 0.5) & (order[0] == int(targets[i]))
            t5 += (best1 >= 0.5) & (int(targets[i]) in order[:5])
    n = len(cams)
    out = {"max_box_acc": 100 * v1.max() / n}
    for d in v2:
        out[f"max_box_acc_v2_iou{d}"] = 100 * v2[d].max() / n
    out["max_box_acc_v2"] = float(np.mean([out[f"max_box_acc_v2_iou{d}"] for d in v2]))
    if preds is not None:
        out["top1_loc"] = 100 * t1.max() / n
        out["top5_loc"] = 100 * t5.max() / n
    return out
