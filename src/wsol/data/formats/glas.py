"""GlaS (Gland Segmentation in Colon Histology contest, Warwick 2015) in its published layout.

``root`` is the contest folder ("Warwick QU Dataset (Released 2016_07_08)", or its parent
when it is the only sub-folder holding a ``Grade.csv``)::

    Grade.csv                 name, Patient ID, grade (GlaS), ...  (values " benign"/" malignant")
    train_1.bmp  train_1_anno.bmp  ...    85 training images + instance maps
    testA_1.bmp  testA_1_anno.bmp  ...    60 + 20 test images (testA_*, testB_*)

The instance map (``*_anno.bmp``, 0 = background, k = gland k) becomes the ROI mask (glands
= 1) for both classes (benign / malignant).

Splits (``options.split``), from ``options.seed`` and written to
``<split_dir>/glas-<protocol>-...-px<n>_seed<k>/<split>.txt`` on first use:

- ``survey`` (wsol-histology-survey §3.3.1): the contest's 85 training images split,
  stratified by grade, into 67 ``train`` / 18 ``valcl``; ``test`` = testA + testB (80);
  ``valpx`` = ``valpx_per_class`` (3) images per class taken from ``valcl``.
- ``minmax`` (min-max-entropy §4): the contest's training part is split 80/20 into
  effective ``train`` / ``valcl`` (stratified, ``val_fraction``); ``test`` = the 80 test images.
  The paper counts 84 training images (the contest ships 85); all 85 are used here.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from wsol.data.formats._util import (
    HoldoutOptions,
    pick_per_class,
    require_file,
    safe_join,
    split_folder,
    stored_splits,
    stratified_holdout,
)
from wsol.data.problems import Collector, LocatedError
from wsol.data.records import MaskFile, Record
from wsol.data.registry import DatasetSpec

CLASSES = ["benign", "malignant"]
# survey §3.3.1: 67 train / 18 validation out of the contest's 85 training images
SURVEY_VAL_FRACTION = 18 / 85
PROTOCOLS = ("survey", "minmax")


class Options(HoldoutOptions):
    split: Literal["survey", "minmax"] = Field("survey", description="survey: 67 train / 18 valcl (survey §3.3.1); "
                                                                     "minmax: val_fraction of the training images "
                                                                     "(min-max-entropy §4)")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of the contest's training images held "
                                                                 "out as valcl (split=minmax only)")
    valpx_per_class: int = Field(3, ge=0, description="pixel-labelled images per class in valpx, taken from valcl")

    @field_validator("split", mode="before")
    @classmethod
    def _known_split(cls, v: object) -> object:
        if v not in PROTOCOLS:
            raise PydanticCustomError("glas_split", "unknown GlaS split '{split}'; valid: survey, minmax", {"split": v})
        return v

    @model_validator(mode="after")
    def _val_fraction_applies(self) -> Options:
        if self.split == "survey" and "val_fraction" in self.model_fields_set:
            raise PydanticCustomError("glas_unapplied", "val_fraction is not applied: it applies to split=minmax only "
                                                        "(the survey split holds out 18 of the 85 training images); "
                                                        "remove it or set split=minmax", {})
        return self


def find_root(root: Path) -> Path:
    root = Path(root)
    if (root / "Grade.csv").is_file():
        return root
    found = sorted(root.glob("*/Grade.csv")) if root.is_dir() else []
    if len(found) == 1:
        return found[0].parent
    raise LocatedError(
        root / 'Grade.csv', "GlaS grade file not found; point data.root at the contest folder that holds "
        "Grade.csv and the train_*/testA_*/testB_* .bmp files (e.g. 'Warwick QU Dataset (Released 2016_07_08)')"
    )


def _norm(s: str) -> str:
    return " ".join(s.strip().lower().split())


def read_grades(root: Path) -> list[tuple[str, int, str]]:
    """(name, label, "Grade.csv:line") per row; every malformed row is reported at once."""
    path = require_file(root / "Grade.csv", "GlaS grade file", "restore Grade.csv from the contest archive")
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    if not rows:
        raise LocatedError(f"{path}:1", "empty file; expected a header 'name, Patient ID, grade (GlaS), ...'")
    header = [_norm(h) for h in rows[0]]
    name_col = header.index("name") if "name" in header else None
    grade_cols = [i for i, h in enumerate(header) if h.startswith("grade")]
    glas_cols = [i for i in grade_cols if "glas" in header[i]]
    grade_col = next(iter(glas_cols or grade_cols), None)  # the first GlaS grade column, else any grade column
    if name_col is None or grade_col is None:
        missing = [c for c, i in (("name", name_col), ("grade (GlaS)", grade_col)) if i is None]
        raise LocatedError(
            f"{path}:1", f"missing column(s) {', '.join(missing)} in header {rows[0]}; expected "
            "'name, Patient ID, grade (GlaS), ...' as in the contest's Grade.csv"
        )
    bad = Collector()
    out: list[tuple[str, int, str]] = []
    seen: dict[str, int] = {}
    for ln, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        where = f"{path}:{ln}"
        if len(row) <= max(name_col, grade_col):
            bad.add(where, f"{len(row)} column(s), expected at least {max(name_col, grade_col) + 1} "
                           f"(name, Patient ID, grade); fix the line")
            continue
        name, grade = row[name_col].strip(), _norm(row[grade_col])
        if grade not in CLASSES:
            bad.add(where, f"grade {row[grade_col]!r} for {name!r}; expected 'benign' or 'malignant'")
            continue
        try:
            safe_join(root, name + ".bmp", where)
        except LocatedError as e:
            bad.add_error(e)
            continue
        if not (name.startswith("train") or name.startswith("test")):
            bad.add(where, f"image name {name!r}; expected train_<n>, testA_<n> or testB_<n>")
            continue
        if name in seen:
            bad.add(where, f"image {name!r} already listed at line {seen[name]}; remove the duplicate")
            continue
        seen[name] = ln
        out.append((name, CLASSES.index(grade), where))
    bad.raise_if_any()
    return out


def _compute_splits(rows: list[tuple[str, int, str]], opts: Options) -> dict[str, list[str]]:
    rng = np.random.default_rng(opts.seed)
    train_rows = [(n, lab) for n, lab, _ in rows if n.startswith("train")]
    frac = SURVEY_VAL_FRACTION if opts.split == "survey" else float(opts.val_fraction)
    train, valcl = stratified_holdout([n for n, _ in train_rows], [lab for _, lab in train_rows], frac, rng)
    label = {n: lab for n, lab, _ in rows}
    valpx = pick_per_class(valcl, [label[n] for n in valcl], opts.valpx_per_class, rng)
    test = sorted(n for n, _, _ in rows if n.startswith("test"))
    return {"train": train, "valcl": valcl, "valpx": valpx, "test": test}


def list_records(root: Path, split: str, opts: Options) -> list[Record]:
    root = find_root(root)
    rows = read_grades(root)
    by_name = {n: (lab, where) for n, lab, where in rows}
    tag = f"glas-survey-px{opts.valpx_per_class}" if opts.split == "survey" else \
        f"glas-minmax-val{float(opts.val_fraction):g}-px{opts.valpx_per_class}"
    folder = split_folder(root, opts, tag)
    splits = stored_splits(folder, set(by_name), lambda: _compute_splits(rows, opts), str(root / "Grade.csv"))
    records = []
    for name in splits[split]:
        lab, where = by_name[name]
        records.append(Record(
            image_id=name,
            image_path=root / f"{name}.bmp",
            label=lab,
            # instance map (0 = background, k = gland k): every non-zero id is a gland (ROI)
            mask=MaskFile(root / f"{name}_anno.bmp", kind="instances"),
            source=where,
        ))
    return records


def class_names(root: Path, opts: Options) -> list[str]:
    return list(CLASSES)


SPEC = DatasetSpec(
    name="glas",
    read_records=list_records,
    read_classes=class_names,
    loc="mask",
    Options=Options,
    description="GlaS colon histology (benign/malignant), Warwick contest layout; glands are the ROI",
    paper="wsol-histology-survey §3.3.1; min-max-entropy-recursive-erasing §4",
)
