"""Embedded synthetic datasets: procedural, seeded generators written to disk in the
wsolevaluation metadata layout (:mod:`wsol.data.metadata`) and read back by the same
reader as real data.

- ``synthetic-glas``: H&E-like colon tissue (pink stroma, nuclei everywhere, glands as
  ROIs), benign vs malignant. The class lives *only* inside the glands: benign glands are
  round with a clear lumen and one palisade of regularly spaced nuclei; malignant glands
  are irregular, crowded with enlarged, dark, disorderly nuclei and have a small or no
  lumen.
- ``synthetic-camelyon``: lymph-node-like patches (dense small lymphocytes), normal vs
  metastatic; metastatic patches hold a tumour region (large pale nuclei, pink cytoplasm)
  covering from a few % to ~100% of the patch; normal patches have all-zero masks.
- ``synthetic-cub``: 10 object classes (shape + colour pattern) on cluttered textured
  backgrounds, one object per image with its box (localization.txt) and mask (masks.txt).

Every image is rendered from its own seed. The background (stroma, layout of the ROIs)
uses random streams that do not depend on the label, and the class-specific content is
composited inside the ROI masks only, so rendering one seed with each label gives the
same pixels outside the ROIs (:func:`render_glas`, :func:`render_camelyon`).

Colours follow the Beer-Lambert model of H&E: RGB = 255·exp(-k·(h·v_H + e·v_E)) from
haematoxylin / eosin concentration maps (stain vectors of Ruifrok & Johnston, 2001), so
the ROI and the background share one palette and differ in structure.

Splits (survey §3.3): ``train``; ``valcl``; ``valpx`` = 3 pixel-labelled images per class
taken from ``valcl``; ``test``. Masks are written for every split (the trainer never reads
the train masks).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage

from wsol.data.embedded.base import embedded_spec, finish_set, require_empty, write_png
from wsol.data.metadata import MetaEntry
from wsol.data.registry import SPLITS
from wsol.errors import ConfigError

log = logging.getLogger(__name__)

# Optical density (R, G, B) per unit stain (Ruifrok & Johnston, 2001), normalised.
V_H = np.array([0.650, 0.704, 0.286], np.float32)
V_E = np.array([0.072, 0.990, 0.105], np.float32)
OD_SCALE = 1.25

Rng = np.random.Generator


# ------------------------------------------------------------------------------ primitives


def noise(rng: Rng, shape: tuple[int, int], sigma: float | tuple[float, float]) -> np.ndarray:
    """Smooth Gaussian noise with zero mean and unit standard deviation."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-6)


def stain_to_rgb(h: np.ndarray, e: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """H×W haematoxylin and eosin concentrations (+ optional H×W×3 optical density) -> H×W×3
    uint8 RGB (Beer-Lambert)."""
    od = h[..., None] * V_H + e[..., None] * V_E
    if extra is not None:
        od = od + extra
    rgb = 255.0 * np.exp(-OD_SCALE * od)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def polar_region(shape: tuple[int, int], cx: float, cy: float, radius: float, aspect: float, angle: float,
                 harmonics: np.ndarray) -> np.ndarray:
    """ρ = distance / boundary radius of a star-shaped region (ρ < 1 inside): an ellipse
    (``radius``, ``aspect``, ``angle``) whose radius is modulated by ``harmonics`` rows
    (k, amplitude, phase): r(θ) = 1 + Σ a·cos(kθ + φ). Computed in the region's bounding
    window; ρ is set to 10 (far outside) elsewhere."""
    out = np.full(shape, 10.0, np.float32)
    wobble = float(np.abs(np.asarray(harmonics, np.float32).reshape(-1, 3)[:, 1]).sum())
    reach = radius * max(aspect, 1.0) * (1.0 + wobble)
    reach = 1.6 * reach + 2.0  # covers every level line ρ <= 1.5 used by the renderers
    y0, y1 = max(0, int(cy - reach)), min(shape[0], int(cy + reach) + 1)
    x0, x1 = max(0, int(cx - reach)), min(shape[1], int(cx + reach) + 1)
    if y0 >= y1 or x0 >= x1:
        return out
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    ca, sa = np.cos(angle), np.sin(angle)
    u = (dx * ca + dy * sa) / aspect
    v = -dx * sa + dy * ca
    theta = np.arctan2(v, u)
    r = np.ones_like(theta)
    for k, a, phi in harmonics:
        r += a * np.cos(k * theta + phi)
    out[y0:y1, x0:x1] = np.sqrt(u * u + v * v) / (radius * np.maximum(r, 0.2))
    return out


def ring_points(g: Gland, harmonics: np.ndarray, theta: np.ndarray, rho: float) -> np.ndarray:
    """(x, y) of the points at polar angles ``theta`` (in the region's own frame) on the
    level line ρ of :func:`polar_region`."""
    r = np.ones_like(theta)
    for k, a, phi in harmonics:
        r += a * np.cos(k * theta + phi)
    rad = rho * g.radius * np.maximum(r, 0.2)
    u, v = rad * np.cos(theta) * g.aspect, rad * np.sin(theta)
    ca, sa = np.cos(g.angle), np.sin(g.angle)
    return np.stack([g.cx + ca * u - sa * v, g.cy + sa * u + ca * v], 1).astype(np.float32)


def soft_inside(rho: np.ndarray, radius: float, width: float = 1.0) -> np.ndarray:
    """Anti-aliased indicator of ρ < 1 (``width`` pixels of transition around the contour)."""
    return np.clip((1.0 - rho) * radius / width + 0.5, 0.0, 1.0)


NUCLEUS_MAX = 2.0  # largest stain value a nucleus can carry (uint8 drawing scale)


def draw_nuclei(shape: tuple[int, int], xy: np.ndarray, axes: np.ndarray, angles: np.ndarray,
                values: np.ndarray) -> np.ndarray:
    """Filled anti-aliased ellipses (centres ``xy`` in pixel coordinates, half-axes, angles in
    degrees) on a float map; each nucleus carries its stain ``value`` (<= NUCLEUS_MAX).
    Nuclei are drawn by increasing value, so the darker one covers an overlap."""
    canvas = np.zeros(shape, np.uint8)
    if len(xy) == 0:
        return canvas.astype(np.float32)
    sub = 4  # cv2 fixed-point drawing with shift=2: quarter-pixel precision
    order = np.argsort(values, kind="stable")
    centers = np.round((np.asarray(xy)[order] - 0.5) * sub).astype(np.int64).tolist()
    half = np.maximum(np.round(np.asarray(axes)[order] * sub), 1).astype(np.int64).tolist()
    angs = np.asarray(angles, np.float64)[order].tolist()
    cols = np.clip(np.round(np.asarray(values)[order] / NUCLEUS_MAX * 255), 0, 255).tolist()
    for c, ax, ang, col in zip(centers, half, angs, cols):
        cv2.ellipse(canvas, tuple(c), tuple(ax), ang, 0, 360, col, -1, cv2.LINE_AA, 2)
    return canvas.astype(np.float32) * (NUCLEUS_MAX / 255.0)


def uniform_points(rng: Rng, n: int, width: float, height: float) -> np.ndarray:
    return rng.uniform((0.0, 0.0), (width, height), size=(n, 2)).astype(np.float32)


def points_inside(rng: Rng, n: int, inside: np.ndarray) -> np.ndarray:
    """``n`` uniform random points (x, y) within the boolean region ``inside``."""
    ys, xs = np.nonzero(inside)
    if len(xs) == 0 or n <= 0:
        return np.zeros((0, 2), np.float32)
    idx = rng.integers(0, len(xs), size=n)
    return np.stack([xs[idx], ys[idx]], 1).astype(np.float32) + rng.uniform(0, 1, (n, 2)).astype(np.float32)


def poisson(rng: Rng, lam: float) -> int:
    return int(rng.poisson(max(lam, 0.0)))


# ------------------------------------------------------------------------ synthetic-glas


@dataclass
class Gland:
    cx: float
    cy: float
    radius: float
    aspect: float
    angle: float


GLAND_COUNT = (2, 5)  # glands per image (inclusive range, fewer when they do not fit)
GLAND_RADIUS = (0.11, 0.24)  # gland radius as a fraction of the image side


def glas_layout(rng: Rng, size: int) -> list[Gland]:
    """Non-overlapping gland footprints (GLAND_COUNT per image, radii in GLAND_RADIUS of the
    side, elliptic with aspect 1-1.5, random orientation; centres may lie near the border)."""
    n_target = int(rng.integers(GLAND_COUNT[0], GLAND_COUNT[1] + 1))
    glands: list[Gland] = []
    for _ in range(60):
        if len(glands) == n_target:
            break
        r = float(rng.uniform(*GLAND_RADIUS) * size)
        aspect = float(rng.uniform(1.0, 1.5))
        cx, cy = rng.uniform(0.05 * size, 0.95 * size, 2)
        reach = r * aspect * 1.2
        if all(np.hypot(cx - g.cx, cy - g.cy) > reach + g.radius * g.aspect * 1.2 + 2 for g in glands):
            glands.append(Gland(float(cx), float(cy), r, aspect, float(rng.uniform(0, np.pi))))
    return glands


def stroma(rng: Rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(haematoxylin, eosin) maps of fibrous pink stroma with scattered fibroblast and
    lymphocyte nuclei and a few white clefts — the background of both classes."""
    shape = (size, size)
    s = size / 128.0
    low = noise(rng, shape, 10 * s)
    fib = noise(rng, shape, (0.6 * s, 3.5 * s))
    if rng.random() < 0.5:
        fib = fib.T.copy()
    e = 0.55 + 0.10 * low + 0.10 * fib
    cleft = np.abs(noise(rng, shape, 6 * s)) < 0.04
    e = np.where(cleft, 0.06, e)
    # fibroblasts: elongated, mid-dark; lymphocytes: small, round, dark
    n_fib = poisson(rng, 0.012 * size * size)
    xy = uniform_points(rng, n_fib, size, size)
    axes = np.stack([rng.uniform(1.6, 2.6, n_fib) * s, rng.uniform(0.6, 0.9, n_fib) * s], 1)
    h = draw_nuclei(shape, xy, axes, rng.uniform(0, 180, n_fib), rng.uniform(0.7, 1.0, n_fib))
    n_lym = poisson(rng, 0.004 * size * size)
    xy = uniform_points(rng, n_lym, size, size)
    axes = np.repeat(rng.uniform(0.8, 1.2, (n_lym, 1)) * s, 2, 1)
    h = np.maximum(h, draw_nuclei(shape, xy, axes, np.zeros(n_lym), rng.uniform(1.0, 1.3, n_lym)))
    # lymphoid aggregates: dense round clusters of small dark lymphocytes (not ROIs, both classes)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.05, 0.09) * size
        blob = (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 < r * r
        n = poisson(rng, float(blob.sum()) / (6.0 * s * s))
        xy = points_inside(rng, n, blob)
        axes = np.repeat(rng.uniform(0.9, 1.3, (n, 1)) * s, 2, 1)
        h = np.maximum(h, draw_nuclei(shape, xy, axes, np.zeros(n), rng.uniform(1.2, 1.5, n)))
    h = h + 0.06 + 0.03 * low
    return h.astype(np.float32), np.clip(e, 0.02, None).astype(np.float32)


def gland_content(rng: Rng, shape: tuple[int, int], glands: list[Gland], label: int,
                  size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alpha, haematoxylin, eosin) of the glands of one class. ``alpha`` (soft mask) says
    where the gland replaces the stroma; outside it the returned stains are meaningless."""
    s = size / 128.0
    alpha = np.zeros(shape, np.float32)
    h = np.zeros(shape, np.float32)
    e = np.zeros(shape, np.float32)
    low = noise(rng, shape, 2.0 * s)
    xy_l, axes_l, ang_l, val_l = [], [], [], []
    for g in glands:
        if label == 0:  # benign: smooth outline, wide lumen, one palisade of regular nuclei
            harm = np.array([[k, rng.uniform(0.0, 0.04), rng.uniform(0, 2 * np.pi)] for k in (2, 3)])
        else:  # malignant: irregular, budding outline
            harm = np.array([[k, rng.uniform(0.06, 0.16), rng.uniform(0, 2 * np.pi)] for k in (2, 3, 4, 5)])
        rho = polar_region(shape, g.cx, g.cy, g.radius, g.aspect, g.angle, harm)
        a = soft_inside(rho, g.radius)
        if label == 0:
            lumen = soft_inside(rho / 0.45, 0.45 * g.radius)
            e_g = (0.45 + 0.05 * low) * (1 - lumen) + 0.05 * lumen
            h_g = 0.22 * (1 - lumen)
            # one palisade of dark nuclei, evenly spaced in angle on the ring ρ = 0.72, long
            # axis pointing to the centre
            n = max(8, int(np.pi * 0.72 * g.radius * (1 + g.aspect) / (2.4 * s)))
            t = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
            xy = ring_points(g, harm, t, 0.72)
            ang = np.degrees(np.arctan2(xy[:, 1] - g.cy, xy[:, 0] - g.cx))
            axes = np.stack([np.full(n, 2.0 * s), np.full(n, 1.1 * s)], 1)
            val = rng.uniform(1.2, 1.5, n)
        else:  # malignant: small or no lumen, crowded large dark nuclei in disorder
            lumen = soft_inside(rho / 0.22, 0.22 * g.radius) * (rng.random() < 0.3)
            e_g = (0.34 + 0.05 * low) * (1 - lumen) + 0.05 * lumen
            h_g = 0.30 * (1 - lumen)
            n = poisson(rng, float((rho < 1.0).sum()) / (14.0 * s * s))
            xy = points_inside(rng, n, (rho < 0.93) & ((rho > 0.24) | (lumen < 0.5)))
            axes = np.stack([rng.uniform(1.6, 2.8, n) * s, rng.uniform(1.2, 2.0, n) * s], 1)
            ang = rng.uniform(0, 180, n)
            val = rng.uniform(1.2, 1.6, n)
        xy_l.append(xy)
        axes_l.append(axes)
        ang_l.append(ang)
        val_l.append(val)
        alpha = np.maximum(alpha, a)
        h = np.where(a > 0, h_g, h)
        e = np.where(a > 0, e_g, e)
    if glands:
        nuc = draw_nuclei(shape, np.concatenate(xy_l), np.concatenate(axes_l), np.concatenate(ang_l),
                          np.concatenate(val_l))
        h = np.maximum(h, nuc)
    return alpha, h, e


def render_glas(seed: tuple[int, ...], label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One ``size``² H&E-like image (uint8 H×W×3) and its gland mask (uint8 0/1).

    ``seed`` fixes the layout and the stroma (independent of ``label``); the gland contents
    come from a stream seeded by (seed, label), so two labels share every pixel outside the
    glands."""
    rng_layout = np.random.default_rng([*seed, 0])
    rng_bg = np.random.default_rng([*seed, 1])
    rng_roi = np.random.default_rng([*seed, 2, label])
    rng_stain = np.random.default_rng([*seed, 3])
    shape = (size, size)
    glands = glas_layout(rng_layout, size)
    h_bg, e_bg = stroma(rng_bg, size)
    alpha, h_g, e_g = gland_content(rng_roi, shape, glands, label, size)
    h = alpha * h_g + (1 - alpha) * h_bg
    e = alpha * e_g + (1 - alpha) * e_bg
    # per-image stain strength (same distribution for both classes) and a little sensor noise
    hs, es = rng_stain.uniform(0.85, 1.15, 2)
    extra = 0.02 * rng_stain.standard_normal((size, size, 3)).astype(np.float32)
    rgb = stain_to_rgb(h * hs, e * es, extra=extra)
    return rgb, (alpha >= 0.5).astype(np.uint8)


# ------------------------------------------------------------------- synthetic-camelyon


def lymph_node(rng: Rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense small dark lymphocytes in a thin pink matrix, with vessels and sinus gaps."""
    shape = (size, size)
    s = size / 128.0
    low = noise(rng, shape, 8 * s)
    e = 0.35 + 0.08 * low
    sinus = noise(rng, shape, 7 * s) > 1.6
    e = np.where(sinus, 0.08, e)
    n = poisson(rng, 0.06 * size * size)
    xy = points_inside(rng, n, ~sinus)
    axes = np.repeat(rng.uniform(0.9, 1.3, (n, 1)) * s, 2, 1) * np.array([[1.0, 0.9]])
    h = draw_nuclei(shape, xy, axes, rng.uniform(0, 180, n), rng.uniform(1.0, 1.4, n))
    return (h + 0.08).astype(np.float32), e.astype(np.float32)


def tumour_region(rng: Rng, size: int, fraction: float) -> np.ndarray:
    """Soft mask of a smooth blob-shaped region covering ≈ ``fraction`` of the patch."""
    if fraction >= 0.999:
        return np.ones((size, size), np.float32)
    field = noise(rng, (size, size), 14 * size / 128.0)
    # one dominant blob: a smooth bump around a random centre added to the noise field
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    field = field + 2.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (0.25 * size) ** 2))
    inside = (field >= np.quantile(field, 1.0 - fraction)).astype(np.float32)
    return cv2.GaussianBlur(inside, (3, 3), 0.6)  # anti-aliased edge, 1 px wide


def tumour_cells(rng: Rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cohesive tumour cells: large, pale, vesicular nuclei with a dark nucleolus, pink cytoplasm."""
    shape = (size, size)
    s = size / 128.0
    e = 0.50 + 0.08 * noise(rng, shape, 3 * s)
    n = poisson(rng, size * size / (22.0 * s * s))
    xy = uniform_points(rng, n, size, size)
    axes = np.stack([rng.uniform(2.0, 3.0, n) * s, rng.uniform(1.6, 2.4, n) * s], 1)
    h = draw_nuclei(shape, xy, axes, rng.uniform(0, 180, n), rng.uniform(0.55, 0.75, n))
    nucleoli = draw_nuclei(shape, xy, np.full((n, 2), 0.6 * s), np.zeros(n), np.full(n, 1.5))
    return (np.maximum(h, nucleoli) + 0.10).astype(np.float32), e.astype(np.float32)


def render_camelyon(seed: tuple[int, ...], label: int, size: int,
                    fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A normal (label 0: all-zero mask) or metastatic (label 1) patch. The tumour fraction
    is drawn from U(0.03, 1.0) unless given."""
    rng_bg = np.random.default_rng([*seed, 1])
    rng_roi = np.random.default_rng([*seed, 2, label])
    rng_stain = np.random.default_rng([*seed, 3])
    h, e = lymph_node(rng_bg, size)
    alpha = np.zeros((size, size), np.float32)
    if label == 1:
        f = float(rng_roi.uniform(0.03, 1.0)) if fraction is None else float(fraction)
        f = 1.0 if f > 0.97 else f
        alpha = tumour_region(rng_roi, size, f)
        h_t, e_t = tumour_cells(rng_roi, size)
        h = alpha * h_t + (1 - alpha) * h
        e = alpha * e_t + (1 - alpha) * e
    hs, es = rng_stain.uniform(0.85, 1.15, 2)
    extra = 0.02 * rng_stain.standard_normal((size, size, 3)).astype(np.float32)
    return stain_to_rgb(h * hs, e * es, extra=extra), (alpha >= 0.5).astype(np.uint8)


# ------------------------------------------------------------------------ synthetic-cub

CUB_CLASSES = ["disc", "triangle", "square", "star", "cross", "ring", "crescent", "diamond", "hexagon", "arrow"]
# two colours per class (RGB) and a pattern: 0 plain, 1 stripes, 2 dots, 3 checker
_CUB_STYLE = [
    ((220, 60, 40), (250, 200, 60), 1),
    ((40, 90, 200), (240, 240, 240), 2),
    ((30, 150, 60), (20, 40, 20), 3),
    ((250, 210, 30), (200, 80, 10), 0),
    ((150, 40, 160), (250, 170, 230), 1),
    ((20, 170, 180), (10, 60, 80), 2),
    ((240, 120, 30), (60, 30, 10), 3),
    ((200, 200, 220), (90, 30, 120), 1),
    ((120, 70, 30), (230, 200, 150), 2),
    ((230, 40, 130), (30, 30, 30), 3),
]


def _shape_mask(cls: int, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Boolean mask of the class's shape, centred at (cx, cy) with circumradius ``r``."""
    m = np.zeros((size, size), np.uint8)
    sc = 4

    def poly(pts: np.ndarray) -> None:
        ca, sa = np.cos(angle), np.sin(angle)
        rot = pts @ np.array([[ca, sa], [-sa, ca]], np.float32)
        q = np.round((rot * r + [cx, cy]) * sc).astype(np.int32)
        cv2.fillPoly(m, [q], 1, cv2.LINE_8, 2)

    def ngon(k: int, phase: float = 0.0) -> np.ndarray:
        t = np.linspace(0, 2 * np.pi, k, endpoint=False) + phase
        return np.stack([np.cos(t), np.sin(t)], 1).astype(np.float32)

    name = CUB_CLASSES[cls]
    if name == "disc":
        cv2.ellipse(m, (int(cx * sc), int(cy * sc)), (int(r * sc), int(0.75 * r * sc)), np.degrees(angle), 0, 360, 1,
                    -1, cv2.LINE_8, 2)
    elif name == "triangle":
        poly(ngon(3, -np.pi / 2))
    elif name == "square":
        poly(ngon(4, np.pi / 4))
    elif name == "star":
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False)
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        poly(np.stack([rad * np.cos(t), rad * np.sin(t)], 1).astype(np.float32))
    elif name == "cross":
        a, b = 1.0, 0.33
        poly(np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b],
                       [-a, -b], [-b, -b]], np.float32))
    elif name == "ring":
        cv2.circle(m, (int(cx * sc), int(cy * sc)), int(r * sc), 1, -1, cv2.LINE_8, 2)
        cv2.circle(m, (int(cx * sc), int(cy * sc)), int(0.5 * r * sc), 0, -1, cv2.LINE_8, 2)
    elif name == "crescent":
        cv2.circle(m, (int(cx * sc), int(cy * sc)), int(r * sc), 1, -1, cv2.LINE_8, 2)
        ox, oy = cx + 0.45 * r * np.cos(angle), cy + 0.45 * r * np.sin(angle)
        cv2.circle(m, (int(ox * sc), int(oy * sc)), int(0.8 * r * sc), 0, -1, cv2.LINE_8, 2)
    elif name == "diamond":
        poly(np.array([[0, -1], [0.55, 0], [0, 1], [-0.55, 0]], np.float32))
    elif name == "hexagon":
        poly(ngon(6))
    elif name == "arrow":
        poly(np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.6], [1, 0], [0.2, 0.6], [0.2, 0.25], [-1, 0.25]],
                      np.float32))
    return m.astype(bool)


def _pattern(kind: int, size: int, period: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    v = -xx * np.sin(angle) + yy * np.cos(angle)
    if kind == 1:
        return (np.floor(u / period) % 2).astype(np.float32)
    if kind == 2:
        du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        return (du * du + dv * dv < 0.09).astype(np.float32)
    if kind == 3:
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    return np.zeros((size, size), np.float32)


def cluttered_background(rng: Rng, size: int) -> np.ndarray:
    """Float H×W×3 in [0, 1]: coloured smooth texture, branches and leaf-like blobs."""
    s = size / 128.0
    base = rng.uniform(0.25, 0.75, 3).astype(np.float32)
    tex = np.stack([noise(rng, (size, size), 6 * s) for _ in range(3)], -1)
    fine = noise(rng, (size, size), 1.0 * s)[..., None]
    img = np.clip(base + 0.12 * tex + 0.06 * fine, 0, 1)
    canvas = (img * 255).astype(np.uint8)
    for _ in range(int(rng.integers(4, 10))):  # branches
        p = rng.uniform(0, size, 4).astype(int)
        col = tuple(int(c) for c in rng.integers(20, 140, 3))
        cv2.line(canvas, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), col, max(1, int(rng.integers(1, 3) * s)),
                 cv2.LINE_AA)
    for _ in range(int(rng.integers(10, 25))):  # leaves / pebbles
        c = rng.uniform(0, size, 2).astype(int)
        ax = (max(1, int(rng.uniform(2, 7) * s)), max(1, int(rng.uniform(1, 4) * s)))
        col = tuple(int(v) for v in rng.integers(40, 220, 3))
        cv2.ellipse(canvas, (int(c[0]), int(c[1])), ax, float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def render_cub(seed: tuple[int, ...], label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One object of class ``label`` (varying size 20-70% of the side, position, rotation)
    on a cluttered background; returns (RGB uint8, mask uint8 0/1)."""
    rng_bg = np.random.default_rng([*seed, 1])
    rng_obj = np.random.default_rng([*seed, 2, label])
    img = cluttered_background(rng_bg, size)
    r = float(rng_obj.uniform(0.10, 0.35) * size)
    cx, cy = rng_obj.uniform(r * 0.9, size - r * 0.9, 2)
    mask = _shape_mask(label, size, float(cx), float(cy), r, float(rng_obj.uniform(-0.4, 0.4)))
    if not mask.any():  # degenerate raster (never for r >= 2 px): fall back to a disc
        mask = _shape_mask(0, size, float(cx), float(cy), max(r, 3.0), 0.0)
    c1, c2, kind = _CUB_STYLE[label]
    jitter = rng_obj.uniform(-25, 25, 3)
    col1 = np.clip(np.array(c1) + jitter, 0, 255) / 255.0
    col2 = np.clip(np.array(c2) + jitter, 0, 255) / 255.0
    pat = _pattern(kind, size, max(2.0, r / 3.0), float(rng_obj.uniform(0, np.pi)))[..., None]
    obj = (1 - pat) * col1 + pat * col2
    shade = 1.0 + 0.08 * noise(rng_obj, (size, size), 3.0 * size / 128.0)[..., None]
    soft = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0.6)[..., None]
    out = soft * np.clip(obj * shade, 0, 1) + (1 - soft) * img
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), mask.astype(np.uint8)


# ---------------------------------------------------------------------- writing a set


@dataclass(frozen=True)
class Recipe:
    """How to draw a procedural set: ``render(seed, label, size) -> (RGB, mask)``, default
    number of training images ``n`` and image side ``size``."""

    name: str
    classes: list[str]
    loc: Literal["mask", "box"]
    render: Callable[[tuple[int, ...], int, int], tuple[np.ndarray, np.ndarray]]
    n: int  # default number of training images
    size: int  # default image side
    description: str


SPLIT_CODE = {"train": 0, "valcl": 1, "test": 2}


def split_sizes(n: int, num_classes: int) -> dict[str, int]:
    """train = n; valcl = max(n/4, 3 per class + 1 per class); test = max(n/2, 2 per class)."""
    if n < num_classes:
        raise ConfigError(f"synthesize: n={n} training images cannot cover {num_classes} classes; "
                          f"use n >= {num_classes}")
    return {"train": n, "valcl": max(round(n / 4), 4 * num_classes), "test": max(round(n / 2), 2 * num_classes)}


def _labels(rng: Rng, count: int, num_classes: int) -> np.ndarray:
    """Balanced labels (each class count // num_classes or one more), shuffled."""
    labels = np.arange(count) % num_classes
    return rng.permutation(labels)


def generate(spec: Recipe, out: str | Path, n: int | None = None, size: int | None = None, seed: int = 0) -> Path:
    """Generate the procedural dataset ``spec`` into ``out``, a new or empty folder (images/,
    masks/, metadata/, dataset.json). Users go through :func:`wsol.data.synthesize`, which
    writes into a temporary folder, adds the marker and swaps it into place."""
    n = spec.n if n is None else int(n)
    size = spec.size if size is None else int(size)
    if size < 16:
        raise ConfigError(f"synthesize: size={size} is too small; use size >= 16")
    ncls = len(spec.classes)
    counts = split_sizes(n, ncls)
    out = require_empty(Path(out))
    entries: dict[str, list[MetaEntry]] = {}
    fg = []
    for split, count in counts.items():
        labels = _labels(np.random.default_rng([seed, SPLIT_CODE[split], 99]), count, ncls)
        (out / "images" / split).mkdir(parents=True)
        (out / "masks" / split).mkdir(parents=True)
        entries[split] = []
        for i, label in enumerate(labels.tolist()):
            rgb, mask = spec.render((seed, SPLIT_CODE[split], i), int(label), size)
            stem = f"{split}_{i:05d}"
            img_rel, mask_rel = f"images/{split}/{stem}.png", f"masks/{split}/{stem}.png"
            write_png(out / img_rel, rgb)
            write_png(out / mask_rel, mask * 255)
            fg.append(float(mask.mean()))
            boxes = None
            if spec.loc == "box":
                ys, xs = np.nonzero(mask)
                boxes = [[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]]
            entries[split].append(MetaEntry(image_id=img_rel, label=int(label), size=(size, size), boxes=boxes,
                                            masks=[(mask_rel, None)]))
    # valpx: 3 pixel-labelled images per class taken from valcl (survey §3.3.1)
    valpx = []
    for c in range(ncls):
        valpx += [e for e in entries["valcl"] if e.label == c][:3]
    entries["valpx"] = valpx
    info = {
        "name": spec.name, "seed": seed, "n": n, "size": size, "classes": spec.classes, "loc": spec.loc,
        "counts": {s: len(entries[s]) for s in SPLITS}, "foreground_fraction": float(np.mean(fg)),
        "description": spec.description,
    }
    finish_set(out, entries, spec.classes, info)
    log.info("synthesised %s in %s (%s)", spec.name, out, ", ".join(f"{s}: {len(entries[s])}" for s in SPLITS))
    return out


def _embedded(recipe: Recipe, paper: str):
    return embedded_spec(recipe.name, recipe.classes, recipe.loc, functools.partial(generate, recipe),
                         recipe.description, paper, default_n=recipe.n, default_size=recipe.size)


GLAS = _embedded(Recipe(
    name="synthetic-glas", classes=["benign", "malignant"], loc="mask", render=render_glas, n=200, size=128,
    description="procedural H&E colon tissue: glands are the ROIs; benign = round glands, clear lumen, one "
                "palisade of regular nuclei; malignant = irregular glands crowded with large dark nuclei",
), paper="wsol-histology-survey §3.3.1 (GlaS protocol splits)")
CAMELYON = _embedded(Recipe(
    name="synthetic-camelyon", classes=["normal", "metastatic"], loc="mask", render=render_camelyon, n=240, size=128,
    description="procedural lymph-node patches: metastatic regions (large pale nuclei) cover 3-100% of metastatic "
                "patches; normal patches have all-zero masks",
), paper="wsol-histology-survey §3.3.2 and appendix B (CAMELYON16-P512)")
CUB = _embedded(Recipe(
    name="synthetic-cub", classes=list(CUB_CLASSES), loc="box", render=render_cub, n=400, size=128,
    description="10 object classes (shape + colour pattern) on cluttered backgrounds, one object per image "
                "with box and mask",
), paper="CUB-200-2011 stand-in for the box metrics of f-cam / weight-map-wsol")
