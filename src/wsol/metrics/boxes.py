"""Box localisation metrics with wsolevaluation semantics (Choe et al., 2020; f-cam.txt
§4.1): MaxBoxAcc (V1), MaxBoxAccV2, GT-known / top-1 / top-5 localisation, plus the
weight-map box rule (weight-map-wsol.txt Eqs. 5-6). Conventions: see the package docstring.

Per image the CAM is quantised once to uint8 (as wsolevaluation); the thresholds τ ∈
``np.arange(0, 1, cam_curve_interval)`` map to integer levels ``int(τ·max)`` and the binary
maps ``q > level``. wsolevaluation runs ``findContours`` on each of them; here the boxes of
every contour of every threshold come from one union-find pass over the image's pixels
(:mod:`wsol.metrics._components`), which gives the same boxes; OpenCV runs only where
MaxBoxAcc's largest contour is not settled by that pass's area bounds (``contour_boxes``:
``cv2.boundingRect`` = min/max of the points, ``cv2.contourArea`` = the shoelace sum, exact
in integers). State: per-τ counters only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import torch

from wsol.errors import MetricError
from wsol.metrics._components import level_set_hits
from wsol.metrics.pixel import DEFAULT_INTERVAL, threshold_grid_for, validate_cams

#: τ ∈ {0, 0.001, ..., 0.999}, exactly as wsolevaluation builds them (np.arange, float64)
BOX_TAUS = np.arange(0, 1, DEFAULT_INTERVAL)
IOU_DELTAS = (0.3, 0.5, 0.7)
#: LEVELS[l, m] = int(τ_l · m): the uint8 level of threshold l for an image whose quantised
#: maximum is m (same float64 arithmetic as wsolevaluation's ``int(threshold * max)``)
LEVELS = np.floor(BOX_TAUS[:, None] * np.arange(256)[None, :]).astype(np.int64)
WEIGHT_MAP_FRACTION = 0.1  # Eq. 5, weight-map-wsol: τ = max(M)/10


@functools.lru_cache(maxsize=16)
def box_grid(cam_curve_interval: float = DEFAULT_INTERVAL) -> tuple[np.ndarray, np.ndarray]:
    """(τ list, level table) of a box sweep: τ = ``np.arange(0, 1, cam_curve_interval)``
    (wsolevaluation's ``cam_threshold_list``) and ``levels[l, m] = int(τ_l · m)``."""
    taus = threshold_grid_for(cam_curve_interval).taus[:-1]  # the same np.arange, validated
    taus.setflags(write=False)
    levels = np.floor(taus[:, None] * np.arange(256)[None, :]).astype(np.int64)
    levels.setflags(write=False)
    return taus, levels


def quantize(cams: torch.Tensor) -> np.ndarray:
    """uint8 maps as wsolevaluation: ``(s·255).astype(uint8)`` (float32 product, truncated)."""
    return (cams.float() * 255).to(torch.uint8).cpu().numpy()


def _rects_and_areas(contours: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.boundingRect`` (x, y, w, h) and ``cv2.contourArea`` of every contour, in one
    vectorised pass over their concatenated points (shoelace sum in int64: exact, so the
    same double as OpenCV's)."""
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    starts = np.zeros(len(contours), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    x, y = pts[:, 0], pts[:, 1]
    x0, y0 = np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts)
    w = np.maximum.reduceat(x, starts) - x0 + 1
    h = np.maximum.reduceat(y, starts) - y0 + 1
    nxt = np.arange(1, len(pts) + 1)
    nxt[starts + lengths - 1] = starts  # each contour is closed
    cross = x * y[nxt] - x[nxt] * y
    areas = np.abs(np.add.reduceat(cross, starts)) * 0.5
    return np.stack([x0, y0, w, h], axis=1), areas


def contour_boxes(
    binary: np.ndarray, offset: tuple[int, int] = (0, 0), shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, int]:
    """All contour boxes of a binary uint8 map (findContours RETR_TREE, CHAIN_APPROX_SIMPLE;
    box = (x, y, min(x+w, W−1), min(y+h, H−1)) from boundingRect), and the index of the
    largest contour (cv2.contourArea, first on ties). No contour → one box (0, 0, 0, 0).
    ``binary`` may be a crop at ``offset`` (x, y) of a map of ``shape`` (H, W)."""
    H, W = binary.shape if shape is None else shape
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64), 0
    rects, areas = _rects_and_areas(contours)
    x, y = rects[:, 0] + offset[0], rects[:, 1] + offset[1]
    boxes = np.stack([x, y, np.minimum(x + rects[:, 2], W - 1), np.minimum(y + rects[:, 3], H - 1)], axis=1)
    return boxes, int(np.argmax(areas))


def rescale_boxes(boxes: Any, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Boxes (x1, y1, x2, y2) in pixels of an image of size ``from_size`` (H, W) moved to an
    image of size ``to_size`` (H', W') as wsolevaluation does: x·W'/W and y·H'/H, truncated
    to integers."""
    b = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64).reshape(-1, 4)
    (h, w), (h2, w2) = from_size, to_size
    # same operation order as wsolevaluation's resize_bbox: (x·W') / W, then int()
    return (b * np.array([w2, h2, w2, h2], dtype=np.float64) / np.array([w, h, w, h], dtype=np.float64)).astype(
        np.int64
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes (x1, y1, x2, y2) with inclusive pixel areas ((x2−x1+1)·(y2−y1+1)),
    as wsolevaluation's ``calculate_multiple_iou``."""
    a = a.astype(np.float64)[:, None]
    b = b.astype(np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)


def image_box_hits(q: np.ndarray, gt: np.ndarray, levels: np.ndarray = LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold of the sweep: whether the box of the largest contour has IoU ≥ 0.5 with
    a GT box (V1 at δ = 0.5; L booleans), and whether the box of some contour has IoU ≥ δ
    with some GT box, for δ ∈ ``IOU_DELTAS`` (V2; 3 × L booleans). ``q``: uint8 H×W map;
    ``gt``: K×4 boxes; ``levels``: the sweep's level table (:func:`box_grid`; default step
    0.001).

    The contours' boxes of all thresholds come from one union-find pass
    (:mod:`wsol.metrics._components`), which also bounds each outer contour's area: V1 is
    decided wherever every contour that may be the largest is on the same side of IoU 0.5;
    elsewhere, and only there, OpenCV's contours and areas pick the largest (once per
    distinct map)."""
    H, W = q.shape
    t = levels[:, int(q.max())] + 1  # wsolevaluation keeps q > int(τ·max), i.e. q ≥ level + 1
    deltas = np.asarray(IOU_DELTAS)
    hit_v2, hi, lo, extent, count = level_set_hits(q, t, gt, deltas)
    hit_v1 = hi >= 0.5
    empty = count == 0
    if empty.any():  # no contour: the box (0, 0, 0, 0), as wsolevaluation
        iou0 = box_iou(np.zeros((1, 4), dtype=np.int64), gt).max()
        hit_v2[:, empty] = (iou0 >= deltas)[:, None]
        hit_v1[empty] = iou0 >= 0.5
    undecided = np.flatnonzero((hi >= 0.5) & (lo < 0.5))
    decided: dict[int, bool] = {}
    for j in undecided:
        if count[j] not in decided:  # equal pixel counts of nested sets: the same map
            x0, y0, x1, y1 = extent[j]  # the map's extent plus a zero margin: same contours
            xa, ya = max(x0 - 1, 0), max(y0 - 1, 0)
            crop = np.ascontiguousarray(q[ya : y1 + 2, xa : x1 + 2] >= t[j]).view(np.uint8)
            boxes, largest = contour_boxes(crop, (int(xa), int(ya)), (H, W))
            decided[count[j]] = bool(box_iou(boxes[largest : largest + 1], gt).max() >= 0.5)
        hit_v1[j] = decided[count[j]]
    return hit_v1, hit_v2


def weight_map_box(cam: np.ndarray) -> tuple[np.ndarray, float]:
    """Weight-map rule (Eqs. 5-6, weight-map-wsol): M̂ = M with values < max(M)/10 set to 0;
    box of the largest contour of M̂ > 0 (wsolevaluation box convention; cv2.contourArea,
    the first one on ties); S = mass of M̂ inside the contour's bounding rectangle / total
    mass of M̂ (1.0 for an all-zero map)."""
    cam = np.asarray(cam, dtype=np.float32)
    H, W = cam.shape
    m_hat = cam.astype(np.float64)
    m_hat[~(cam >= cam.max() * WEIGHT_MAP_FRACTION)] = 0  # (not ≥: a NaN is zeroed too)
    contours = cv2.findContours((m_hat > 0).view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros(4, dtype=np.int64), 1.0
    rects, areas = _rects_and_areas(contours)
    x, y, w, h = (int(v) for v in rects[int(np.argmax(areas))])
    total = m_hat.sum()
    box = np.array([x, y, min(x + w, W - 1), min(y + h, H - 1)], dtype=np.int64)
    return box, float(m_hat[y : y + h, x : x + w].sum() / total) if total > 0 else 1.0


def _topk_hits(preds: Any, targets: Any, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per image: target is the top-1 / within the top-5 prediction. ``preds``: B×C float
    scores (logits), or integer class ids, B (top-1 only) or B×k ranked (k ≥ 5 for top-5)."""
    if preds is None:
        return None, None
    if targets is None:
        raise MetricError("box metrics: top-k localisation needs the targets (GT labels) along with the predictions")
    preds = torch.as_tensor(preds)
    t = torch.as_tensor(targets).long().view(-1, 1).to(preds.device)
    if preds.shape[0] != n or t.shape[0] != n:
        raise MetricError(f"box metrics: {n} CAMs but {preds.shape[0]} predictions and {t.shape[0]} targets")
    if preds.dtype.is_floating_point:
        top, has5 = preds.topk(min(5, preds.shape[1]), dim=1).indices, True
    else:
        top = preds.long().view(n, -1)
        has5 = top.shape[1] >= 5
    ok1 = (top[:, :1] == t).any(1).cpu().numpy()
    ok5 = (top[:, :5] == t).any(1).cpu().numpy() if has5 else None
    return ok1, ok5


def _as_boxes(b: Any, i: int) -> np.ndarray:
    arr = np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64).reshape(-1, 4)
    if len(arr) == 0:
        raise MetricError(
            f"box metrics: image {i} of the batch has no ground-truth box; every image of a box-evaluated split "
            "needs at least one (x1, y1, x2, y2) box"
        )
    if not np.isfinite(arr).all():
        raise MetricError(f"box metrics: image {i} has non-finite ground-truth box coordinates")
    return np.trunc(arr)  # integer pixel coordinates, as wsolevaluation's int() after resizing


class BoxAccumulator:
    """Streaming box metrics over a split. ``update(cams, gt_boxes, logits=None, targets=None)``
    per batch; ``compute()`` → ``max_box_acc`` (V1, δ=0.5, largest contour), ``max_box_acc_v2``
    (mean over δ ∈ {0.3, 0.5, 0.7} of the per-δ max over τ, all contours), per-δ values and
    their τ, ``gt_known_loc`` (= max_box_acc), ``top1_loc`` / ``top5_loc`` (V1 sweep, an image
    counts only if its target is the top-1 / within the top-5 prediction; needs ``logits``),
    the weight-map rule's accuracy and mean score S. State: per-τ counters (memory does not
    grow with the number of images); ``merge``/``+``/``state_dict`` sum exactly. ``workers``:
    threads over the images of a batch (default ``torch.get_num_threads()``).
    ``cam_curve_interval``: step of the threshold sweep τ ∈ ``np.arange(0, 1, step)``
    (wsolevaluation's ``cam_curve_interval``; default 0.001), recorded in ``compute()``."""

    def __init__(self, workers: int | None = None, cam_curve_interval: float = DEFAULT_INTERVAL) -> None:
        #: threads over the images of a batch (None: torch.get_num_threads())
        self.workers = workers
        self.cam_curve_interval = threshold_grid_for(cam_curve_interval).interval
        self.taus, self.levels = box_grid(self.cam_curve_interval)
        n = len(self.taus)
        self.v1 = torch.zeros(n, dtype=torch.int64)  # #images with IoU ≥ 0.5 (largest contour)
        self.v2 = torch.zeros(len(IOU_DELTAS), n, dtype=torch.int64)  # per δ, all contours
        self.top1 = torch.zeros(n, dtype=torch.int64)
        self.top5 = torch.zeros(n, dtype=torch.int64)
        # n images, n with top-1 prediction, n with top-5 predictions, weight-map correct (IoU ≥ 0.5)
        self.counts = torch.zeros(4, dtype=torch.int64)
        self.wm_score = torch.zeros(1, dtype=torch.float64)

    def update(
        self,
        cams: torch.Tensor,
        gt_boxes: Sequence[Any],
        logits: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> None:
        """``cams`` B×H×W in [0, 1]; ``gt_boxes`` B lists/arrays K_i×4 (x1, y1, x2, y2) in the
        CAMs' pixel frame; ``logits`` B×C (for top-k loc) and ``targets`` B (the class whose
        CAM is evaluated; needed with logits)."""
        cams = validate_cams(cams)
        if len(gt_boxes) != cams.shape[0]:
            raise MetricError(f"box metrics: {cams.shape[0]} CAMs but {len(gt_boxes)} ground-truth box lists")
        ok1, ok5 = _topk_hits(logits, targets, cams.shape[0])
        qs = quantize(cams)
        cams_np = cams.cpu().numpy()
        gts = [_as_boxes(b, i) for i, b in enumerate(gt_boxes)]

        def one(i: int) -> tuple[np.ndarray, np.ndarray, bool, float]:
            hit1, hit2 = image_box_hits(qs[i], gts[i], self.levels)
            box, s = weight_map_box(cams_np[i])
            return hit1, hit2, bool(box_iou(box[None], gts[i]).max() >= 0.5), s

        workers = min(self.workers or torch.get_num_threads(), len(qs))
        if workers > 1:  # the numba kernels and OpenCV release the GIL: images in parallel threads
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(one, range(len(qs))))
        else:
            results = [one(i) for i in range(len(qs))]
        n_tau = len(self.taus)
        v1 = np.zeros(n_tau, dtype=np.int64)
        v2 = np.zeros((len(IOU_DELTAS), n_tau), dtype=np.int64)
        t1 = np.zeros(n_tau, dtype=np.int64)
        t5 = np.zeros(n_tau, dtype=np.int64)
        wm_ok, wm_s = 0, 0.0  # weight-map rule: #IoU ≥ 0.5, sum of S
        for i, (hit1, hit2, wm_hit, s) in enumerate(results):
            v1 += hit1
            v2 += hit2
            if ok1 is not None:
                t1 += hit1 & bool(ok1[i])
            if ok5 is not None:
                t5 += hit1 & bool(ok5[i])
            wm_ok += wm_hit
            wm_s += s
        self.v1 += torch.from_numpy(v1)
        self.v2 += torch.from_numpy(v2)
        self.top1 += torch.from_numpy(t1)
        self.top5 += torch.from_numpy(t5)
        b = len(qs)
        self.counts += torch.tensor([b, b if ok1 is not None else 0, b if ok5 is not None else 0, wm_ok])
        self.wm_score += wm_s

    def merge(self, other: BoxAccumulator) -> BoxAccumulator:
        if other.cam_curve_interval != self.cam_curve_interval:
            raise MetricError("merge: BoxAccumulators with different cam_curve_interval cannot be merged")
        for k, v in other.state_dict().items():
            getattr(self, k).add_(v)
        return self

    def __add__(self, other: BoxAccumulator) -> BoxAccumulator:
        return BoxAccumulator(self.workers, self.cam_curve_interval).merge(self).merge(other)

    def state_dict(self) -> dict[str, torch.Tensor]:
        keys = ("v1", "v2", "top1", "top5", "counts", "wm_score")
        return {k: getattr(self, k).clone() for k in keys}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            have = getattr(self, k)
            if tuple(v.shape) != tuple(have.shape):
                raise MetricError(
                    f"load_state_dict: {k} has shape {tuple(v.shape)}, this accumulator {tuple(have.shape)} "
                    f"(cam_curve_interval={self.cam_curve_interval}); build it with the same interval"
                )
            setattr(self, k, v.detach().cpu().to(have.dtype).clone())

    def compute(self) -> dict[str, float]:
        n, n_top1, n_top5, wm_ok = (int(v) for v in self.counts)
        if n == 0:
            raise MetricError("box metrics: no image was given; nothing to evaluate")
        acc1 = 100.0 * self.v1.double() / n
        acc2 = 100.0 * self.v2.double() / n
        l1 = int(acc1.argmax())
        out: dict[str, float] = {
            "max_box_acc": float(acc1[l1]),
            "max_box_acc_tau": float(self.taus[l1]),
            "gt_known_loc": float(acc1[l1]),
        }
        per_delta = []
        for d, row in zip(IOU_DELTAS, acc2):
            best = int(row.argmax())
            per_delta.append(float(row[best]))
            out[f"max_box_acc_v2_iou{int(round(d * 100))}"] = float(row[best])
            out[f"max_box_acc_v2_iou{int(round(d * 100))}_tau"] = float(self.taus[best])
        out["max_box_acc_v2"] = float(np.mean(per_delta))
        for name, cnt, n_k in (("top1_loc", self.top1, n_top1), ("top5_loc", self.top5, n_top5)):
            if n_k == n:
                acc = 100.0 * cnt.double() / n
                best = int(acc.argmax())
                out[name] = float(acc[best])
                out[f"{name}_tau"] = float(self.taus[best])
        out["weight_map_box_acc"] = 100.0 * wm_ok / n
        out["weight_map_score_s"] = float(self.wm_score) / n
        out["n_box_images"] = n
        out["cam_curve_interval"] = self.cam_curve_interval
        return out

    def curves(self) -> dict[str, Any]:
        """Localisation accuracy (%) vs τ (τ = 0, step, ..., < 1; 0.001 by default): V1 and
        per-δ V2 (+ top-1/top-5 loc when logits were given)."""
        n = max(int(self.counts[0]), 1)
        out: dict[str, Any] = {"tau": self.taus.tolist(), "box_acc": (100.0 * self.v1.double() / n).tolist(),
                               "cam_curve_interval": self.cam_curve_interval}
        for d, row in zip(IOU_DELTAS, self.v2):
            out[f"box_acc_v2_iou{int(round(d * 100))}"] = (100.0 * row.double() / n).tolist()
        for j, (name, cnt) in enumerate((("top1_loc", self.top1), ("top5_loc", self.top5)), start=1):
            if int(self.counts[j]) == int(self.counts[0]) > 0:
                out[name] = (100.0 * cnt.double() / n).tolist()
        return out


def box_metrics(cams: Any, gt_boxes: Sequence[Any], preds: Any = None, targets: Any = None,
                cam_curve_interval: float = DEFAULT_INTERVAL) -> dict[str, float]:
    """One call on whole tensors/arrays: ``cams`` N×H×W in [0, 1]; ``gt_boxes`` N arrays K_i×4
    in the CAMs' pixel frame; ``preds`` N×C logits (or scores) for top-1/top-5 loc with
    ``targets`` N class ids (the GT labels). Same numbers and keys as :class:`BoxAccumulator`
    (``cam_curve_interval``: the sweep's threshold step)."""
    acc = BoxAccumulator(cam_curve_interval=cam_curve_interval)
    acc.update(torch.as_tensor(cams), gt_boxes, None if preds is None else torch.as_tensor(preds), targets)
    return acc.compute()


def weight_map_scores(cams: torch.Tensor) -> torch.Tensor:
    """Per-image score S of Eq. 6 for maps B×H×W (float64, B): M̂ = M with values below
    τ = max(M)/10 set to zero (Eq. 5), box of the largest contour of M̂ (OpenCV border
    following, [39]), S = Σ M̂ inside the box / Σ M̂ (1 for an all-zero map). Uses no
    label; via :func:`weight_map_box`."""
    if cams.dim() != 3:
        raise MetricError(f"weight_map_scores: expected B×H×W maps, got shape {tuple(cams.shape)}")
    arr = cams.detach().float().cpu().numpy()
    return torch.tensor([weight_map_box(m)[1] for m in arr], dtype=torch.float64)
