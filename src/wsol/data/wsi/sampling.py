"""The sampling rules of the CAMELYON16 patch protocol (survey Appendix B), as pure functions
of numbers so they can be checked by hand: the patch grid, the slide-level split, the
calibration of category-2 patches, and the spread of normal patches over normal slides.

Slide-level split (survey §3.3.2, footnote 7, and App. B "we split CAMELYON16 dataset into
train, validation, and test set at WSI-level"):

- ``official`` (default): the challenge's own partition is kept — the 270 training slides
  (``normal_XXX``, ``tumor_XXX``) feed train / valcl, the 129 test slides (``test_XXX``,
  test_114 dropped: no pixel-level annotation) are the test split; valcl is drawn from the
  training slides only, per kind (:func:`official_splits`). When the challenge's
  ``reference.csv`` (``testing/reference.csv``: rows ``test_001,Tumor,...`` /
  ``test_002,Normal``, no header) is found, its slides are the test split and each one's
  class is checked against its annotation (:func:`read_reference_csv`).
- a split CSV (``split_csv``): rows ``slide,split`` (split = train, valcl or test; ``val`` /
  ``valid`` / ``validation`` are read as valcl; an optional header line), e.g. to reproduce
  a published split exactly (:func:`read_split_csv`).
- ``random``: every slide re-split at random by kind with ``fractions`` (train, valcl,
  test) — official test slides may land in training; explicit only (:func:`assign_splits`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsol.errors import DataError

FRACTION_SPLITS = ("train", "valcl", "test")
#: survey §3.3.2: 24,348 train / 8,858 validation patches from the training slides -> the
#: share of the training slides drawn for valcl by default
OFFICIAL_VAL_FRACTION = 8858 / (24348 + 8858)
#: the official names: training slides normal_XXX / tumor_XXX, test slides test_XXX
OFFICIAL_NAME = re.compile(r"(normal|tumor|test)_(\d+)", re.IGNORECASE)
SPLIT_HEADERS = ("split", "set", "subset", "partition", "fold")
SPLIT_ALIASES = {"train": "train", "valcl": "valcl", "val": "valcl", "valid": "valcl", "validation": "valcl",
                 "test": "test"}


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


def official_part(name: str) -> str | None:
    """"train" for ``normal_XXX`` / ``tumor_XXX``, "test" for ``test_XXX``, None otherwise."""
    m = OFFICIAL_NAME.fullmatch(name)
    if m is None:
        return None
    return "test" if m.group(1).lower() == "test" else "train"


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read the split file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e})") from None
    return [(i, [c.strip() for c in row]) for i, row in enumerate(csv.reader(io.StringIO(text)), start=1)
            if any(c.strip() for c in row)]


def read_reference_csv(path: Path) -> dict[str, str]:
    """Slide name -> "tumor" / "normal" from the challenge's ``reference.csv`` (rows
    ``test_001,Tumor,Macro,...``; a header line is skipped)."""
    out: dict[str, str] = {}
    for k, (ln, row) in enumerate(_csv_rows(path)):
        kind = row[1].lower() if len(row) >= 2 else ""
        if kind not in ("tumor", "normal"):
            if k == 0 and OFFICIAL_NAME.fullmatch(row[0]) is None:
                continue  # a header
            raise DataError(f"{path}:{ln}: expected 'test_XXX,Tumor|Normal,...' (the challenge's reference.csv), "
                            f"found {','.join(row)!r}")
        if row[0] in out:
            raise DataError(f"{path}:{ln}: slide {row[0]!r} listed twice; remove the duplicate")
        out[row[0]] = kind
    if not out:
        raise DataError(f"{path}: no slide listed; expected rows 'test_XXX,Tumor|Normal,...'")
    return out


def read_split_csv(path: Path) -> dict[str, str]:
    """Slide name -> "train" / "valcl" / "test" from rows ``slide,split`` (``val``, ``valid``,
    ``validation`` = valcl; a header line such as ``slide,split`` is skipped)."""
    out: dict[str, str] = {}
    for k, (ln, row) in enumerate(_csv_rows(path)):
        split = SPLIT_ALIASES.get(row[1].lower()) if len(row) == 2 else None
        if split is None:
            if k == 0 and len(row) == 2 and row[1].lower() in SPLIT_HEADERS:
                continue  # a header such as "slide,split"
            raise DataError(f"{path}:{ln}: expected 'slide,split' with split one of train, valcl (or val), test; "
                            f"found {','.join(row)!r}")
        if row[0] in out:
            raise DataError(f"{path}:{ln}: slide {row[0]!r} listed twice; remove the duplicate")
        out[row[0]] = split
    if not out:
        raise DataError(f"{path}: no slide listed; expected rows 'slide,split'")
    return out


def official_splits(slides: dict[str, list[str]], test: set[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Slide name -> split, keeping the official partition: the slides in ``test`` are the
    test split; of the others (the official training slides), ``val_fraction`` of each kind
    ("tumor" / "normal", largest remainder) go to valcl at random (seeded), the rest to
    train — so no official test slide is ever trained on."""
    out: dict[str, str] = {}
    for kind in sorted(slides):
        pool = sorted(n for n in slides[kind] if n not in test)
        out.update({n: "test" for n in slides[kind] if n in test})
        n_val = split_counts(len(pool), (1.0 - val_fraction, val_fraction))[1] if pool else 0
        order = rng_for(seed, "official-valcl", kind).permutation(len(pool))
        for rank, i in enumerate(order):
            out[pool[i]] = "valcl" if rank < n_val else "train"
    return out
