"""Format readers produce :class:`Record` lists; :class:`RecordDataset` turns records into
Samples (DESIGN.md) by decoding images / masks and applying joint transforms.

Every reader (wsolevaluation metadata, GlaS, CUB, ...) only has to list its records; image
decoding, mask conventions and error messages live here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from wsol.data.problems import LocatedError
from wsol.data.sample import IGNORE, Sample


@dataclass(frozen=True)
class MaskFile:
    """A binary mask image (non-zero = ROI), and optionally an image whose non-zero pixels
    are set to 255 (ignore)."""

    path: Path
    ignore: Path | None = None


@dataclass(frozen=True)
class MaskDecoder:
    """A mask that needs decoding (instance maps, trimaps, polygons, several OR-ed files):
    ``decode()`` returns the H×W uint8 mask (0 / 1 / 255)."""

    decode: Callable[[], np.ndarray]


@dataclass(frozen=True)
class EmptyMask:
    """An all-zero mask without any file ("no ROI", e.g. a normal histology patch)."""


EMPTY_MASK = EmptyMask()

#: where a record's mask comes from (None on the record: the sample has no mask)
MaskSource = MaskFile | MaskDecoder | EmptyMask


@dataclass
class Record:
    """One image of a split, as listed by a reader.

    ``mask``: where the localisation mask comes from (:class:`MaskFile`,
    :class:`MaskDecoder` or :data:`EMPTY_MASK`), None when the image has none. ``boxes``:
    N×4 (x1, y1, x2, y2) in the original image's pixels. ``size``: (width, height) as
    declared by the metadata. ``source``: "file:line" for error messages.
    """

    image_id: str
    image_path: Path
    label: int
    mask: MaskSource | None = None
    boxes: np.ndarray | None = None
    size: tuple[int, int] | None = None  # (width, height) as declared by the metadata
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def has_mask(self) -> bool:
        return self.mask is not None

    def files(self) -> list[Path]:
        """The image and mask files the record names (decoded masks name none)."""
        m = self.mask
        return [self.image_path] + ([m.path] + ([m.ignore] if m.ignore is not None else [])
                                    if isinstance(m, MaskFile) else [])


def _where(rec: Record) -> str:
    return f" (listed at {rec.source})" if rec.source else ""


def load_image(path: Path, rec: Record | None = None) -> np.ndarray:
    """Decode an RGB image as H×W×3 uint8, with a precise error on missing/corrupt files."""
    where = _where(rec) if rec else ""
    if not path.is_file():
        raise LocatedError(path, f"image file not found{where}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise LocatedError(path, f"cannot decode image ({e}){where}; re-download or remove it from the split") from None


def load_binary(path: Path, rec: Record | None = None) -> np.ndarray:
    """Decode a mask image as H×W bool (non-zero = True); colour masks use any channel."""
    where = _where(rec) if rec else ""
    if not path.is_file():
        raise LocatedError(path, f"mask file not found{where}")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise LocatedError(path, f"cannot decode mask ({e}){where}") from None
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > 0


def load_mask(rec: Record, shape: tuple[int, int]) -> np.ndarray | None:
    """The record's mask as H×W uint8 (0/1/255) checked against the image ``shape`` (H, W)."""
    src = rec.mask
    if src is None:
        return None
    if isinstance(src, EmptyMask):
        return np.zeros(shape, np.uint8)
    if isinstance(src, MaskDecoder):
        mask, what = np.asarray(src.decode(), dtype=np.uint8), "mask"
    else:
        mask, what = load_binary(src.path, rec).astype(np.uint8), str(src.path)
    if mask.shape != shape:
        raise LocatedError(what, f"mask is {mask.shape[1]}×{mask.shape[0]} (W×H) but image {rec.image_path} is "
                                 f"{shape[1]}×{shape[0]}{_where(rec)}; masks must have the image's size")
    if isinstance(src, MaskFile) and src.ignore is not None:
        ign = load_binary(src.ignore, rec)
        if ign.shape != shape:
            raise LocatedError(src.ignore, f"ignore mask is {ign.shape[1]}×{ign.shape[0]} but image is "
                                           f"{shape[1]}×{shape[0]}{_where(rec)}")
        mask = mask.copy()
        mask[ign] = IGNORE
    return mask


def check_boxes(rec: Record, width: int, height: int) -> None:
    if rec.boxes is None:
        return
    b = np.asarray(rec.boxes, dtype=np.float64).reshape(-1, 4)
    bad = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > width) | (b[:, 3] > height) | (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
    if bad.any():
        i = int(np.argmax(bad))
        raise LocatedError(
            rec.image_id, f"box {b[i].tolist()} is outside the {width}×{height} image or inverted{_where(rec)}; "
            "expected 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height"
        )


def load_sample(rec: Record) -> Sample:
    """Decode one record into an untransformed Sample (image float 3×H×W in [0, 1])."""
    img = load_image(rec.image_path, rec)
    h, w = img.shape[:2]
    if rec.size is not None and tuple(rec.size) != (w, h):
        raise LocatedError(
            rec.image_path, f"image is {w}×{h} but the metadata says {rec.size[0]}×{rec.size[1]}{_where(rec)}"
        )
    sample: Sample = {
        "image": torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0),
        "label": int(rec.label),
        "image_id": rec.image_id,
    }
    mask = load_mask(rec, (h, w))
    if mask is not None:
        sample["mask"] = torch.from_numpy(np.ascontiguousarray(mask))
    if rec.boxes is not None:
        check_boxes(rec, w, h)
        sample["boxes"] = torch.as_tensor(np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4))
    return sample


class RecordDataset(Dataset):
    """Samples from records, with an optional joint transform ``Sample -> Sample``.

    ``keep_original``: also return the labels at the image's original resolution —
    ``orig_size`` (H, W), ``orig_mask`` and ``orig_boxes`` (None when absent) — for
    evaluation at each image's own size (``wsol evaluate --eval-size original``)."""

    def __init__(self, records: list[Record], transform: Callable[[Sample], Sample] | None = None,
                 class_names: list[str] | None = None, keep_original: bool = False):
        self.records = list(records)
        self.transform = transform
        self.class_names = class_names
        self.keep_original = keep_original

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        s = load_sample(self.records[i])
        out = self.transform(cast(Sample, dict(s))) if self.transform is not None else s
        if self.keep_original:
            out["orig_size"] = cast(tuple[int, int], tuple(s["image"].shape[-2:]))
            out["orig_mask"] = s.get("mask")
            out["orig_boxes"] = s.get("boxes")
        return out
