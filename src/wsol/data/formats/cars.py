"""Stanford Cars (Krause et al., 2013) in its devkit layout::

    devkit/cars_meta.mat                  ``class_names``: 196 names
    devkit/cars_train_annos.mat           ``annotations``: struct array with fields
                                          bbox_x1, bbox_y1, bbox_x2, bbox_y2, class (1..196), fname
    cars_test_annos_withlabels.mat        same, for the test images (root/ or devkit/)
    cars_train/00001.jpg ...  cars_test/00001.jpg ...

The .mat files are also looked up directly in ``root``. Boxes are used as the devkit gives
them (x1, y1, x2, y2 in pixels). Image ids are ``cars_train/<fname>`` / ``cars_test/<fname>``
(the two folders reuse file names).

Splits from ``options.seed``, written to ``<split_dir>/cars-val<f>-px<n>_seed<k>/``: the
official train part split (stratified) into ``train`` / ``valcl`` (``val_fraction``, 0.2),
``valpx`` = ``valpx_per_class`` per class from ``valcl``, ``test`` = the official test part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsol.data.formats._util import HoldoutOptions, check_unique, holdout_splits, load_mat, require_dir, safe_join
from wsol.data.problems import Collector, LocatedError
from wsol.data.records import Record
from wsol.data.registry import DatasetSpec

FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
Options = HoldoutOptions
FIX = "restore it from the Stanford Cars devkit (car_devkit.tgz, cars_test_annos_withlabels.mat)"


def _find(root: Path, name: str) -> Path:
    for cand in (root / name, root / "devkit" / name, root / "car_devkit" / "devkit" / name):
        if cand.is_file():
            return cand
    raise LocatedError(root / 'devkit' / name, f"Stanford Cars file not found (also looked in {root}); {FIX}")


def read_class_names(root: Path) -> list[str]:
    path = _find(Path(root), "cars_meta.mat")
    names = np.atleast_1d(load_mat(path, ("class_names",), FIX)["class_names"])
    return [str(n).strip() for n in names]


def read_annotations(root: Path, mat_name: str, folder: str, n_classes: int, bad: Collector) -> list[Record]:
    path = _find(root, mat_name)
    ann = np.atleast_1d(load_mat(path, ("annotations",), FIX)["annotations"])
    missing = [f for f in FIELDS if ann.dtype.names is None or f not in ann.dtype.names]
    if missing:
        raise LocatedError(path, f"annotations lack field(s) {', '.join(missing)}; expected {', '.join(FIELDS)} "
                                 f"(the test file must be cars_test_annos_withlabels.mat); {FIX}")
    images = require_dir(root / folder, "Stanford Cars image folder", FIX)
    out: list[Record] = []
    for j, a in enumerate(ann, start=1):
        where = f"{path}:annotations[{j}]"
        try:
            box = [float(a[f]) for f in FIELDS[:4]]
            cls = int(a["class"])
        except (TypeError, ValueError):
            bad.add(where, f"bbox_x1..bbox_y2 and class must be numbers, found "
                           f"{[a[f] for f in FIELDS[:5]]}; {FIX}")
            continue
        if not 1 <= cls <= n_classes:
            bad.add(where, f"class {cls}; expected 1..{n_classes} (cars_meta.mat lists {n_classes} classes)")
            continue
        fname = str(a["fname"]).strip()
        try:
            image_path = safe_join(images, fname, where)
        except LocatedError as e:
            bad.add_error(e)
            continue
        out.append(Record(image_id=f"{folder}/{fname}", image_path=image_path, label=cls - 1,
                          boxes=np.array([box], dtype=np.float64), source=where))
    return out


def read_cars(root: Path) -> tuple[list[Record], list[Record]]:
    root = Path(root)
    n = len(read_class_names(root))
    bad = Collector()
    train = read_annotations(root, "cars_train_annos.mat", "cars_train", n, bad)
    test = read_annotations(root, "cars_test_annos_withlabels.mat", "cars_test", n, bad)
    check_unique(train + test, bad)
    bad.raise_if_any()
    return train, test


def list_records(root: Path, split: str, opts: Options) -> list[Record]:
    train_recs, test_recs = read_cars(root)
    return holdout_splits(root, opts, train_recs, test_recs, "cars", "the devkit annotation files")[split]


def class_names(root: Path, opts: Options) -> list[str]:
    return read_class_names(root)


SPEC = DatasetSpec(
    name="cars",
    read_records=list_records,
    read_classes=class_names,
    loc="box",
    Options=Options,
    description="Stanford Cars (devkit layout): 196 classes, one box per image",
    paper="",
)
