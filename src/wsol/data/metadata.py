"""The wsolevaluation metadata layout (Choe et al., 2020), read and written; class-name
files. Used by the ``wsoleval-*`` readers, the CAMELYON16-P512 reader, the embedded sets and
the WSI patch preparation.

Layout (one folder per split)::

    <root>/metadata/<split>/image_ids.txt      one image id per line; the id is the image
                                                path relative to the images root
    <root>/metadata/<split>/class_labels.txt   "id,label"   (label: int >= 0)
    <root>/metadata/<split>/image_sizes.txt    "id,w,h"     (optional)
    <root>/metadata/<split>/localization.txt   (optional) either boxes "id,x1,y1,x2,y2"
                                                (several rows per id = several boxes) or masks
                                                "id,mask_path,ignore_path" (OpenImages style;
                                                several rows per id are OR-ed; an empty ignore
                                                path means no ignore region)
    <root>/metadata/<split>/masks.txt           (optional, wsol extension) mask rows
                                                "id,mask_path,ignore_path" for a split whose
                                                localization.txt holds boxes (e.g. synthetic-cub)
    <root>/metadata/class_names.txt             (optional, written by wsol) one name per line

Image and mask paths are relative to ``images_root`` / ``masks_root`` (both default to
``<root>``) and may not escape them. Every malformed line gives a :class:`LocatedError`
naming the file, the line and what was expected. Records carry ``source="file:line"``.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from wsol.data.problems import LocatedError
from wsol.data.records import MaskDecoder, MaskFile, Record, combine_masks, image_size, label_errors, read_mask
from wsol.data.registry import SPLITS
from wsol.errors import DataError


def metadata_dir(root: Path, split: str, metadata_root: Path | None = None) -> Path:
    return Path(metadata_root if metadata_root is not None else Path(root) / "metadata") / split


def safe_relpath(rel: str, where: str, what: str) -> PurePosixPath:
    """A relative path that stays inside its root (no absolute path, no ``..``)."""
    p = PurePosixPath(rel.replace("\\", "/"))
    if not rel or p.is_absolute() or (len(rel) > 1 and rel[1] == ":") or ".." in p.parts:
        raise LocatedError(
            where, f"{what} {rel!r} must be a path relative to the dataset root without '..' "
            "(absolute paths and paths escaping the root are refused)"
        )
    return p


def _rows(path: Path, ncols: Sequence[int], expected: str) -> Iterable[tuple[str, list[str]]]:
    """Yield ("file:line", columns) for every non-blank line, checking the column count."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is accepted
    except UnicodeDecodeError as e:
        raise LocatedError(path, f"not a UTF-8 text file ({e})") from None
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cols = [c.strip() for c in line.split(",")]
        where = f"{path}:{i}"
        if len(cols) not in ncols:
            raise LocatedError(where, f"expected {expected}, found {len(cols)} column(s): {line.strip()!r}")
        yield where, cols


def _int(value: str, where: str, what: str, minimum: int) -> int:
    try:
        v = int(value)
    except ValueError:
        raise LocatedError(where, f"{what} must be an integer, found {value!r}") from None
    if v < minimum:
        raise LocatedError(where, f"{what} must be >= {minimum}, found {v}")
    return v


def _float(value: str, where: str, what: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise LocatedError(where, f"{what} must be a number, found {value!r}") from None
    if not np.isfinite(v):
        raise LocatedError(where, f"{what} must be finite, found {value!r}")
    return v


def _known(image_id: str, ids: dict[str, str], where: str, ids_file: Path) -> None:
    if image_id not in ids:
        raise LocatedError(where, f"image id {image_id!r} is not listed in {ids_file}; "
                                  "every id must appear in image_ids.txt")


def _wh(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}×{shape[0]}"


def _disagreeing_mask(paths: tuple[Path, ...], masks: list[np.ndarray], image_path: Path | None,
                      rec: Record) -> LocatedError:
    """The error for masks of one image with different sizes, at the mask that disagrees with
    the image (with the first mask when the image is unknown)."""
    source = rec.source
    if image_path is None:
        i = next(k for k, m in enumerate(masks) if m.shape != masks[0].shape)
        return LocatedError(paths[i], f"mask is {_wh(masks[i].shape)} but {paths[0]} is {_wh(masks[0].shape)} "
                                      f"(listed at {source}); masks of one image must agree")
    w, h = image_size(image_path, rec)
    bad = [k for k, m in enumerate(masks) if m.shape != (h, w)]
    good = [k for k, m in enumerate(masks) if m.shape == (h, w)]
    i = bad[0]
    if good:
        j = good[0]
        return LocatedError(paths[i], f"mask is {_wh(masks[i].shape)} but {paths[j]} is {_wh(masks[j].shape)}, as "
                                      f"is the image {image_path} (listed at {source}); masks must have the "
                                      "image's size")
    return LocatedError(paths[i], f"mask is {_wh(masks[i].shape)} (W×H) but image {image_path} is {w}×{h} "
                                  f"(listed at {source}); masks must have the image's size")


def or_masks(mask_paths: tuple[Path, ...], ignore_paths: tuple[Path, ...], source: str = "",
             image_path: Path | None = None) -> np.ndarray:
    """Union of several masks (1 = ROI) with the union of the ignore regions minus the ROI set
    to 255 (wsolevaluation ``evaluation.get_mask``). Masks of different sizes: the error names
    the mask that disagrees with the image (``image_path``) first."""
    rec = Record(image_id="", image_path=image_path or Path(), label=0, source=source)
    masks = [read_mask(p, rec) for p in mask_paths]
    if len({m.shape for m in masks}) > 1:
        raise _disagreeing_mask(mask_paths, masks, image_path, rec)
    ignores = []
    for p in ignore_paths:
        ign = read_mask(p, rec, what="ignore mask")
        if ign.shape != masks[0].shape:
            raise LocatedError(p, f"ignore mask is {ign.shape[1]}×{ign.shape[0]} but the mask is "
                                  f"{masks[0].shape[1]}×{masks[0].shape[0]} (listed at {source})")
        ignores.append(ign)
    return combine_masks(masks, ignores)


def _read_localization(path: Path, ids: dict[str, str], ids_file: Path, sizes: dict[str, tuple[int, int]],
                       mroot: Path, boxes: dict, masks: dict, ncols: tuple[int, ...]) -> str | None:
    """Parse box rows (5 columns) or mask rows (3 columns) into ``boxes`` / ``masks``; returns
    the kind found ("box", "mask" or None for an empty file)."""
    kind = None
    first_where = ""
    expected = ("'image_id,x1,y1,x2,y2' (boxes) or " if 5 in ncols else "") + \
        "'image_id,mask_path,ignore_path' (masks; ignore_path may be empty)"
    for where, cols in _rows(path, ncols, expected):
        image_id = cols[0]
        _known(image_id, ids, where, ids_file)
        row_kind = "box" if len(cols) == 5 else "mask"
        if kind is None:
            kind, first_where = row_kind, where
        elif row_kind != kind:
            raise LocatedError(where, f"a {row_kind} row in a file of {kind} rows (first at {first_where}); "
                                      "localization.txt holds either boxes (5 columns) or masks (3 columns)")
        if row_kind == "box":
            x1, y1, x2, y2 = (_float(v, where, n) for v, n in zip(cols[1:], ("x1", "y1", "x2", "y2")))
            if x2 < x1 or y2 < y1:
                raise LocatedError(where, f"box ({x1}, {y1}, {x2}, {y2}) is inverted; expected x1 <= x2 and y1 <= y2")
            if image_id in sizes:
                w, h = sizes[image_id]
                if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
                    raise LocatedError(where, f"box ({x1}, {y1}, {x2}, {y2}) is outside the {w}×{h} image; "
                                              "expected 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height")
            boxes.setdefault(image_id, []).append([x1, y1, x2, y2])
        else:
            mask_rel, ignore_rel = cols[1], cols[2]
            mpath = mroot / safe_relpath(mask_rel, where, "mask path")
            ipath = mroot / safe_relpath(ignore_rel, where, "ignore path") if ignore_rel else None
            masks.setdefault(image_id, []).append((mpath, ipath, where))
    return kind


def _require_rows(path: Path, ids: dict[str, str], have: dict) -> None:
    for image_id, where in ids.items():
        if image_id not in have:
            raise LocatedError(path, f"no row for image id {image_id!r} (listed at {where}); "
                                     "expected at least one row per image")

def read_metadata(root: str | Path, split: str, images_root: str | Path | None = None,
                  masks_root: str | Path | None = None, metadata_root: str | Path | None = None,
                  require_localization: bool = False) -> list[Record]:
    """Records of ``split`` from ``<metadata_root or root/metadata>/<split>/``, in the order of
    image_ids.txt. Images resolve under ``images_root`` (default ``root``), masks under
    ``masks_root`` (default ``root``)."""
    root = Path(root)
    mdir = metadata_dir(root, split, Path(metadata_root) if metadata_root is not None else None)
    iroot = Path(images_root) if images_root is not None else root
    mroot = Path(masks_root) if masks_root is not None else root
    ids_file = mdir / "image_ids.txt"
    labels_file = mdir / "class_labels.txt"
    for f in (ids_file, labels_file):
        if not f.is_file():
            raise LocatedError(f, f"file not found; a wsolevaluation metadata folder needs image_ids.txt and "
                                  f"class_labels.txt for split {split!r} (wsol data synth writes one)")

    ids: dict[str, str] = {}  # id -> "file:line"
    for where, (image_id,) in _rows(ids_file, (1,), "one image id per line (no comma)"):
        safe_relpath(image_id, where, "image id")
        if image_id in ids:
            raise LocatedError(where, f"duplicate image id {image_id!r} (first at {ids[image_id]})")
        ids[image_id] = where
    if not ids:
        raise LocatedError(ids_file, f"no image id listed; the split {split!r} is empty")

    labels: dict[str, int] = {}
    seen: dict[str, str] = {}  # id -> "file:line" of its row
    for where, (image_id, label) in _rows(labels_file, (2,), "2 columns 'image_id,label'"):
        _known(image_id, ids, where, ids_file)
        if image_id in seen:
            raise LocatedError(where, f"duplicate label for image id {image_id!r} (first at {seen[image_id]})")
        seen[image_id] = where
        labels[image_id] = _int(label, where, "class label", 0)
    label_rows = dict(seen)
    for image_id, where in ids.items():
        if image_id not in labels:
            raise LocatedError(labels_file, f"no label for image id {image_id!r} (listed at {where}); "
                                            "expected a row 'image_id,label' for every image")

    sizes: dict[str, tuple[int, int]] = {}
    sizes_file = mdir / "image_sizes.txt"
    if sizes_file.is_file():
        seen = {}
        for where, (image_id, w, h) in _rows(sizes_file, (3,), "3 columns 'image_id,width,height'"):
            _known(image_id, ids, where, ids_file)
            if image_id in seen:
                raise LocatedError(where, f"duplicate size for image id {image_id!r} (first at {seen[image_id]})")
            seen[image_id] = where
            sizes[image_id] = (_int(w, where, "width", 1), _int(h, where, "height", 1))

    boxes: dict[str, list[list[float]]] = {}
    masks: dict[str, list[tuple[Path, Path | None, str]]] = {}
    loc_file = mdir / "localization.txt"
    if loc_file.is_file():
        kind = _read_localization(loc_file, ids, ids_file, sizes, mroot, boxes, masks, (3, 5))
        if kind is not None:
            _require_rows(loc_file, ids, boxes if kind == "box" else masks)
    elif require_localization:
        raise LocatedError(loc_file, f"file not found; split {split!r} needs boxes or masks")
    masks_file = mdir / "masks.txt"
    if masks_file.is_file():
        if masks:
            raise LocatedError(masks_file, f"mask rows are already given in {loc_file}; "
                                           "masks.txt is only for splits whose localization.txt holds boxes")
        if _read_localization(masks_file, ids, ids_file, sizes, mroot, boxes, masks, (3,)) is not None:
            _require_rows(masks_file, ids, masks)

    records = []
    for image_id, where in ids.items():
        rec = Record(image_id=image_id, image_path=iroot / PurePosixPath(image_id), label=labels[image_id],
                     size=sizes.get(image_id), source=where, extra={"label_source": label_rows[image_id]})
        if image_id in boxes:
            rec.boxes = np.asarray(boxes[image_id], dtype=np.float32).reshape(-1, 4)
        rows = masks.get(image_id)
        if rows:
            mpaths = tuple(dict.fromkeys(r[0] for r in rows))
            ipaths = tuple(dict.fromkeys(r[1] for r in rows if r[1] is not None))
            rec.source = f"{where}, mask row {rows[0][2]}"
            if len(mpaths) == 1 and len(ipaths) <= 1:
                rec.mask = MaskFile(mpaths[0], ipaths[0] if ipaths else None)
            else:
                rec.mask = MaskDecoder(functools.partial(or_masks, mpaths, ipaths, rows[0][2], rec.image_path),
                                       files=mpaths + ipaths)
        records.append(rec)
    return records


def read_class_names(root: str | Path, metadata_root: str | Path | None = None,
                     num_classes: int | None = None) -> list[str]:
    """Names from ``metadata/class_names.txt`` when present, else "0", "1", ... up to the
    largest label of the train split (or ``num_classes``)."""
    mroot = Path(metadata_root) if metadata_root is not None else Path(root) / "metadata"
    f = mroot / "class_names.txt"
    if f.is_file():
        try:
            text = f.read_text(encoding="utf-8-sig")  # a byte-order mark is accepted
        except UnicodeDecodeError as e:
            raise LocatedError(f, f"not a UTF-8 text file ({e})") from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise LocatedError(f, "empty; expected one class name per line")
        return names
    if num_classes is None:
        splits = [d for d in sorted(mroot.iterdir()) if (d / "class_labels.txt").is_file()] if mroot.is_dir() else []
        if not splits:
            raise LocatedError(mroot, "no split folder with class_labels.txt; cannot infer the classes")
        top = -1
        for d in splits:
            for where, (_, label) in _rows(d / "class_labels.txt", (2,), "2 columns 'image_id,label'"):
                top = max(top, _int(label, where, "class label", 0))
        num_classes = top + 1
    return [str(i) for i in range(num_classes)]


@dataclass
class MetaEntry:
    """One image to list in a metadata split: ``image_id`` is the image path relative to the
    root; ``masks``: (mask_path, ignore_path or None) rows, relative to the root."""

    image_id: str
    label: int
    size: tuple[int, int] | None = None
    boxes: Sequence[Sequence[float]] | None = None
    masks: list[tuple[str, str | None]] = field(default_factory=list)


def _fmt(v: float) -> str:
    """Shortest exact text of a coordinate ("12" for 12.0, "12.25", "0.1")."""
    v = float(v)
    return str(int(v)) if v.is_integer() else repr(v)


def write_metadata(root: str | Path, split: str, entries: Sequence[MetaEntry],
                   metadata_root: str | Path | None = None) -> Path:
    """Write ``<root>/metadata/<split>/`` atomically (a temp folder renamed into place,
    replacing an existing split folder). Boxes go to localization.txt; masks go to
    localization.txt when no entry has boxes, else to masks.txt. Returns the split folder."""
    if not entries:
        raise DataError(f"write_metadata: split {split!r} has no entries")
    ids, labels, sizes, box_rows, mask_rows = [], [], [], [], []
    for e in entries:
        safe_relpath(e.image_id, f"write_metadata({split})", "image id")
        if "," in e.image_id:
            raise DataError(f"write_metadata: image id {e.image_id!r} contains a comma")
        ids.append(e.image_id)
        labels.append(f"{e.image_id},{int(e.label)}")
        if e.size is not None:
            sizes.append(f"{e.image_id},{int(e.size[0])},{int(e.size[1])}")
        for b in e.boxes if e.boxes is not None else []:
            box_rows.append(",".join([e.image_id, *(_fmt(float(v)) for v in b)]))
        for m, ign in e.masks:
            safe_relpath(m, f"write_metadata({split})", "mask path")
            if ign:
                safe_relpath(ign, f"write_metadata({split})", "ignore path")
            mask_rows.append(f"{e.image_id},{m},{ign or ''}")
    if len(set(ids)) != len(ids):
        raise DataError(f"write_metadata: duplicate image ids in split {split!r}")
    if sizes and len(sizes) != len(ids):
        raise DataError(f"write_metadata: split {split!r}: give a size for every entry or for none")

    final = metadata_dir(Path(root), split, Path(metadata_root) if metadata_root is not None else None)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=final.parent))
    try:
        (tmp / "image_ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
        (tmp / "class_labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        if sizes:
            (tmp / "image_sizes.txt").write_text("\n".join(sizes) + "\n", encoding="utf-8")
        # boxes go to localization.txt (masks then to masks.txt); masks alone to localization.txt
        loc, extra = (box_rows, mask_rows) if box_rows else (mask_rows, [])
        if loc:
            (tmp / "localization.txt").write_text("\n".join(loc) + "\n", encoding="utf-8")
        if extra:
            (tmp / "masks.txt").write_text("\n".join(extra) + "\n", encoding="utf-8")
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing ``dst`` (the old one is renamed aside first,
    so ``dst`` is never half-written)."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_class_names(root: str | Path, names: Sequence[str], metadata_root: str | Path | None = None) -> Path:
    mroot = Path(metadata_root) if metadata_root is not None else Path(root) / "metadata"
    mroot.mkdir(parents=True, exist_ok=True)
    f = mroot / "class_names.txt"
    tmp = f.with_name(f".class_names.txt.tmp-{os.getpid()}")
    tmp.write_text("\n".join(names) + "\n", encoding="utf-8")
    tmp.replace(f)
    return f


def check_labels(records: list[Record], class_names: list[str]) -> list[Record]:
    """Every label indexes ``class_names``; else the first problem (a LocatedError naming the
    class_labels.txt line), from :func:`wsol.data.records.label_errors`."""
    errors = label_errors(records, len(class_names), class_names=class_names)
    if errors:
        raise errors[0]
    return records


def has_metadata(root: str | Path) -> bool:
    """Whether every wsol split has an ``image_ids.txt`` under ``<root>/metadata``."""
    return all((Path(root) / "metadata" / s / "image_ids.txt").is_file() for s in SPLITS)
