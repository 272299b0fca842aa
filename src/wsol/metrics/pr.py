"""Per-image averaged precision–recall curves of the foreground and of the background
(min-max-entropy-recursive-erasing, App. B.3.1, Fig. 6), streaming and summable.

Definition (Fig. 6 caption: "the recall axis is unified for all the images to the axis
[0, 1] with a step 1e-3. Then, the precision axis is interpolated with respect to the recall
axis"); where the paper is silent we follow the authors' public code
(``sbelharbi/wsol-min-max-entropy-interpretability``, ``tools.py``,
``compute_precision_recall_curve_once``: scikit-learn 0.20.2 ``precision_recall_curve`` per
image, reversed to increasing recall, ``numpy.interp`` onto
``np.arange(0, 1, 1e-3)`` + [1.0], area by ``sklearn.metrics.auc``, i.e. the trapezoid rule).
Per image, for one class:

1. The operating points are those of the CAM thresholded at the PxAP grid
   (:func:`wsol.metrics.pixel.threshold_grid_for`: τ_l = l·0.001, l = 0..1000; a pixel is
   positive at τ iff s ≥ τ, exactly as the PxAP histograms bin it) instead of at every
   distinct CAM value: P(τ_l) = TP/(TP + FP), R(τ_l) = TP/#positives. When the CAM's distinct
   values are more than one grid step apart both sets of operating points coincide (up to
   repeated points, which change nothing), which the tests check against scikit-learn.
   Thresholds at which no pixel is positive are dropped (scikit-learn never produces them).
2. As scikit-learn 0.20.2 (the authors' version), the curve stops at the first (highest) τ
   that reaches full recall — lower thresholds, with R = 1 and a lower precision, are
   dropped — and the point (R = 0, P = 1) is appended. (scikit-learn ≥ 1.1 keeps the
   points after full recall; with them a perfect CAM would score below 1 at R = 1.)
3. Precision is interpolated at the recall grid r_k = ``np.arange(0, 1, recall_step)`` then
   1.0 (1001 values) with ``numpy.interp`` semantics on the points sorted by increasing
   recall (ties: the lower threshold last): between two recalls linearly, at a repeated
   recall the last point's precision.

The dataset curve is the mean of the per-image interpolated curves; its area by the
trapezoid rule over r_k (= the mean of the per-image AUCs, as the authors' ``p_r_auc_avg``)
is reported ×100 as ``pr_auc_fg`` / ``pr_auc_bg`` (percentages, like PxAP; Fig. 6 prints
it in [0, 1]: see ``curves()``).

Foreground: score s = CAM, positives = mask 1. Background: score 1 − s (float32), positives
= mask 0. Pixels marked ``ignore_index`` (255) are left out. An image without foreground
pixels (a normal histology image) has an undefined foreground recall: it is skipped for the
foreground curve and used for the background one (where every prediction is right: its
background curve is P = 1); an image without background pixels is used for the foreground
curve only; an image with no valid pixel (or a ``None`` mask) for neither. With no image
for a class its AUC is NaN (``null`` in JSON).

Work per batch: two ``torch.bincount`` (CAM bins and (1 − CAM) bins by class and image),
reverse cumulative sums per image, and one batched ``torch.searchsorted`` for the
interpolation — no loop over thresholds or pixels. State: two sums of curves (float64,
1001 values) and three counters, summable across DDP ranks like
:class:`~wsol.metrics.pixel.PixelAccumulator` (``state_dict`` / ``load_state_dict`` /
``merge``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from wsol.errors import MetricError
from wsol.metrics.pixel import (
    DEFAULT_INTERVAL,
    IGNORE_INDEX,
    MaskStream,
    threshold_grid_for,
)

#: step of the unified recall axis (Fig. 6: "[0, 1] with a step 1e-3")
RECALL_STEP = 1e-3


@functools.lru_cache(maxsize=8)
def _recall_axis(step: float) -> np.ndarray:
    return np.append(np.arange(0, 1, step, dtype=np.float64), 1.0)


def recall_axis(step: float = RECALL_STEP) -> np.ndarray:
    """The unified recall axis: ``np.arange(0, 1, step)`` then 1.0 (float64), as the
    authors' ``recall_fixed``."""
    step = float(step)
    if not (math.isfinite(step) and 1e-5 <= step <= 0.5):
        raise MetricError(f"recall_step={step!r}: expected a step in [1e-05, 0.5] (Fig. 6 uses 0.001)")
    return _recall_axis(step).copy()


def interpolate_pr(tp: torch.Tensor, fp: torch.Tensor, recall: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image precision interpolated on ``recall`` (R values, increasing, last = 1).

    ``tp``, ``fp``: B×L counts of true / false positives at thresholds τ_0 < ... < τ_{L−1}
    (non-increasing along L; τ_0 = 0 makes every pixel positive, so ``tp[:, 0]`` is the
    number of positives). Returns (B×R float64 curves, B bool: the image has positives;
    rows without positives are meaningless). Steps 1-3 of the module docstring."""
    tp, fp = tp.double(), fp.double()
    b, n_l = tp.shape
    n_pos = tp[:, 0]
    npred = tp + fp
    prec = tp / npred.clamp_min(1)
    rec = tp / n_pos.clamp_min(1)[:, None]
    # step 2: l_full = the highest l with full recall; the points below it become copies of
    # it (repeated points leave numpy.interp unchanged)
    l_full = (tp >= n_pos[:, None]).sum(1) - 1
    idx = torch.maximum(torch.arange(n_l, device=tp.device)[None], l_full.clamp_min(0)[:, None])
    prec, rec, npred = prec.gather(1, idx), rec.gather(1, idx), npred.gather(1, idx)
    # step 1: thresholds without a positive pixel (R = 0) become copies of the appended (0, 1)
    empty = npred == 0
    prec = torch.where(empty, torch.ones_like(prec), prec)
    rec = torch.where(empty, torch.zeros_like(rec), rec)
    # points by increasing recall: (0, 1), then τ_{L−1}, ..., τ_0
    xp = torch.cat([rec.new_zeros(b, 1), rec.flip(1)], 1).contiguous()
    yp = torch.cat([prec.new_ones(b, 1), prec.flip(1)], 1)
    n = xp.shape[1]
    x = recall.to(xp).expand(b, -1).contiguous()
    # step 3, numpy.interp: j = the last point with xp[j] <= x; fp[j] when x == xp[j] or j is
    # the last point, else the line from point j to point j + 1
    j = (torch.searchsorted(xp, x, right=True) - 1).clamp(0, n - 1)
    j1 = (j + 1).clamp(max=n - 1)
    x0, x1, y0, y1 = xp.gather(1, j), xp.gather(1, j1), yp.gather(1, j), yp.gather(1, j1)
    exact = (j == n - 1) | (x0 == x)
    slope = (y1 - y0) / torch.where(exact, torch.ones_like(x1), x1 - x0)
    y = torch.where(exact, y0, slope * (x - x0) + y0)
    return y, n_pos > 0


class PRAccumulator(MaskStream):
    """Streaming per-image averaged precision–recall curves of the foreground and of the
    background (Fig. 6, min-max-entropy; module docstring for the definition).

    ``update(cams, masks)`` per batch (the same inputs as
    :meth:`PixelAccumulator.update <wsol.metrics.pixel.PixelAccumulator.update>`),
    ``compute()`` → ``pr_auc_fg`` / ``pr_auc_bg`` (×100) and image counts, ``curves()`` → the
    mean curves. ``merge`` / ``+`` / ``state_dict`` as every accumulator of
    :mod:`wsol.metrics`.

    Args:
        ignore_index: mask value of pixels left out (default 255).
        cam_curve_interval: step of the threshold grid (the PxAP grid's; default 0.001).
        recall_step: step of the unified recall axis (default 1e-3, Fig. 6).
        threads: torch intra-op threads while histogramming CPU tensors (as PixelAccumulator).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, cam_curve_interval: float = DEFAULT_INTERVAL,
                 recall_step: float = RECALL_STEP, threads: int | None = 1) -> None:
        self.grid = threshold_grid_for(cam_curve_interval)
        self.cam_curve_interval = self.grid.interval
        self.recall_step = float(recall_step)
        self.recall = recall_axis(self.recall_step)
        self.ignore_index = int(ignore_index)
        self.threads = threads
        self.sums = torch.zeros(2, len(self.recall), dtype=torch.float64)  # [0] foreground, [1] background
        self.counts = torch.zeros(3, dtype=torch.int64)  # images in the fg curve, in the bg curve, with a mask

    @property
    def n_images(self) -> int:
        return int(self.counts[2])

    # --- streaming (update: wsol.metrics.pixel.MaskStream) ---------------------------
    def _accumulate(self, cams: torch.Tensor, cls: torch.Tensor) -> None:
        b = cams.shape[0]
        nb = self.grid.n + 1
        # key = bin + nb·(class + 3·image): per-image histograms of bins of bg / ROI / ignored pixels
        part = cls.to(torch.int32).mul_(nb)
        part.add_(torch.arange(0, 3 * nb * b, 3 * nb, device=cams.device, dtype=torch.int32).view(b, 1, 1))

        def hist(scores: torch.Tensor) -> torch.Tensor:  # B×2×nb counts with s ≥ τ_l: [bg, ROI]
            key = self.grid.bins(scores).add_(part)
            h = torch.bincount(key.view(-1), minlength=3 * nb * b).view(b, 3, nb)[:, :2]
            return h.flip(-1).cumsum(-1).flip(-1)

        fg_ge = hist(cams)  # foreground: score s
        bg_ge = hist(torch.sub(1.0, cams))  # background: score 1 − s (float32)
        recall = torch.from_numpy(self.recall).to(cams.device)
        # foreground: TP = ROI pixels ≥ τ, FP = background pixels ≥ τ; background: the reverse
        curve_fg, ok_fg = interpolate_pr(fg_ge[:, 1], fg_ge[:, 0], recall)
        curve_bg, ok_bg = interpolate_pr(bg_ge[:, 0], bg_ge[:, 1], recall)
        has_px = (fg_ge[:, 0, 0] + fg_ge[:, 1, 0]) > 0
        self.sums += torch.stack([curve_fg[ok_fg].sum(0), curve_bg[ok_bg].sum(0)]).cpu()
        self.counts += torch.stack([ok_fg.sum(), ok_bg.sum(), has_px.sum()]).cpu()

    # --- merging (DDP / split-and-merge) ---------------------------------------------
    def _settings(self) -> tuple:
        return (self.ignore_index, self.cam_curve_interval, self.recall_step)

    def merge(self, other: PRAccumulator) -> PRAccumulator:
        """Add ``other`` (same settings) into this accumulator, in place; returns self."""
        if other._settings() != self._settings():
            raise MetricError("merge: PRAccumulators built with different settings cannot be merged")
        self.sums += other.sums
        self.counts += other.counts
        return self

    def __add__(self, other: PRAccumulator) -> PRAccumulator:
        out = PRAccumulator(self.ignore_index, self.cam_curve_interval, self.recall_step, self.threads)
        return out.merge(self).merge(other)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Summable state as tensors, e.g. for ``all_reduce(SUM)``."""
        return {"pr_sums": self.sums.clone(), "pr_counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        sums = state["pr_sums"].detach().to("cpu", torch.float64).clone()
        if tuple(sums.shape) != tuple(self.sums.shape):
            raise MetricError(f"load_state_dict: curves of shape {tuple(sums.shape)}, this accumulator has "
                              f"{tuple(self.sums.shape)} (recall_step={self.recall_step}); use the same step")
        self.sums = sums
        self.counts = state["pr_counts"].detach().to("cpu", torch.int64).clone()

    # --- results --------------------------------------------------------------------
    def mean_curves(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean interpolated precision of the foreground and of the background over the
        recall axis (NaN where no image counts)."""
        n = self.counts[:2].double().clamp_min(1)[:, None]
        mean = (self.sums / n).numpy()
        mean[self.counts[:2].numpy() == 0] = np.nan
        return mean[0], mean[1]

    def _aucs(self) -> tuple[float, float]:
        fg, bg = self.mean_curves()
        return float(np.trapezoid(fg, self.recall)), float(np.trapezoid(bg, self.recall))

    def compute(self) -> dict[str, float]:
        """``pr_auc_fg`` / ``pr_auc_bg``: area under the mean curve ×100 (NaN without an image
        for that class), and the number of images in each curve."""
        if self.n_images == 0:
            raise MetricError("precision-recall curves: no image with a pixel mask was given; nothing to evaluate")
        auc_fg, auc_bg = self._aucs()
        return {"pr_auc_fg": 100.0 * auc_fg, "pr_auc_bg": 100.0 * auc_bg,
                "pr_fg_images": int(self.counts[0]), "pr_bg_images": int(self.counts[1])}

    def curves(self) -> dict[str, Any]:
        """The mean curves (``recall``; ``precision_fg``/``precision_bg``, NaN → null in
        JSON), their AUCs in [0, 1] (as Fig. 6 prints them), image counts and the steps."""
        fg, bg = self.mean_curves()
        auc_fg, auc_bg = self._aucs()
        return {"recall": [round(float(v), 12) for v in self.recall], "precision_fg": fg.tolist(),
                "precision_bg": bg.tolist(), "auc_fg": auc_fg, "auc_bg": auc_bg,
                "n_fg_images": int(self.counts[0]), "n_bg_images": int(self.counts[1]),
                "recall_step": self.recall_step, "cam_curve_interval": self.cam_curve_interval}


def pr_curves(cams: Any, masks: Any, ignore_index: int = IGNORE_INDEX,
              cam_curve_interval: float = DEFAULT_INTERVAL, recall_step: float = RECALL_STEP) -> dict[str, Any]:
    """One call on whole tensors/arrays (``cams`` N×H×W in [0, 1], ``masks`` N×H×W uint8):
    :meth:`PRAccumulator.compute` merged with :meth:`PRAccumulator.curves`."""
    acc = PRAccumulator(ignore_index=ignore_index, cam_curve_interval=cam_curve_interval, recall_step=recall_step)
    acc.update(torch.as_tensor(cams), torch.as_tensor(masks))
    return {**acc.compute(), **acc.curves()}
