"""Tissue detection: Otsu's threshold on the HSV saturation of a low pyramid level.

Survey Appendix B: "the measure of tissue mass is performed at level = 6 where it is easy for
the OTSU binarization method to split the tissue from the background. We double-check the
tissue mass at level = 0." Glass background is white/grey (saturation ~0) while H&E tissue
is pink/purple, so one threshold on saturation separates them. The threshold is computed
once per slide at the low level and re-used for the level-0 re-check of a patch: an Otsu
threshold computed on a single all-tissue patch would split the tissue itself in two.
"""

from __future__ import annotations

import numpy as np
from skimage.filters import threshold_otsu


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of an H×W×3 uint8 image, as uint8 0..255 (black -> 0)."""
    rgb = rgb.astype(np.int32)
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    return ((mx - mn) * 255 // np.maximum(mx, 1)).astype(np.uint8)


def otsu_threshold(sat: np.ndarray) -> float | None:
    """Otsu's threshold of a saturation image; None when the image is flat (no tissue)."""
    if sat.size == 0 or int(sat.max()) == int(sat.min()):
        return None
    return float(threshold_otsu(sat, nbins=256))


def tissue_mask(rgb: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is None:
        return np.zeros(rgb.shape[:2], bool)
    return saturation(rgb) > threshold


def cell_fractions(mask: np.ndarray, downsample: float, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """Tissue fraction of every level-0 cell (x, y, size×size) measured on a low-level
    ``mask`` (downsample factor ``downsample``), batched through an integral image. Returns
    an array of shape (len(ys), len(xs))."""
    h, w = mask.shape
    ii = np.zeros((h + 1, w + 1), np.int64)
    ii[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    x0 = np.clip(np.floor(np.asarray(xs) / downsample).astype(np.int64), 0, w)
    x1 = np.clip(np.ceil((np.asarray(xs) + size) / downsample).astype(np.int64), 0, w)
    y0 = np.clip(np.floor(np.asarray(ys) / downsample).astype(np.int64), 0, h)
    y1 = np.clip(np.ceil((np.asarray(ys) + size) / downsample).astype(np.int64), 0, h)
    x1 = np.maximum(x1, np.minimum(x0 + 1, w))
    y1 = np.maximum(y1, np.minimum(y0 + 1, h))
    total = ii[y1][:, x1] - ii[y0][:, x1] - ii[y1][:, x0] + ii[y0][:, x0]
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return total / np.maximum(area, 1)
