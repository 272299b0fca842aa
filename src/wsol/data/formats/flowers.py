"""Oxford-102 flowers (Nilsback & Zisserman, 2008) in its published layout::

    jpg/image_00001.jpg ...         8189 images
    imagelabels.mat                 ``labels``: 1 × 8189, class of image k (1..102)
    setid.mat                       ``trnid``, ``valid``, ``tstid``: image numbers (1-based)
    segmim/segmim_00001.jpg ...     (optional) segmentations: background painted pure blue
                                    (0, 0, 254); mask = every pixel that is not blue
    class_names.txt                 (optional, not in the archive) 102 names, one per line

Splits: ``train`` = trnid, ``valcl`` = valid, ``test`` = tstid (the official ones, used by
min-max-entropy §4), ``valpx`` = ``valpx_per_class`` images per class from valid, from
``options.seed``, written to ``<split_dir>/flowers-px<n>_seed<k>/valpx.txt``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsol.data.formats._util import (
    SplitOptions,
    class_names_file,
    load_mat,
    pick_per_class,
    require_dir,
    split_folder,
    stored_splits,
)
from wsol.data.problems import Collector, LocatedError
from wsol.data.records import MaskDecoder, Record, open_image
from wsol.data.registry import DatasetSpec

NUM_CLASSES = 102
# The trimap's background is painted (0, 0, 254); JPEG noise (and chroma bleeding at the
# flower's border) moves it by up to ~100 levels in blue and a few tens in red / green. A pixel
# is background when red, green <= 80 and blue >= 150 (a deep-blue flower petal darker than
# that would be lost; such petals are rare in the set).
MAX_RG, MIN_B = 80, 150
FIX = "restore it from the Oxford-102 archive (102flowers.tgz, imagelabels.mat, setid.mat)"


def trimap_to_mask(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 segmentation -> H×W uint8 mask, 1 where the pixel is not background blue."""
    blue = (rgb[..., 0] <= MAX_RG) & (rgb[..., 1] <= MAX_RG) & (rgb[..., 2] >= MIN_B)
    return (~blue).astype(np.uint8)


def _trimap_loader(path: Path, source: str) -> MaskDecoder:
    def load() -> np.ndarray:
        rec = Record(image_id="", image_path=path, label=0, source=source)
        rgb = open_image(path, "segmentation", rec, lambda im: np.asarray(im.convert("RGB")),
                         fix="restore segmim/ from 102segmentations.tgz")
        return trimap_to_mask(rgb)

    return MaskDecoder(load, files=(path,))


def _vector(data: dict, key: str, path: Path) -> np.ndarray:
    v = np.atleast_1d(np.asarray(data[key]))
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.number):
        raise LocatedError(path, f"variable {key} must be a numeric vector, found shape {v.shape} dtype {v.dtype}")
    if not np.all(np.equal(np.mod(v, 1), 0)):
        i = int(np.argmax(np.mod(v, 1) != 0))
        raise LocatedError(path, f"{key}[{i + 1}] = {v[i]} is not an integer; {FIX}")
    return v.astype(np.int64)


def read_flowers(root: Path) -> tuple[dict[str, Record], dict[str, list[str]]]:
    """All listed images as records by id, and the official splits (ids)."""
    root = Path(root)
    lab_path, set_path = root / "imagelabels.mat", root / "setid.mat"
    labels = _vector(load_mat(lab_path, ("labels",), FIX), "labels", lab_path)
    sets = load_mat(set_path, ("trnid", "valid", "tstid"), FIX)
    jpg = require_dir(root / "jpg", "Oxford-102 image folder", FIX + " and point data.root at its folder")
    seg_dir = root / "segmim" if (root / "segmim").is_dir() else None
    bad = Collector()
    for i in np.flatnonzero((labels < 1) | (labels > NUM_CLASSES)):
        bad.add(lab_path, f"labels[{i + 1}] = {labels[i]} (image_{i + 1:05d}); expected a class in 1..{NUM_CLASSES}")
    records: dict[str, Record] = {}
    splits: dict[str, list[str]] = {}
    seen: dict[int, str] = {}
    for split, key in (("train", "trnid"), ("valcl", "valid"), ("test", "tstid")):
        ids = _vector(sets, key, set_path)
        splits[split] = []
        for j, n in enumerate(ids, start=1):
            where = f"{set_path}:{key}[{j}]"
            if not 1 <= n <= len(labels):
                bad.add(where, f"image number {n} has no label (imagelabels.mat lists 1..{len(labels)}); {FIX}")
                continue
            if n in seen:
                bad.add(where, f"image number {n} is already in {seen[n]}; splits must not overlap")
                continue
            seen[n] = where
            iid = f"image_{n:05d}"
            lab = int(labels[n - 1])
            records[iid] = Record(
                image_id=iid, image_path=jpg / f"{iid}.jpg", label=lab - 1,
                mask=_trimap_loader(seg_dir / f"segmim_{n:05d}.jpg", where) if seg_dir else None,
                source=where,
            )
            splits[split].append(iid)
    bad.raise_if_any()
    return records, splits


Options = SplitOptions


def list_records(root: Path, split: str, opts: Options) -> list[Record]:
    records, official = read_flowers(root)

    def compute() -> dict[str, list[str]]:
        rng = np.random.default_rng(opts.seed)
        val = official["valcl"]
        return {**official, "valpx": pick_per_class(val, [records[i].label for i in val], opts.valpx_per_class, rng)}

    folder = split_folder(root, opts, f"flowers-px{opts.valpx_per_class}")
    splits = stored_splits(folder, set(records), compute, str(root / "setid.mat"))
    return [records[i] for i in splits[split]]


def class_names(root: Path, opts: Options) -> list[str]:
    names = class_names_file(root / "class_names.txt", NUM_CLASSES)
    return names if names is not None else [f"flower_{c:03d}" for c in range(1, NUM_CLASSES + 1)]


SPEC = DatasetSpec(
    name="flowers",
    read_records=list_records,
    read_classes=class_names,
    loc="mask",
    Options=Options,
    description="Oxford-102 flowers (official layout and splits); masks from the segmim/ trimaps",
    paper="min-max-entropy-recursive-erasing §4",
)
