"""The sampling rules of the CAMELYON16 patch protocol (survey Appendix B), as pure functions
of numbers so they can be checked by hand: the patch grid, the slide-level split, the
calibration of category-2 patches, and the spread of normal patches over normal slides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

FRACTION_SPLITS = ("train", "valcl", "test")


def rng_for(seed: int, *keys: str) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (e.g. a slide name), so results
    do not depend on the order or the process in which slides are handled."""
    digest = hashlib.sha256("\0".join([str(int(seed)), *keys]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def grid(width: int, height: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left level-0 corners (xs, ys) of the non-overlapping size×size patches that fit."""
    return np.arange(0, width - size + 1, size, dtype=np.int64), np.arange(0, height - size + 1, size, dtype=np.int64)


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Share ``n`` items by ``fractions`` (largest remainder); every split with a positive
    fraction gets at least one item when there are enough items."""
    f = np.asarray(fractions, dtype=np.float64)
    raw = f / f.sum() * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= int((f > 0).sum()):
        for i in np.flatnonzero((f > 0) & (counts == 0)):
            j = int(np.argmax(counts))
            counts[j] -= 1
            counts[i] += 1
    return counts.tolist()


def assign_splits(slides: dict[str, list[str]], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Slide name -> split ("train", "valcl", "test"), stratified by slide kind ("tumor" /
    "normal"), so all the patches of one slide end in one split (survey App. B: "we split
    CAMELYON16 dataset into train, validation, and test set at WSI-level")."""
    out: dict[str, str] = {}
    for kind in sorted(slides):
        names = sorted(slides[kind])
        order = rng_for(seed, "split", kind).permutation(len(names))
        counts = split_counts(len(names), fractions)
        start = 0
        for split, c in zip(FRACTION_SPLITS, counts):
            for i in order[start:start + c]:
                out[names[i]] = split
            start += c
    return out


def pm_bins(pm: np.ndarray, p1: float, bin_width: float) -> np.ndarray:
    """Histogram bin of each metastatic fraction pm > p1: bins [p1, p1 + w), ..., the last one
    closed at 1 (with p1 = 0.5 and w = 0.05: 10 bins)."""
    n_bins = max(1, int(round((1.0 - p1) / bin_width)))
    b = np.floor((np.asarray(pm, dtype=np.float64) - p1) / bin_width + 1e-9).astype(np.int64)
    return np.clip(b, 0, n_bins - 1)


def pick_category2(pm: np.ndarray, k: int, p1: float, bin_width: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` category-2 patches (pm > p1) picked without repetition by the survey's
    calibration (App. B): pick a histogram bin uniformly among the bins above p1 that still
    hold patches, then a patch uniformly inside it; repeat k times. Returns sorted indices."""
    pm = np.asarray(pm, dtype=np.float64)
    k = min(int(k), pm.size)
    bins = pm_bins(pm, p1, bin_width)
    members = {int(b): list(np.flatnonzero(bins == b)) for b in np.unique(bins)}
    picked = []
    for _ in range(k):
        open_bins = sorted(b for b, m in members.items() if m)
        b = open_bins[int(rng.integers(len(open_bins)))]
        picked.append(members[b].pop(int(rng.integers(len(members[b])))))
    return np.sort(np.asarray(picked, dtype=np.int64))


def spread(total: int, names: Sequence[str], rng: np.random.Generator) -> dict[str, int]:
    """Share ``total`` patches evenly over ``names`` (survey App. B: n_m / h normal patches per
    normal slide); the remainder goes one each to randomly chosen slides."""
    names = list(names)
    if not names:
        return {}
    base, rem = divmod(int(total), len(names))
    extra = set(rng.permutation(len(names))[:rem].tolist())
    return {n: base + (1 if i in extra else 0) for i, n in enumerate(names)}
