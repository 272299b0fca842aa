"""What every embedded set shares: its spec (a :class:`~wsol.data.registry.DatasetSpec`
that can also write the set), the reader of the written set (the wsolevaluation metadata
layout, :mod:`wsol.data.metadata`) and the last step of writing one (move the files into
place, metadata last).

Light: no OpenCV / SciPy here (the generator modules import them).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wsol.data.metadata import (
    MetaEntry,
    metadata_dir,
    read_class_names,
    read_metadata,
    write_class_names,
    write_metadata,
)
from wsol.data.options import NoOptions
from wsol.data.problems import LocatedError
from wsol.data.records import Record
from wsol.data.registry import SPLITS, DatasetSpec


@dataclass(eq=False)
class EmbeddedSpec(DatasetSpec):
    """A dataset wsol writes itself. ``generate(out, n=None, size=None, seed=0) -> out``
    writes it in the metadata layout; ``classes``: its class names (used before the set is
    written). It takes no reader option."""

    generate: Callable[..., Path] | None = None
    classes: tuple[str, ...] = ()

    def synthesize(self, out: str | Path, n: int | None = None, size: int | None = None, seed: int = 0) -> Path:
        assert self.generate is not None, f"embedded dataset {self.name!r} has no generator"
        return self.generate(out, n=n, size=size, seed=seed)


def _read_records(name: str, root: Path, split: str, opts: NoOptions) -> list[Record]:
    if not (metadata_dir(root, split) / "image_ids.txt").is_file():
        raise LocatedError(root, f"no {name} dataset here (metadata/{split}/image_ids.txt missing); "
                                 f"generate it with `wsol data synth {name} --out {root}`")
    return read_metadata(root, split)


def _read_classes(classes: tuple[str, ...], root: Path, opts: NoOptions) -> list[str]:
    return read_class_names(root) if (root / "metadata").is_dir() else list(classes)


def embedded_spec(name: str, classes: Sequence[str], loc: Literal["mask", "box"], generate: Callable[..., Path],
                  description: str, paper: str = "") -> EmbeddedSpec:
    """The spec of an embedded set, read back by the metadata reader."""
    return EmbeddedSpec(name=name, read_records=functools.partial(_read_records, name),
                        read_classes=functools.partial(_read_classes, tuple(classes)), loc=loc,
                        description=description, paper=paper, Options=NoOptions, generate=generate,
                        classes=tuple(classes))


def write_png(path: Path, arr: np.ndarray) -> None:
    """Write an H×W (grey) or H×W×3 (RGB) uint8 array as PNG."""
    import cv2

    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), arr):
        raise LocatedError(path, "cannot write image")


def install_set(tmp: Path, out: Path, entries: Mapping[str, list[MetaEntry]], classes: Sequence[str],
                info: dict[str, Any]) -> None:
    """Move ``tmp/images`` and ``tmp/masks`` to ``out`` (replacing the old ones), then write
    the metadata of every split, the class names and ``dataset.json`` — metadata last, so an
    interrupted run leaves no metadata behind."""
    for sub in ("images", "masks"):
        dst = out / sub
        if dst.exists():
            shutil.rmtree(dst)
        (tmp / sub).rename(dst)
    for split in SPLITS:
        write_metadata(out, split, entries[split])
    write_class_names(out, classes)
    info_tmp = tmp / "dataset.json"
    info_tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(info_tmp, out / "dataset.json")
