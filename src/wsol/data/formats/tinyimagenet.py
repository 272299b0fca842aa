"""Tiny-ImageNet (200 classes, 64×64) in its published layout::

    wnids.txt                                one WordNet id per line (label = line order)
    words.txt                                (optional) "<wnid>\\t<names>" -> class names
    train/<wnid>/images/<wnid>_<k>.JPEG
    train/<wnid>/<wnid>_boxes.txt            "<file>\\t<x1>\\t<y1>\\t<x2>\\t<y2>"
    val/images/val_<k>.JPEG
    val/val_annotations.txt                  "<file>\\t<wnid>\\t<x1>\\t<y1>\\t<x2>\\t<y2>"

Boxes are used as given (pixels). The official test part has no labels, so the official
``val`` part is the ``test`` split, and ``train`` / ``valcl`` come from the official train part
(stratified, ``val_fraction`` = 0.1, from ``options.seed``); ``valpx`` = ``valpx_per_class``
per class from ``valcl``. Split files: ``<split_dir>/tinyimagenet-val<f>-px<n>_seed<k>/``.
Image ids are paths relative to ``root``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from wsol.data.formats._util import HoldoutOptions, check_unique, holdout_splits, require_file, safe_join, text_rows
from wsol.data.problems import Collector, LocatedError
from wsol.data.records import Record
from wsol.data.registry import DatasetSpec


class Options(HoldoutOptions):
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of the official train part held out "
                                                                 "as valcl (stratified by class)")

FIX = "restore it from tiny-imagenet-200.zip and point data.root at the tiny-imagenet-200 folder"


def read_wnids(root: Path) -> list[str]:
    path = require_file(Path(root) / "wnids.txt", "Tiny-ImageNet class list", FIX)
    bad = Collector()
    wnids: list[str] = []
    for ln, f in text_rows(path):
        if len(f) != 1:
            bad.add(f"{path}:{ln}", f"expected one WordNet id per line, found {' '.join(f)!r}")
        elif f[0] in wnids:
            bad.add(f"{path}:{ln}", f"class {f[0]} listed twice; remove the duplicate")
        else:
            wnids.append(f[0])
    bad.raise_if_any()
    if not wnids:
        raise LocatedError(path, f"no class listed; {FIX}")
    return wnids


def _box(vals: list[str], where: str, bad: Collector) -> np.ndarray | None:
    try:
        box = np.array([[float(v) for v in vals]], dtype=np.float64)
    except ValueError:
        bad.add(where, f"box {vals} must be 4 numbers x1 y1 x2 y2")
        return None
    return box


def read_tiny(root: Path) -> tuple[list[Record], list[Record]]:
    """(official train records, official val records); all line problems at once."""
    root = Path(root)
    wnids = read_wnids(root)
    label = {w: i for i, w in enumerate(wnids)}
    bad = Collector()
    train: list[Record] = []
    for w in wnids:
        path = root / "train" / w / f"{w}_boxes.txt"
        if not path.is_file():
            bad.add(path, f"box file of class {w} (listed in {root / 'wnids.txt'}) not found; {FIX}")
            continue
        for ln, f in text_rows(path):
            where = f"{path}:{ln}"
            if len(f) != 5:
                bad.add(where, f"expected '<file>\\t<x1>\\t<y1>\\t<x2>\\t<y2>', found {len(f)} column(s)")
                continue
            box = _box(f[1:], where, bad)
            try:
                img = safe_join(root / "train" / w / "images", f[0], where)
            except LocatedError as e:
                bad.add_error(e)
                continue
            if box is not None:
                train.append(Record(image_id=img.relative_to(root).as_posix(), image_path=img, label=label[w],
                                    boxes=box, source=where))
    path = require_file(root / "val" / "val_annotations.txt", "Tiny-ImageNet validation annotations", FIX)
    val: list[Record] = []
    for ln, f in text_rows(path):
        where = f"{path}:{ln}"
        if len(f) != 6:
            bad.add(where, f"expected '<file>\\t<wnid>\\t<x1>\\t<y1>\\t<x2>\\t<y2>', found {len(f)} column(s)")
            continue
        if f[1] not in label:
            bad.add(where, f"class {f[1]!r} is not listed in {root / 'wnids.txt'}; fix the line")
            continue
        box = _box(f[2:], where, bad)
        try:
            img = safe_join(root / "val" / "images", f[0], where)
        except LocatedError as e:
            bad.add_error(e)
            continue
        if box is not None:
            val.append(Record(image_id=img.relative_to(root).as_posix(), image_path=img, label=label[f[1]],
                              boxes=box, source=where))
    check_unique(train + val, bad)
    bad.raise_if_any()
    return train, val


def list_records(root: Path, split: str, opts: Options) -> list[Record]:
    train_recs, val_recs = read_tiny(root)
    return holdout_splits(root, opts, train_recs, val_recs, "tinyimagenet", "the train/*_boxes.txt and val files")[split]


def class_names(root: Path, opts: Options) -> list[str]:
    wnids = read_wnids(root)
    words: dict[str, str] = {}
    if (root / "words.txt").is_file():
        for _, f in text_rows(root / "words.txt", sep="\t", maxsplit=1):
            if len(f) == 2:
                words[f[0]] = f[1]
    return [words.get(w, w) for w in wnids]


SPEC = DatasetSpec(
    name="tinyimagenet",
    read_records=list_records,
    read_classes=class_names,
    loc="box",
    Options=Options,
    description="Tiny-ImageNet (200 classes, 64×64): boxes; official val used as test",
    paper="",
)
