"""Which images the report shows, and how well each is localised.

Per image (all at the stored resolution):

- mask sets: IoU of the ROI, {CAM ≥ τ} vs the mask (ignore pixels left out); for an image
  without ROI (a normal histology patch) the IoU of the background instead, so "nothing
  predicted" scores 1 there;
- box sets: IoU of the predicted box with the best-matching ground-truth box, the box of
  the largest contour of the CAM at τ (wsolevaluation's rule, as MaxBoxAcc:
  ``wsol.metrics.boxes``; τ = the MaxBoxAcc threshold).

:func:`pick` orders items by that IoU and keeps the best, the median and the worst.
:class:`GalleryPool` does the same while streaming over a whole split (the engine's
evaluator can feed it every batch): it keeps every image's IoU (floats), the images of
the current best and worst, and a fixed-size uniform sample of candidates from which the
one nearest the split's median IoU is shown.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

#: order of the rows the gallery shows
RANKS = ("best", "median", "worst")


def mask_iou(cam: np.ndarray, mask: np.ndarray, tau: float) -> float:
    """IoU of {cam ≥ τ} with the ROI of ``mask`` (0/1/255), ignore pixels left out; the
    background's IoU when the mask has no ROI (1.0 when both are empty)."""
    cam = np.asarray(cam, dtype=np.float32)
    mask = np.asarray(mask)
    valid = mask != 255
    pred = (cam >= np.float32(tau)) & valid
    gt = (mask == 1) & valid
    if not gt.any():  # no ROI: how well the background is left alone
        pred, gt = ~pred & valid, ~gt & valid
    union = (pred | gt).sum()
    return float((pred & gt).sum() / union) if union else 1.0


def predicted_box(cam: np.ndarray, tau: float) -> np.ndarray:
    """(x1, y1, x2, y2) of the largest contour of the CAM at τ (wsolevaluation's rule)."""
    import torch

    from wsol.metrics.boxes import contour_boxes, quantize

    q = quantize(torch.as_tensor(np.asarray(cam, dtype=np.float32))[None])[0]
    level = int(tau * int(q.max()))  # int(τ·max), as wsolevaluation
    boxes, largest = contour_boxes((q > level).astype(np.uint8))
    return boxes[largest].astype(np.float64)


def box_iou_best(box: np.ndarray, gt_boxes: np.ndarray) -> float:
    """Best IoU of ``box`` with any ground-truth box (inclusive pixel areas, wsolevaluation)."""
    from wsol.metrics.boxes import box_iou

    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if len(gt) == 0:
        return float("nan")
    return float(box_iou(np.asarray(box, dtype=np.float64)[None], np.floor(gt)).max())


def item_iou(item: dict[str, Any], tau: float | None) -> float:
    """The per-image IoU of a gallery item (see the module doc); NaN without a label or CAM."""
    cam = item.get("cam")
    if cam is None:
        return float("nan")
    t = 0.5 if tau is None else float(tau)
    if item.get("boxes") is not None and len(np.asarray(item["boxes"]).reshape(-1, 4)):
        return box_iou_best(predicted_box(cam, t), item["boxes"])
    if item.get("mask") is not None:
        return mask_iou(cam, item["mask"], t)
    return float("nan")


def pick(items: list[dict[str, Any]], tau: float | None) -> list[dict[str, Any]]:
    """The best, median and worst of ``items`` by per-image IoU (fewer when fewer items),
    each a copy with ``iou`` and ``rank`` set. Items that already carry ``rank`` (chosen over
    the whole split by :class:`GalleryPool`) are kept as they are, in RANKS order."""
    if items and all("rank" in it for it in items):
        return sorted(items, key=lambda it: RANKS.index(it["rank"]) if it["rank"] in RANKS else len(RANKS))
    scored = [dict(it, iou=it["iou"] if "iou" in it else item_iou(it, tau)) for it in items]
    scored = [it for it in scored if np.isfinite(it["iou"])]
    if not scored:
        return [dict(it, rank="") for it in items]
    order = sorted(range(len(scored)), key=lambda i: (-scored[i]["iou"], i))
    chosen = [("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])]
    seen: set[int] = set()
    out = []
    for rank, i in chosen:
        if i not in seen:
            seen.add(i)
            out.append(dict(scored[i], rank=rank))
    return out


class GalleryPool:
    """Streaming best / median / worst images of a split by per-image IoU.

    ``add(item, iou)`` for every image (``item``: the gallery dict — image, cam, mask/boxes,
    label, image_id); ``items()`` at the end gives up to three items with ``iou`` and
    ``rank``. Memory: the IoU floats, two images and ``candidates`` sampled images
    (reservoir sampling, seeded) whatever the split's size; the "median" row is the sampled
    image whose IoU is nearest to the split's median IoU."""

    def __init__(self, candidates: int = 32, seed: int = 0):
        self.candidates = candidates
        self.rng = random.Random(seed)
        self.ious: list[float] = []
        self.best: tuple[float, dict[str, Any]] | None = None
        self.worst: tuple[float, dict[str, Any]] | None = None
        self.sample: list[tuple[float, dict[str, Any]]] = []

    def add(self, item: dict[str, Any], iou: float) -> None:
        if not np.isfinite(iou):
            return
        self.ious.append(float(iou))
        if self.best is None or iou > self.best[0]:
            self.best = (iou, item)
        if self.worst is None or iou < self.worst[0]:
            self.worst = (iou, item)
        n = len(self.ious)
        if len(self.sample) < self.candidates:
            self.sample.append((iou, item))
        else:
            j = self.rng.randrange(n)
            if j < self.candidates:
                self.sample[j] = (iou, item)

    def items(self) -> list[dict[str, Any]]:
        if self.best is None or self.worst is None:
            return []
        median = float(np.median(self.ious))
        mid = min(self.sample, key=lambda s: abs(s[0] - median))
        out, seen = [], set()
        for rank, (iou, item) in zip(RANKS, (self.best, mid, self.worst)):
            if id(item) not in seen:
                seen.add(id(item))
                out.append(dict(item, iou=iou, rank=rank))
        return out
