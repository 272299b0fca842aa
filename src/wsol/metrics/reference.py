"""Straightforward NumPy/OpenCV implementations of the same semantics as the fast
accumulators, written the way the protocol is usually coded (wsolevaluation style): one
``np.histogram`` per image for the pixel metrics, one ``cv2.threshold`` +
``cv2.findContours`` per image and per threshold (1000 per image at the default step) for
the box metrics.

Two layers:

- :class:`WsolEvalMaskEvaluator` / :class:`WsolEvalBoxEvaluator`: ports of wsolevaluation's
  ``evaluation.py`` (Choe et al., 2020; github.com/clovaai/wsolevaluation, ``MaskEvaluator``,
  ``BoxEvaluator``, ``compute_bboxes_from_scoremaps``, ``calculate_multiple_iou``), statement
  for statement, minus file loading (CAMs, masks and resized GT boxes are passed in). They
  are the reference the fast path must equal and the baseline of
  ``benchmarks/bench_metrics.py``.
- :func:`reference_pixel_metrics` / :func:`reference_box_metrics`: the rest of the
  protocol (confusion*, τ*, Dice, F1±, top-k loc) coded the same slow, obvious way.

They are slow on purpose and exist to cross-check :mod:`wsol.metrics` (tests). Same keys as
the fast versions for the numbers they compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

_CONTOUR_INDEX = 1 if cv2.__version__.split(".")[0] == "3" else 0


# --- wsolevaluation's evaluation.py, ported -----------------------------------------------
def calculate_multiple_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """evaluation.py ``calculate_multiple_iou``: IoU matrix (num_a × num_b) of x0y0x1y1
    boxes with inclusive areas; degenerate pairs (denominator ≤ 0) get 0."""
    num_a, num_b = box_a.shape[0], box_b.shape[0]
    box_a = np.tile(box_a, num_b)
    box_a = np.expand_dims(box_a, axis=1).reshape((num_a, num_b, -1))
    box_b = np.tile(box_b, num_a)
    box_b = np.expand_dims(box_b, axis=1).reshape((num_b, num_a, -1))
    box_b = np.transpose(box_b, (1, 0, 2))
    min_x = np.maximum(box_a[:, :, 0], box_b[:, :, 0])
    min_y = np.maximum(box_a[:, :, 1], box_b[:, :, 1])
    max_x = np.minimum(box_a[:, :, 2], box_b[:, :, 2])
    max_y = np.minimum(box_a[:, :, 3], box_b[:, :, 3])
    area_intersect = np.maximum(0, max_x - min_x + 1) * np.maximum(0, max_y - min_y + 1)
    area_a = (box_a[:, :, 2] - box_a[:, :, 0] + 1) * (box_a[:, :, 3] - box_a[:, :, 1] + 1)
    area_b = (box_b[:, :, 2] - box_b[:, :, 0] + 1) * (box_b[:, :, 3] - box_b[:, :, 1] + 1)
    denominator = area_a + area_b - area_intersect
    degenerate_indices = np.where(denominator <= 0)
    denominator[degenerate_indices] = 1
    ious = area_intersect / denominator
    ious[degenerate_indices] = 0
    return ious


def compute_bboxes_from_scoremaps(
    scoremap: np.ndarray, scoremap_threshold_list: Sequence[float], multi_contour_eval: bool = False
) -> tuple[list[np.ndarray], list[int]]:
    """evaluation.py ``compute_bboxes_from_scoremaps``: per threshold, the boxes of the
    contours of ``uint8(scoremap·255) > int(τ·max)`` (all contours, or the largest)."""
    height, width = scoremap.shape
    scoremap_image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)

    def scoremap2bbox(threshold: float) -> tuple[np.ndarray, int]:
        _, thr_gray_heatmap = cv2.threshold(
            src=scoremap_image, thresh=int(threshold * np.max(scoremap_image)), maxval=255, type=cv2.THRESH_BINARY
        )
        contours = cv2.findContours(image=thr_gray_heatmap, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[
            _CONTOUR_INDEX
        ]
        if len(contours) == 0:
            return np.asarray([[0, 0, 0, 0]]), 1
        if not multi_contour_eval:
            contours = [max(contours, key=cv2.contourArea)]
        estimated_boxes = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            x0, y0, x1, y1 = x, y, x + w, y + h
            x1 = min(x1, width - 1)
            y1 = min(y1, height - 1)
            estimated_boxes.append([x0, y0, x1, y1])
        return np.asarray(estimated_boxes), len(contours)

    estimated_boxes_at_each_thr, number_of_box_list = [], []
    for threshold in scoremap_threshold_list:
        boxes, number_of_box = scoremap2bbox(threshold)
        estimated_boxes_at_each_thr.append(boxes)
        number_of_box_list.append(number_of_box)
    return estimated_boxes_at_each_thr, number_of_box_list


class WsolEvalBoxEvaluator:
    """evaluation.py ``BoxEvaluator`` (``accumulate`` per score map, ``compute`` -> the
    MaxBoxAcc per IoU threshold, in %). ``gt_boxes`` are given already resized (integers)."""

    def __init__(self, cam_curve_interval: float = 0.001, multi_contour_eval: bool = True,
                 iou_threshold_list: Sequence[int] = (30, 50, 70)) -> None:
        self.cam_threshold_list = list(np.arange(0, 1, cam_curve_interval))
        self.iou_threshold_list = list(iou_threshold_list)
        self.multi_contour_eval = multi_contour_eval
        self.cnt = 0
        self.num_correct = {t: np.zeros(len(self.cam_threshold_list)) for t in self.iou_threshold_list}

    def accumulate(self, scoremap: np.ndarray, gt_boxes: np.ndarray) -> None:
        boxes_per_threshold, number_of_box_list = compute_bboxes_from_scoremaps(
            scoremap=scoremap, scoremap_threshold_list=self.cam_threshold_list,
            multi_contour_eval=self.multi_contour_eval,
        )
        boxes_at_thresholds = np.concatenate(boxes_per_threshold, axis=0)
        multiple_iou = calculate_multiple_iou(np.array(boxes_at_thresholds), np.array(gt_boxes))
        idx = 0
        sliced_multiple_iou = []
        for nr_box in number_of_box_list:
            sliced_multiple_iou.append(max(multiple_iou.max(1)[idx : idx + nr_box]))
            idx += nr_box
        for _threshold in self.iou_threshold_list:
            correct_threshold_indices = np.where(np.asarray(sliced_multiple_iou) >= (_threshold / 100))[0]
            self.num_correct[_threshold][correct_threshold_indices] += 1
        self.cnt += 1

    def compute(self) -> list[float]:
        return [float((self.num_correct[t] * 100.0 / float(self.cnt)).max()) for t in self.iou_threshold_list]


class WsolEvalMaskEvaluator:
    """evaluation.py ``MaskEvaluator``: score histograms of GT-positive / GT-negative pixels
    (``np.histogram`` with edges [0, bw, 2bw, ..., 1-bw, 1, 2, 3]); ``compute`` -> PxAP (%).
    Masks are given already decoded (1 ROI, 0 background, 255 ignore)."""

    def __init__(self, cam_curve_interval: float = 0.001) -> None:
        self.cam_threshold_list = list(np.arange(0, 1, cam_curve_interval))
        self.num_bins = len(self.cam_threshold_list) + 2
        self.threshold_list_right_edge = np.append(self.cam_threshold_list, [1.0, 2.0, 3.0])
        self.gt_true_score_hist = np.zeros(self.num_bins, dtype=np.float64)
        self.gt_false_score_hist = np.zeros(self.num_bins, dtype=np.float64)

    def accumulate(self, scoremap: np.ndarray, gt_mask: np.ndarray) -> None:
        gt_true_scores = scoremap[gt_mask == 1]
        gt_false_scores = scoremap[gt_mask == 0]
        gt_true_hist, _ = np.histogram(gt_true_scores, bins=self.threshold_list_right_edge)
        self.gt_true_score_hist += gt_true_hist.astype(np.float64)
        gt_false_hist, _ = np.histogram(gt_false_scores, bins=self.threshold_list_right_edge)
        self.gt_false_score_hist += gt_false_hist.astype(np.float64)

    def compute(self) -> float:
        num_gt_true = self.gt_true_score_hist.sum()
        tp = self.gt_true_score_hist[::-1].cumsum()
        fn = num_gt_true - tp
        fp = self.gt_false_score_hist[::-1].cumsum()  # (tn = num_gt_false - fp is unused there too)
        if ((tp + fn) <= 0).all():
            raise RuntimeError("No positive ground truth in the eval set.")
        if ((tp + fp) <= 0).all():
            raise RuntimeError("No positive prediction in the eval set.")
        non_zero_indices = (tp + fp) != 0
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        auc = (precision[1:] * np.diff(recall))[non_zero_indices[1:]].sum()
        return float(auc * 100)


# --- the rest of the protocol, coded the obvious way ----------------------------------------
def reference_pixel_metrics(
    cams: Any, masks: Any, ignore_index: int = 255, cam_curve_interval: float = 0.001
) -> dict[str, float]:
    """PxAP, confusion*, τ*, pooled Dice at τ*, per-image F1± at 0.5 from ``cams`` N×H×W
    (float32 in [0, 1]) and ``masks`` N×H×W (0/1/ignore), on wsolevaluation's grid
    (thresholds ``np.arange(0, 1, cam_curve_interval)`` then 1.0, float64)."""
    cams = np.asarray(cams, dtype=np.float32)
    masks = np.asarray(masks)
    grid = np.append(np.arange(0, 1, cam_curve_interval), 1.0)
    N = len(grid) - 1
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
        "tau_star": round(float(grid[l_star]), 12),
        "dice_fg_pooled": 100 * 2 * tp / (2 * tp + fp + fn),
        "dice_bg_pooled": 100 * 2 * tn / (2 * tn + fn + fp),
        "f1_fg_mean": 100 * float(np.mean(f1p)),
        "f1_bg_mean": 100 * float(np.mean(f1n)),
    }


def _boxes_at_thresholds(cam: np.ndarray, multi_contour: bool, cam_curve_interval: float) -> list[np.ndarray]:
    """wsolevaluation's compute_bboxes_from_scoremaps: one threshold + findContours per τ."""
    return compute_bboxes_from_scoremaps(cam, list(np.arange(0, 1, cam_curve_interval)), multi_contour)[0]


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
    cams: Any, gt_boxes: Sequence[Any], preds: Any = None, targets: Any = None, cam_curve_interval: float = 0.001
) -> dict[str, float]:
    """MaxBoxAcc (V1), MaxBoxAccV2 (+ per δ), top-1/top-5 loc (V1 sweep; ``preds`` N×C scores)."""
    cams = np.asarray(cams, dtype=np.float32)
    n_tau = len(np.arange(0, 1, cam_curve_interval))
    v1 = np.zeros(n_tau)
    v2 = {d: np.zeros(n_tau) for d in (30, 50, 70)}
    t1, t5 = np.zeros(n_tau), np.zeros(n_tau)
    for i, cam in enumerate(cams):
        gt = np.trunc(np.asarray(gt_boxes[i], dtype=np.float64).reshape(-1, 4))
        best1 = np.array([_iou(b, gt).max() for b in _boxes_at_thresholds(cam, False, cam_curve_interval)])
        best2 = np.array([_iou(b, gt).max() for b in _boxes_at_thresholds(cam, True, cam_curve_interval)])
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
