"""``ihc-dab``: a tiny benchmark of real tissue pixels, built from the one
immunohistochemistry image scikit-image ships (``skimage.data.immunohistochemistry``,
512×512, colon tissue stained with DAB (brown) and haematoxylin (blue)).

It is built the way CAMELYON16-P512 is built from slides (survey appendix B), at a toy
scale:

1. ROI mask — **derived from the stain, not drawn by a pathologist**: the DAB channel of
   colour deconvolution (``skimage.color.rgb2hed``), smoothed (Gaussian, σ = 3 px),
   thresholded by Otsu, then cleaned (opening with a disk of radius 3, holes filled,
   objects of <= 300 px removed);
2. non-overlapping ``patch``×``patch`` tiles (default 32 px: 256 tiles); a tile is
   "positive" when its ROI fraction is >= ``p0`` (0.2, the protocol's p0), "negative" when
   it is <= 0.001 (all-zero mask), and dropped in between (ambiguous);
3. as many positives as negatives (positives sub-sampled uniformly, seeded), as in the
   protocol's normal/metastatic balance;
4. tiles split per class into train / valcl / test (50 / 15 / 35 %), so no pixel is in two
   splits; valpx = 3 tiles per class from valcl.

Written in the wsolevaluation metadata layout, like the synthetic sets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from wsol.data.embedded.base import embedded_spec, finish_set, require_empty, write_png
from wsol.data.metadata import MetaEntry
from wsol.data.registry import SPLITS
from wsol.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CLASSES = ["negative", "positive"]
P0 = 0.2  # ROI fraction for a positive tile (CAMELYON16-P512's p0, survey appendix B)
NEG_MAX = 0.001  # ROI fraction at or below which a tile is negative (and its mask is all zero)
FRACTIONS = {"train": 0.50, "valcl": 0.15}  # test takes the rest


def source_image() -> np.ndarray:
    """The 512×512 RGB immunohistochemistry image bundled with scikit-image."""
    from skimage import data

    return np.ascontiguousarray(data.immunohistochemistry())


def dab_mask(rgb: np.ndarray, sigma: float = 3.0, radius: int = 3, min_size: int = 300) -> np.ndarray:
    """Stain-derived ROI (bool H×W): smoothed DAB optical density > Otsu threshold, cleaned."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu

    dab = ndimage.gaussian_filter(rgb2hed(rgb)[..., 2], sigma)
    roi = dab > threshold_otsu(dab)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    roi = cv2.morphologyEx(roi.astype(np.uint8), cv2.MORPH_OPEN, disk).astype(bool)
    roi = ndimage.binary_fill_holes(roi)
    lab, n = ndimage.label(roi)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes > min_size
    keep[0] = False
    return keep[lab]


def tile_fractions(mask: np.ndarray, patch: int) -> np.ndarray:
    """ROI fraction of each non-overlapping ``patch``² tile, as a (rows, cols) array."""
    r, c = mask.shape[0] // patch, mask.shape[1] // patch
    return mask[: r * patch, : c * patch].reshape(r, patch, c, patch).mean(axis=(1, 3))


def select_tiles(fractions: np.ndarray, seed: int, p0: float = P0) -> dict[str, list[tuple[int, int, int]]]:
    """(row, col, label) of the tiles of each split: negatives (fraction <= NEG_MAX) and as
    many positives (fraction >= p0), split per class 50/15/35 into train/valcl/test;
    valpx = the first 3 of each class in valcl."""
    rng = np.random.default_rng(seed)
    flat = fractions.ravel()
    neg = np.flatnonzero(flat <= NEG_MAX)
    pos = np.flatnonzero(flat >= p0)
    k = min(len(neg), len(pos))
    if k < 6:
        raise DataError(f"ihc-dab: only {len(neg)} negative and {len(pos)} positive tiles; use a smaller patch size")
    per_class = [rng.permutation(neg)[:k], rng.permutation(pos)[:k]]
    out: dict[str, list[tuple[int, int, int]]] = {s: [] for s in SPLITS}
    cols = fractions.shape[1]
    for label, idx in enumerate(per_class):
        n_tr = int(round(FRACTIONS["train"] * k))
        n_cl = max(3, int(round(FRACTIONS["valcl"] * k)))
        parts = {"train": idx[:n_tr], "valcl": idx[n_tr:n_tr + n_cl], "test": idx[n_tr + n_cl:]}
        for split, ids in parts.items():
            out[split] += [(int(i) // cols, int(i) % cols, label) for i in sorted(ids.tolist())]
        out["valpx"] += [(int(i) // cols, int(i) % cols, label) for i in sorted(parts["valcl"].tolist())[:3]]
    return out


def build_ihc_dab(out: str | Path, n: int | None = None, size: int | None = None, seed: int = 0,
                  patch: int | None = None) -> Path:
    """Write ``ihc-dab`` into ``out``. ``patch`` (or ``size``, its alias in the common
    synthesize signature) is the tile side in source pixels (default 32); ``n`` is
    ignored (the source image fixes the number of tiles)."""
    patch = int(patch or size or 32)
    if not 16 <= patch <= 128:
        raise ConfigError(f"ihc-dab: patch size {patch} must be in [16, 128] (the source image is 512×512)")
    if n is not None:
        log.info("ihc-dab: n=%s ignored; the number of tiles follows from the patch size", n)
    rgb = source_image()
    roi = dab_mask(rgb)
    frac = tile_fractions(roi, patch)
    tiles = select_tiles(frac, seed)
    out = require_empty(Path(out))
    entries: dict[str, list[MetaEntry]] = {s: [] for s in SPLITS}
    for split in ("train", "valcl", "test"):
        for sub in ("images", "masks"):
            (out / sub / split).mkdir(parents=True)
        for r, c, label in tiles[split]:
            y, x = r * patch, c * patch
            stem = f"r{y:03d}_c{x:03d}"
            img_rel, mask_rel = f"images/{split}/{stem}.png", f"masks/{split}/{stem}.png"
            mask = roi[y:y + patch, x:x + patch].astype(np.uint8)
            if label == 0:
                mask[:] = 0  # a negative tile has an all-zero mask
            write_png(out / img_rel, rgb[y:y + patch, x:x + patch])
            write_png(out / mask_rel, mask * 255)
            entries[split].append(MetaEntry(img_rel, label, (patch, patch), masks=[(mask_rel, None)]))
    valcl = {e.image_id: e for e in entries["valcl"]}
    entries["valpx"] = [valcl[f"images/valcl/r{r * patch:03d}_c{c * patch:03d}.png"] for r, c, _ in tiles["valpx"]]
    info = {
        "name": "ihc-dab", "seed": seed, "patch": patch, "classes": CLASSES, "loc": "mask",
        "counts": {s: len(entries[s]) for s in SPLITS},
        "roi": "stain-derived (DAB by colour deconvolution, Otsu, morphology), not a pathologist's annotation",
        "source": "skimage.data.immunohistochemistry()",
    }
    finish_set(out, entries, CLASSES, info)
    return out


IHC_DAB = embedded_spec(
    name="ihc-dab", classes=CLASSES, loc="mask", generate=build_ihc_dab,
    description="real IHC tissue tiles (skimage's immunohistochemistry image); ROI = DAB-positive tissue, a "
                "stain-derived mask (not a pathologist's); positive tiles >= 20% ROI, negative tiles ~0%",
    paper="built like CAMELYON16-P512 (wsol-histology-survey appendix B), at toy scale",
    default_size=32, takes_n=False,
)
