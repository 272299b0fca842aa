"""wsol.metrics — the evaluation protocol of the five papers, exact, streaming and summable.

Every accumulator has ``update(...)`` per batch, ``compute() -> dict`` at the end,
``curves() -> dict`` (per-τ curves), ``merge(other)`` / ``a + b`` (in-place / new sum of two
accumulators over disjoint images: exactly the accumulator of the union) and
``state_dict()`` (tensors to ``all_reduce(SUM)`` across DDP ranks) / ``load_state_dict``.
Memory does not grow with the number of images (fixed histograms / per-τ counters); the
only per-image state is the optional list of region sizes of :class:`PixelAccumulator`.
Inputs may live on CPU or CUDA; states are kept on CPU. Scores are percentages.

Conventions (each pinned by a test in tests/test_metrics_*.py)
--------------------------------------------------------------

CAMs
    B×H×W float, per-image min-max normalised to [0, 1] (CAM contract, ``wsol.cams``);
    NaN/inf or values outside [0, 1] raise :class:`~wsol.errors.MetricError`. Values are
    compared in float32.

Resolution (``wsol.engine.evaluate.evaluate_split(eval_size=...)``)
    ``"input"`` (default): CAMs at the model input size against labels resized with the
    image (masks nearest, boxes scaled). ``"original"``: each CAM is upsampled bilinearly
    (``align_corners=False``) to the image's original size and min-max re-normalised, and
    compared with the original-size masks / boxes (batch keys ``orig_sizes``,
    ``orig_masks``, ``orig_boxes``); a loader without them is an error.

Masks
    uint8 (any integer dtype), 1 = ROI (foreground), 0 = background, 255 = ignore (dropped
    from every pixel metric). Any other value is an error. An image whose mask is ``None``
    has no pixel label and is skipped by the pixel metrics. An all-zero mask (a normal
    histology image) is evaluated: its pixels are background pixels.

Threshold grid (``cam_curve_interval``)
    Both sweeps use wsolevaluation's grid: τ_l = ``np.arange(0, 1, cam_curve_interval)[l]``
    (float64; default step 0.001, wsolevaluation's training-time value; its evaluation
    script defaults to 0.01), and for the pixel metrics also τ_T = 1.0. Every accumulator
    and one-call function takes ``cam_curve_interval`` and records it in its result dict
    (key ``cam_curve_interval``). The step is the only thing that changes with it; below,
    "0.001" and "1000" stand for the default grid.

Pixel thresholds
    A pixel is positive at τ iff s ≥ τ, comparing the float32 value s exactly with the
    float64 τ_l, as ``np.histogram`` does in wsolevaluation's MaskEvaluator (so float32(0.7)
    = 0.69999999 is below τ = 0.7; float32(0.3) = 0.30000001 is above τ = 0.3). Each pixel
    falls in bin l(s) = max{l : τ_l ≤ s}; binning is exact and identical on CPU and CUDA
    (no division: see :mod:`wsol.metrics.pixel`). Histograms of bins are pooled over the
    split (pixels of all images summed, not averaged per image). A τ given by the caller is
    snapped to the nearest grid point.

PxAP (survey Eq. 16; Choe et al. 2020)
    P(τ) = TP/(TP+FP), R(τ) = TP/#fg over pooled pixels. Walking τ from 1.0 down to 0:
    PxAP = 100·Σ_l P(τ_l)·(R(τ_l) − R(τ_{l+1})), R(τ_1001) = 0, skipping τ where no pixel is
    positive. A split without any foreground pixel raises MetricError. A perfect CAM
    (the mask itself) gives 100; a constant CAM (all zeros after min-max) gives the
    foreground fraction × 100.

Confusion* (survey Eqs. 17–24)
    TP(τ), FN(τ) in % of foreground pixels, FP(τ), TN(τ) in % of background pixels (pooled),
    averaged over τ ∈ {0.001, ..., 1.000} (1000 values) → ``tp_star``, ``fn_star``,
    ``fp_star``, ``tn_star`` (τ_1..τ_T on another step); TP*+FN* = FP*+TN* = 100. Without
    background pixels FP*/TN* are NaN.

τ* and Dice
    τ* (``tau_star``) = argmax over τ_l of the pooled mean IoU of the two classes
    ((IoU_fg + IoU_bg)/2, a class absent from both mask and prediction left out; ties → the
    smallest τ). ``dice_fg_pooled`` = 2TP/(2TP+FP+FN), ``dice_bg_pooled`` = 2TN/(2TN+FN+FP)
    with pixels pooled over the split, at ``tau`` (given, e.g. τ* chosen on valpx and used
    on test; snapped to the grid; default: this split's τ*), reported as ``tau``;
    the same at this split's τ* as ``*_tau_star``. ``f1_fg_mean`` / ``f1_bg_mean``: the
    MAXMIN / min-max-entropy definition (max-min-uncertainty Eqs. 14–15): per-image Dice of
    the foreground (resp. background) at τ = 0.5 (s ≥ 0.5 is foreground), averaged over the
    images that have foreground (resp. background) pixels; ``f1_tau`` = 0.5 is the
    threshold on the CAM itself (not 1 − τ); ``f1_tau`` may be any value (a method's own
    σ): a pixel is foreground iff ``cam >= f1_tau`` as torch compares it (float32).

Region sizes and histograms
    ``curves()["regions"]``: per image (update order) the true ROI fraction of its valid
    pixels and the predicted one (s ≥ τ, τ = the accumulator's ``region_tau`` or this
    split's τ*). ``hist_fg``/``hist_bg``: pooled counts of CAM values per bin
    [τ_l, τ_{l+1}) (the last bin holds s = 1.0).

Boxes (wsolevaluation semantics; f-cam.txt §4.1)
    The CAM is quantised to uint8 as ``(s·255).astype(uint8)`` (truncation). For τ in
    {0, 0.001, ..., 0.999} (``np.arange(0, 1, cam_curve_interval)``), pixels with q > int(τ·max q) are
    kept (strict); contours from ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``; the box
    of a contour is (x, y, min(x+w, W−1), min(y+h, H−1)) from ``cv2.boundingRect``; no
    contour → box (0, 0, 0, 0). IoU uses inclusive areas ((x2−x1+1)·(y2−y1+1)); an image's
    IoU is its best match over its GT boxes (and, for V2, over all contours).
    ``max_box_acc`` (V1, = ``gt_known_loc``): max over τ of the % of images with IoU ≥ 0.5,
    largest contour only (``cv2.contourArea``, first on ties). ``max_box_acc_v2``: mean over
    δ ∈ {0.3, 0.5, 0.7} of max over τ (τ chosen per δ) with all contours; per-δ values
    ``max_box_acc_v2_iou30/50/70`` and their τ. ``top1_loc``/``top5_loc``: the V1 sweep
    where an image counts only if its target class is the top-1 / within the top-5
    prediction. Contours are computed once per distinct binary map (≤ 256 per image).
    GT boxes are (x1, y1, x2, y2) in the CAM's pixel frame (x2 = x1 + width, as
    wsolevaluation reads x, y, w, h annotations and as wsol.data's continuous coordinates
    give), truncated to integers like wsolevaluation's ``int()`` after resizing;
    :func:`rescale_boxes` moves boxes between image sizes like wsolevaluation (x·W'/W,
    truncated).

Weight-map rule (weight-map-wsol.txt Eqs. 5–6)
    M̂ = M with values < max(M)/10 set to 0; box of the largest contour of M̂ > 0;
    S = Σ M̂ inside the contour's bounding rectangle / Σ M̂ → ``weight_map_box_acc``
    (% IoU ≥ 0.5) and ``weight_map_score_s`` (mean S, the paper's early-stopping score).

Per-image precision–recall curves (min-max-entropy Fig. 6; :mod:`wsol.metrics.pr`)
    Per image and per class (foreground: s vs mask 1; background: 1 − s vs mask 0) the PR
    points at the PxAP thresholds, cut at the first full recall, (0, 1) appended, precision
    interpolated (``numpy.interp``) on the recall axis ``np.arange(0, 1, 1e-3)`` + [1];
    curves averaged over images (an image without foreground is skipped for the foreground
    curve); ``pr_auc_fg`` / ``pr_auc_bg`` = 100 × trapezoid area of the mean curve.

Classification (survey Eq. 13)
    ``top1_acc``, ``top5_acc``, ``top1_err``, ``top5_err`` in %.

Distributed evaluation
    Each rank updates its own accumulators on its shard; :func:`all_reduce_accumulator`
    sums their ``state_dict()`` tensors across ranks (``torch.distributed``, SUM), after
    which ``compute()`` gives the numbers of the whole split on every rank. Per-image
    region sizes stay per rank.

Reference implementation
    :mod:`wsol.metrics.reference` codes the same semantics the slow, obvious way (one
    ``np.histogram`` per image; one ``cv2.threshold`` + ``findContours`` per threshold) and
    is used by the tests and ``benchmarks/bench_metrics.py`` to cross-check the fast path.
"""

from wsol.metrics.boxes import BoxAccumulator, box_iou, box_metrics, rescale_boxes, weight_map_box, weight_map_scores
from wsol.metrics.classification import ClassificationAccumulator
from wsol.metrics.distributed import all_reduce_accumulator
from wsol.metrics.pixel import (
    DEFAULT_INTERVAL,
    IGNORE_INDEX,
    N_THRESHOLDS,
    PixelAccumulator,
    ThresholdGrid,
    pixel_metrics,
    threshold_bins,
    threshold_grid,
    threshold_grid_for,
    validate_cams,
)
from wsol.metrics.pr import RECALL_STEP, PRAccumulator, pr_curves, recall_axis

__all__ = [
    "BoxAccumulator",
    "ClassificationAccumulator",
    "DEFAULT_INTERVAL",
    "IGNORE_INDEX",
    "all_reduce_accumulator",
    "N_THRESHOLDS",
    "PixelAccumulator",
    "PRAccumulator",
    "RECALL_STEP",
    "ThresholdGrid",
    "box_iou",
    "box_metrics",
    "pixel_metrics",
    "pr_curves",
    "recall_axis",
    "rescale_boxes",
    "threshold_bins",
    "threshold_grid",
    "threshold_grid_for",
    "validate_cams",
    "weight_map_box",
    "weight_map_scores",
]
