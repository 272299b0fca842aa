"""CUB-200-2011 in its published layout, and its 5-class subset CUB5.

``root`` is the ``CUB_200_2011`` folder::

    images.txt              "<image id> <class dir>/<file>.jpg"  (relative to images/)
    image_class_labels.txt  "<image id> <class id 1..200>"
    train_test_split.txt    "<image id> <1 = train | 0 = test>"
    bounding_boxes.txt      "<image id> <x> <y> <width> <height>"  -> box (x, y, x + w, y + h)
    classes.txt             "<class id> <class name>"
    images/<class dir>/<file>.jpg
    segmentations/<class dir>/<file>.png   (optional, separate archive; also looked up next to
                                            root, or at ``options.segmentations``)

Segmentations are soft (averaged annotators, 0..255); the mask is value / 255 >= 0.5.
Image ids of the records are the paths of ``images.txt`` (as in wsolevaluation).

Splits from ``options.seed``, written to ``<split_dir>/<tag>_seed<k>/<split>.txt``: the
official train part split (stratified) into ``train`` / ``valcl`` with ``val_fraction``
(0.2: "80% for effective training, 20% for validation", min-max-entropy §4);
``valpx`` = ``valpx_per_class`` images per class from ``valcl``; ``test`` = the official test
part. ``cub5`` (min-max-entropy appendix B.1) keeps classes 019, 099, 108, 171 and 178
(labels 0..4 in that order); ``options.classes`` selects any other subset of class ids.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from pydantic import Field

from wsol.data.formats._util import (
    HoldoutOptions,
    gray_mask,
    pick_per_class,
    require_dir,
    require_file,
    safe_join,
    split_folder,
    stored_splits,
    stratified_holdout,
    text_rows,
)
from wsol.data.problems import Collector, LocatedError
from wsol.data.records import Record
from wsol.data.registry import DatasetSpec
from wsol.errors import ConfigError

CUB5_CLASSES = (19, 99, 108, 171, 178)  # min-max-entropy appendix B.1
FIX = "restore it from the CUB_200_2011 archive and point data.root at the CUB_200_2011 folder"


class Options(HoldoutOptions):
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of the official train part held out "
                                                                 "as valcl (min-max-entropy §4: 80/20)")
    classes: list[int] | None = Field(None, description="CUB class ids (1..200) to keep, labelled 0, 1, ... in "
                                                        "this order (default: all)")
    segmentations: str | None = Field(None, description="folder of the segmentation masks (default: "
                                                        "segmentations/ in or next to root)")


class Cub5Options(Options):
    classes: list[int] | None = Field(list(CUB5_CLASSES), description="CUB class ids to keep (CUB5: 019, 099, "
                                                                      "108, 171, 178, min-max-entropy appendix B.1)")


def read_classes(root: Path) -> dict[int, str]:
    path = require_file(Path(root) / "classes.txt", "CUB class list", FIX)
    bad = Collector()
    out: dict[int, str] = {}
    for ln, f in text_rows(path, maxsplit=1):
        where = f"{path}:{ln}"
        if len(f) != 2 or not f[0].isdigit():
            bad.add(where, f"expected '<class id> <class name>', found {' '.join(f)!r}")
        elif int(f[0]) in out:
            bad.add(where, f"class id {f[0]} listed twice; remove the duplicate")
        else:
            out[int(f[0])] = f[1]
    bad.raise_if_any()
    if not out:
        raise LocatedError(path, f"no class listed; expected '<class id> <class name>' lines; {FIX}")
    return out


def _selected(root: Path, opts: Options, all_classes: dict[int, str]) -> list[int]:
    if opts.classes is None:
        return sorted(all_classes)
    chosen = list(opts.classes)
    missing = [c for c in chosen if c not in all_classes]
    if missing or len(set(chosen)) != len(chosen) or not chosen:
        raise ConfigError(
            f"data.options.classes: {chosen} must be distinct class ids listed in {Path(root) / 'classes.txt'} "
            f"(1..{max(all_classes)}); not found: {missing}"
        )
    return chosen


def _id_table(path: Path, ncols: int, expected: str, bad: Collector) -> dict[str, tuple[list[str], str]]:
    """image id -> (remaining fields, "file:line")."""
    out: dict[str, tuple[list[str], str]] = {}
    for ln, f in text_rows(path, maxsplit=1 if ncols == 2 else -1):
        where = f"{path}:{ln}"
        if len(f) != ncols:
            bad.add(where, f"expected {expected}, found {len(f)} column(s): {' '.join(f)!r}")
        elif f[0] in out:
            bad.add(where, f"image id {f[0]} already listed at {out[f[0]][1]}; remove the duplicate")
        else:
            out[f[0]] = (f[1:], where)
    return out


def _segmentations_dir(root: Path, opts: Options) -> Path | None:
    if opts.segmentations:
        return require_dir(Path(opts.segmentations), "CUB segmentations folder",
                           "fix data.options.segmentations or remove it")
    for cand in (root / "segmentations", root.parent / "segmentations"):
        if cand.is_dir():
            return cand
    return None


def read_cub(root: Path, opts: Options) -> list[tuple[Record, bool]]:
    """Every image of the selected classes as (record, is_official_train); all line-level
    problems of the four metadata files are reported at once."""
    root = Path(root)
    names = read_classes(root)
    chosen = _selected(root, opts, names)
    label_of = {c: i for i, c in enumerate(chosen)}
    files = {f: require_file(root / f, f"CUB metadata file {f}", FIX) for f in
             ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")}
    images_dir = require_dir(root / "images", "CUB images folder", FIX)
    seg_dir = _segmentations_dir(root, opts)
    bad = Collector()
    images = _id_table(files["images.txt"], 2, "'<image id> <relative path>'", bad)
    labels = _id_table(files["image_class_labels.txt"], 2, "'<image id> <class id>'", bad)
    is_train = _id_table(files["train_test_split.txt"], 2, "'<image id> <1|0>'", bad)
    boxes = _id_table(files["bounding_boxes.txt"], 5, "'<image id> <x> <y> <width> <height>'", bad)
    out: list[tuple[Record, bool]] = []
    for iid, ((rel,), where) in images.items():
        if iid not in labels:
            bad.add(where, f"image id {iid} has no line in {files['image_class_labels.txt']}; add '{iid} <class id>'")
            continue
        (cls_s,), lwhere = labels[iid]
        if not cls_s.isdigit() or int(cls_s) not in names:
            bad.add(lwhere, f"class id {cls_s!r} is not listed in {root / 'classes.txt'} "
                            f"(expected 1..{max(names)}); fix the line")
            continue
        if int(cls_s) not in label_of:
            continue
        if iid not in is_train or is_train[iid][0][0] not in ("0", "1"):
            split_where = is_train[iid][1] if iid in is_train else files["train_test_split.txt"]
            bad.add(split_where, f"image id {iid} needs a line '{iid} <1 = train | 0 = test>' in train_test_split.txt")
            continue
        if iid not in boxes:
            bad.add(files['bounding_boxes.txt'], f"image id {iid} (from {where}) has no box; "
                                                 f"add '{iid} <x> <y> <width> <height>'")
            continue
        vals, bwhere = boxes[iid]
        try:
            x, y, w, h = (float(v) for v in vals)
        except ValueError:
            bad.add(bwhere, f"box values {vals} must be numbers '<x> <y> <width> <height>'")
            continue
        if w < 0 or h < 0 or x < 0 or y < 0:
            bad.add(bwhere, f"box {vals} has a negative value; expected x, y, width, height >= 0")
            continue
        try:
            path = safe_join(images_dir, rel, where)
        except LocatedError as e:
            bad.add_error(e)
            continue
        seg = None
        if seg_dir is not None:
            seg = gray_mask(safe_join(seg_dir, str(Path(rel).with_suffix(".png")), where), where, 0.5)
        rec = Record(image_id=rel, image_path=path, label=label_of[int(cls_s)], mask=seg,
                     boxes=np.array([[x, y, x + w, y + h]], dtype=np.float64),
                     source=f"{where}, box at {bwhere}", extra={"cub_id": iid})
        out.append((rec, is_train[iid][0][0] == "1"))
    bad.raise_if_any()
    return out


def _tag(name: str, opts: Options) -> str:
    tag = f"{name}-val{float(opts.val_fraction):g}-px{opts.valpx_per_class}"
    if opts.classes is not None:
        ids = "_".join(f"{int(c):03d}" for c in opts.classes)
        tag += "-c" + (ids if len(ids) <= 40 else hashlib.sha1(ids.encode()).hexdigest()[:10])
    return tag


def _lister(name: str):
    def list_records(root: Path, split: str, opts: Options) -> list[Record]:
        items = read_cub(root, opts)
        by_id = {r.image_id: r for r, _ in items}

        def compute() -> dict[str, list[str]]:
            rng = np.random.default_rng(opts.seed)
            tr = [r for r, t in items if t]
            train, valcl = stratified_holdout([r.image_id for r in tr], [r.label for r in tr],
                                              float(opts.val_fraction), rng)
            valpx = pick_per_class(valcl, [by_id[i].label for i in valcl], opts.valpx_per_class, rng)
            return {"train": train, "valcl": valcl, "valpx": valpx,
                    "test": sorted(r.image_id for r, t in items if not t)}

        folder = split_folder(root, opts, _tag(name, opts))
        splits = stored_splits(folder, set(by_id), compute, str(root / "images.txt"))
        return [by_id[i] for i in splits[split]]

    return list_records


def class_names(root: Path, opts: Options) -> list[str]:
    names = read_classes(root)
    return [names[c] for c in _selected(root, opts, names)]


SPEC = DatasetSpec(
    name="cub", read_records=_lister("cub"), read_classes=class_names, loc="box", Options=Options,
    description="CUB-200-2011 birds (official layout): boxes, and masks when segmentations/ is present",
    paper="min-max-entropy-recursive-erasing §4; f-cam; weight-map-wsol",
)
SPEC5 = DatasetSpec(
    name="cub5", read_records=_lister("cub5"), read_classes=class_names, loc="box", Options=Cub5Options,
    description="CUB5: CUB-200-2011 classes 019, 099, 108, 171, 178; effective train/val 80/20",
    paper="min-max-entropy-recursive-erasing appendix B.1",
)
