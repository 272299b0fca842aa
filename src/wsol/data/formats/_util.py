"""Shared helpers of the on-disk format readers (glas, cub, flowers, cars, tinyimagenet,
folder): the options of seeded splits, path checks, text tables, and seeded splits written
to split files.

Split files: ``<split_dir>/<protocol>_seed<k>/<split>.txt``, one image id per line, written
atomically on first use and read back afterwards, so a split is stable and inspectable.
``split_dir`` defaults to ``<root>/splits`` (option ``split_dir`` overrides it, e.g. when the
dataset folder is read-only).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydantic import Field

from wsol.data.options import ReaderOptions
from wsol.data.problems import Collector, LocatedError
from wsol.data.records import MaskDecoder, Record, gray_levels, open_image
from wsol.data.registry import SPLITS
from wsol.fileio import atomic_write_text

log = logging.getLogger(__name__)


class SplitOptions(ReaderOptions):
    """Options of a reader whose splits are drawn from a seed and stored in split files."""

    seed: int = Field(0, description="seed of the split (split files are stored per seed)")
    valpx_per_class: int = Field(5, ge=0, description="pixel/box-labelled images per class in valpx, taken from "
                                                      "valcl")
    split_dir: str | None = Field(None, description="folder of the split files (default <root>/splits; set it "
                                                    "when the dataset folder is read-only)")


class HoldoutOptions(SplitOptions):
    """:class:`SplitOptions` of a set whose official train part is split into train / valcl."""

    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fraction of the official train part held out "
                                                                 "as valcl (stratified by class)")


def require_file(path: Path, what: str, fix: str) -> Path:
    if not path.is_file():
        raise LocatedError(path, f"{what} not found; {fix}")
    return path


def require_dir(path: Path, what: str, fix: str) -> Path:
    if not path.is_dir():
        raise LocatedError(path, f"{what} not found; {fix}")
    return path


def safe_join(base: Path, rel: str, where: str) -> Path:
    """``base / rel`` for a relative path that stays inside ``base`` (no absolute path, no
    ``..``); ``where`` ("file:line") goes into the error message."""
    rel = rel.strip().replace("\\", "/")
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or (len(rel) > 1 and rel[1] == ":"):
        raise LocatedError(
            where, f"path {rel!r} escapes the dataset folder {base}; expected a relative path inside it "
            "(no leading '/', no '..'); fix the line"
        )
    return base.joinpath(*p.parts)


def text_rows(path: Path, sep: str | None = None, maxsplit: int = -1) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty, non-comment line (split on ``sep``,
    whitespace by default, at most ``maxsplit`` times)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise LocatedError(path, f"not a UTF-8 text file ({e}); re-download it") from None
    for i, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        yield i, [f.strip() for f in s.split(sep, maxsplit)]


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


# --------------------------------------------------------------------------- seeded splits


def stratified_holdout(ids: list[str], labels: list[int], fraction: float,
                       rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Split ``ids`` into (kept, held out): per class, ``round(fraction * n)`` ids are held out
    (at least 1 when fraction > 0 and the class has >= 2 images, never all of them)."""
    kept: list[str] = []
    held: list[str] = []
    for c in sorted(set(labels)):
        members = sorted(i for i, lab in zip(ids, labels) if lab == c)
        n = len(members)
        k = round_half_up(fraction * n) if fraction > 0 else 0
        if fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        elif n < 2:
            k = 0
        order = rng.permutation(n)
        held += [members[j] for j in order[:k]]
        kept += [members[j] for j in order[k:]]
    return sorted(kept), sorted(held)


def pick_per_class(ids: list[str], labels: list[int], k: int, rng: np.random.Generator,
                   eligible: Callable[[str], bool] | None = None) -> list[str]:
    """``k`` random ids per class (only ids for which ``eligible`` holds, e.g. those with a mask)."""
    picked: list[str] = []
    for c in sorted(set(labels)):
        members = sorted(i for i, lab in zip(ids, labels) if lab == c and (eligible is None or eligible(i)))
        if len(members) < k:
            log.warning("class %d has only %d eligible image(s) for valpx (%d wanted)", c, len(members), k)
        order = rng.permutation(len(members))
        picked += [members[j] for j in order[:k]]
    return sorted(picked)


def gray_mask(path: Path, source: str, threshold: float) -> MaskDecoder:
    """A record's mask from the soft grey image at ``path`` (values 0..255, e.g. CUB's averaged
    annotators), ROI where value / 255 >= ``threshold`` — this reader's documented mapping
    (grey levels read like every mask: luminance of RGB, alpha ignored, 16-bit by its high
    byte; see :mod:`wsol.data.records`)."""

    def load() -> np.ndarray:
        rec = Record(image_id="", image_path=path, label=0, source=source)
        gray, sixteen = open_image(path, "mask", rec, lambda im: gray_levels(im, path),
                                   fix="restore it or remove the image from the split")
        if sixteen:
            gray = gray >> 8
        return (gray.astype(np.float32) >= threshold * 255.0).astype(np.uint8)

    return MaskDecoder(load, files=(path,))


def split_folder(root: Path, opts: SplitOptions, protocol: str) -> Path:
    base = Path(opts.split_dir) if opts.split_dir else root / "splits"
    return base / f"{protocol}_seed{opts.seed}"


def stored_splits(folder: Path, known: set[str], compute: Callable[[], dict[str, list[str]]],
                  known_from: str) -> dict[str, list[str]]:
    """The four splits (image ids) read from ``folder/<split>.txt``; when any file is missing,
    ``compute()`` makes them and they are written (atomically) first. Ids not in ``known`` (the
    dataset's images, listed in ``known_from``) are reported with file and line."""
    files = {s: folder / f"{s}.txt" for s in SPLITS}
    if not all(f.is_file() for f in files.values()):
        splits = compute()
        try:
            for s in SPLITS:
                atomic_write_text(files[s], "".join(f"{i}\n" for i in splits[s]))
        except OSError as e:
            raise LocatedError(
                folder, f"cannot write the split files ({e}); set data.options.split_dir to a writable folder"
            ) from None
        log.info("wrote split files to %s (%s)", folder,
                 ", ".join(f"{s}: {len(splits[s])}" for s in SPLITS))
        return splits
    return read_split_files(files, known, known_from,
                            f"the split files are out of date or edited by hand: delete the folder {folder} "
                            "to regenerate them")


def read_split_files(files: dict[str, Path], known: set[str], known_from: str, fix: str) -> dict[str, list[str]]:
    """Image ids per split from split files (one id per line); unknown and repeated ids are
    reported with file and line."""
    out: dict[str, list[str]] = {}
    bad = Collector()
    for s, f in files.items():
        ids: list[str] = []
        seen: dict[str, int] = {}
        for ln, fields in text_rows(f, sep="\t"):
            i = fields[0]
            if i not in known:
                bad.add(f"{f}:{ln}", f"unknown image id {i!r} (not listed in {known_from}); {fix}")
            elif i in seen:
                bad.add(f"{f}:{ln}", f"image id {i!r} repeats line {seen[i]}; remove the duplicate line")
            else:
                seen[i] = ln
                ids.append(i)
        out[s] = ids
    bad.raise_if_any()
    return out


def load_mat(path: Path, keys: tuple[str, ...], fix: str) -> dict[str, Any]:
    """Variables ``keys`` of a MATLAB file (scipy.io.loadmat, squeezed), with precise errors."""
    from scipy.io import loadmat

    require_file(path, "MATLAB file", fix)
    try:
        data = loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except Exception as e:  # scipy raises ValueError/TypeError/OSError/MatReadError on corrupt files
        raise LocatedError(path, f"cannot read the MATLAB file ({type(e).__name__}: {e}); {fix}") from None
    missing = [k for k in keys if k not in data]
    if missing:
        found = sorted(k for k in data if not k.startswith("__"))
        raise LocatedError(
            path, f"variable(s) {', '.join(missing)} missing (found: {', '.join(found) or 'none'}); {fix}"
        )
    return data


def class_names_file(path: Path, n: int) -> list[str] | None:
    """Optional user class-name file (one name per line, ``n`` lines)."""
    if not path.is_file():
        return None
    names = [f[0] for _, f in text_rows(path, sep="\n")]
    if len(names) != n:
        raise LocatedError(path, f"{len(names)} class name(s), expected {n} (one per line); fix or remove the file")
    return names


def check_unique(records: list, bad: Collector) -> None:
    """Report every image id listed twice (with both places) into ``bad``."""
    seen: dict[str, str] = {}
    for r in records:
        if r.image_id in seen:
            bad.add(r.source, f"image {r.image_id} already listed at {seen[r.image_id]}; remove the duplicate")
        seen[r.image_id] = r.source


def holdout_splits(root: Path, opts: HoldoutOptions, train_recs: list, test_recs: list, tag: str,
                   known_from: str) -> dict:
    """Splits of a dataset with an official train/test partition: ``valcl`` is a seeded
    stratified hold-out (``val_fraction``) of the official train part, ``valpx``
    ``valpx_per_class`` images per class of ``valcl``, ``test`` the official test part;
    stored in split files (see :func:`stored_splits`). Returns {split: [records]}."""
    by_id = {r.image_id: r for r in train_recs + test_recs}

    def compute() -> dict[str, list[str]]:
        rng = np.random.default_rng(opts.seed)
        train, valcl = stratified_holdout([r.image_id for r in train_recs], [r.label for r in train_recs],
                                          float(opts.val_fraction), rng)
        valpx = pick_per_class(valcl, [by_id[i].label for i in valcl], opts.valpx_per_class, rng)
        return {"train": train, "valcl": valcl, "valpx": valpx, "test": sorted(r.image_id for r in test_recs)}

    tag = f"{tag}-val{float(opts.val_fraction):g}-px{opts.valpx_per_class}"
    splits = stored_splits(split_folder(root, opts, tag), set(by_id), compute, known_from)
    return {k: [by_id[i] for i in ids] for k, ids in splits.items()}
