"""A plain class-per-folder dataset, for users' own data::

    root/<class>/<image>                 classes = sub-folder names, sorted (label = index)
    root/masks/<class>/<image stem>.png  (optional) binary mask, non-zero = ROI; images
                                         without one simply have no mask
    root/splits/{train,valcl,valpx,test}.txt   (optional) user-given splits: one image path
                                         relative to root per line (e.g. "cat/001.jpg")

Image ids are paths relative to ``root``. Images may sit in nested folders below their class
folder (the mask mirrors the same relative path). Without user-given split files the splits
are made from ``options.seed`` (stratified by class): ``test_fraction`` (0.2) of each class
is ``test``, ``val_fraction`` (0.2) of the rest is ``valcl``, ``valpx`` =
``valpx_per_class`` (3) images per class from ``valcl`` among those with a mask; written to
``<split_dir>/folder-test<f>-val<f>-px<n>_seed<k>/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from wsol.data.formats._util import (
    HoldoutOptions,
    pick_per_class,
    read_split_files,
    require_dir,
    split_folder,
    stored_splits,
    stratified_holdout,
)
from wsol.data.problems import LocatedError
from wsol.data.records import MaskFile, Record
from wsol.data.registry import SPLITS, DatasetSpec
from wsol.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
RESERVED = {"masks", "splits"}


class Options(HoldoutOptions):
    """Used when root/splits/ holds no user-given split files."""

    test_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of each class held out as test")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of the rest held out as valcl")
    valpx_per_class: int = Field(3, ge=0, description="images per class in valpx, taken from valcl among those "
                                                      "with a mask")


def read_classes(root: Path) -> list[str]:
    root = require_dir(Path(root), "dataset folder", "point data.root at the folder holding one sub-folder per class")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in RESERVED
                     and not p.name.startswith("."))
    if not classes:
        raise LocatedError(root, "no class sub-folder found; expected root/<class>/<image> (e.g. root/cat/001.jpg)")
    return classes


def read_folder(root: Path) -> dict[str, Record]:
    root = Path(root)
    records: dict[str, Record] = {}
    for label, cls in enumerate(read_classes(root)):
        files = sorted(p for p in (root / cls).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        for p in files:
            rel = p.relative_to(root)
            mask = (root / "masks" / rel).with_suffix(".png")
            records[rel.as_posix()] = Record(image_id=rel.as_posix(), image_path=p, label=label,
                                             mask=MaskFile(mask) if mask.is_file() else None, source=str(p))
    if not records:
        raise LocatedError(root, f"the class folders hold no image ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                                 "expected root/<class>/<image>")
    return records


def list_records(root: Path, split: str, opts: Options) -> list[Record]:
    records = read_folder(root)
    user = {s: root / "splits" / f"{s}.txt" for s in SPLITS}
    if any(f.is_file() for f in user.values()):
        missing = [str(f) for f in user.values() if not f.is_file()]
        if missing:
            raise LocatedError(
                ', '.join(missing), f"split file(s) missing; user-given splits need all of "
                f"{', '.join(s + '.txt' for s in SPLITS)} in {root / 'splits'} (a file may be empty), "
                "or remove them to get seeded splits"
            )
        if opts.model_fields_set:  # every option shapes the seeded splits only
            raise ConfigError(f"data.options: {', '.join(sorted(opts.model_fields_set))} not applied: {root / 'splits'} "
                              "holds user-given split files, which are used as they are; remove the option(s) or "
                              "the split files")
        splits = read_split_files(user, set(records), f"the class folders of {root}",
                                  "expected a path relative to the dataset folder, e.g. 'cat/001.jpg'")
    else:
        def compute() -> dict[str, list[str]]:
            rng = np.random.default_rng(opts.seed)
            ids = sorted(records)
            rest, test = stratified_holdout(ids, [records[i].label for i in ids], float(opts.test_fraction), rng)
            train, valcl = stratified_holdout(rest, [records[i].label for i in rest], float(opts.val_fraction), rng)
            valpx = pick_per_class(valcl, [records[i].label for i in valcl], opts.valpx_per_class, rng,
                                   eligible=lambda i: records[i].has_mask)
            return {"train": train, "valcl": valcl, "valpx": valpx, "test": test}

        tag = f"folder-test{float(opts.test_fraction):g}-val{float(opts.val_fraction):g}-px{opts.valpx_per_class}"
        splits = stored_splits(split_folder(root, opts, tag), set(records), compute, f"the class folders of {root}")
    return [records[i] for i in splits[split]]


def class_names(root: Path, opts: Options) -> list[str]:
    return read_classes(root)


SPEC = DatasetSpec(
    name="folder",
    read_records=list_records,
    read_classes=class_names,
    loc="mask",
    Options=Options,
    description="root/<class>/<image> with an optional root/masks/<class>/<stem>.png mirror (your own data)",
    paper="",
)
