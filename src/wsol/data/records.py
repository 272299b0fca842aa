"""Format readers produce :class:`Record` lists; :class:`RecordDataset` turns records into
Samples (DESIGN.md) by decoding images / masks and applying joint transforms.

Every reader (wsolevaluation metadata, GlaS, CUB, ...) only has to list its records; image
decoding, mask conventions and error messages live here once.

Decoding rules (one place, used by training, evaluation and ``wsol data verify``):

- **images**: RGB, alpha dropped; 16-bit grey images (PIL modes ``I;16*`` / ``I``) are
  scaled by bit depth to 8 bits (v·255/65535, rounded), not clipped to white.
- **mask files** are read as grey levels the way wsolevaluation reads them (OpenCV
  ``IMREAD_GRAYSCALE``: luminance of RGB with libpng's weights 0.299 / 0.587 / 0.114 as
  OpenCV's PNG reader applies them, alpha ignored; 16-bit files reduced to 8 bits by their
  high byte). The grey levels must then be label values: ``{0, 255}`` (255 = ROI) or
  ``{0, 1, 255}`` with a 1 present (1 = ROI, 255 = ignore, the Sample contract). Anything
  else (e.g. JPEG artefacts 1-3 around a 0/255 mask, a colour that is not grey) is a
  DataError naming the file and the values found. 16-bit files holding only 0/1/255 keep
  those values. Readers with another convention say so: ``MaskFile(kind="instances")``
  (instance maps, e.g. GlaS: any non-zero id = ROI) or their own :class:`MaskDecoder`
  (CUB's soft masks thresholded at 0.5, Oxford-102's blue trimaps).
- **ignore files** (OpenImages layout): any non-zero pixel is the ignore *region*; the
  ignored pixels are that region minus the foreground, as in wsolevaluation's
  ``evaluation.get_mask`` ("ignore box region \\setminus the ground truth foreground").
- **decompression bombs**: PIL's DecompressionBombError / Warning becomes a DataError
  naming the file (the same message in training and in ``wsol data verify``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar, cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from wsol.data.problems import DataProblems, LocatedError
from wsol.data.sample import IGNORE, Sample

T = TypeVar("T")
MaskKind = Literal["binary", "instances"]


@dataclass(frozen=True)
class MaskFile:
    """A mask image and optionally an ignore image (its non-zero pixels minus the
    foreground are set to 255). ``kind``: "binary" (grey levels {0, 255} or {0, 1, 255},
    see the module doc) or "instances" (an instance map: 0 = background, any other id =
    ROI)."""

    path: Path
    ignore: Path | None = None
    kind: MaskKind = "binary"


@dataclass(frozen=True)
class MaskDecoder:
    """A mask that needs decoding (instance maps, trimaps, polygons, several OR-ed files):
    ``decode()`` returns the H×W uint8 mask (0 / 1 / 255). ``files``: the files it reads
    (checked by ``wsol data verify`` and named in size errors)."""

    decode: Callable[[], np.ndarray]
    files: tuple[Path, ...] = ()


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
        """The image and mask files the record names."""
        m = self.mask
        if isinstance(m, MaskFile):
            return [self.image_path, m.path] + ([m.ignore] if m.ignore is not None else [])
        if isinstance(m, MaskDecoder):
            return [self.image_path, *m.files]
        return [self.image_path]


def _where(rec: Record | None) -> str:
    return f" (listed at {rec.source})" if rec is not None and rec.source else ""


# ------------------------------------------------------------------------------ decoding


def bomb_error(path: Path, e: Exception, what: str = "image", rec: Record | None = None) -> LocatedError:
    """The DataError for PIL's DecompressionBombError / Warning on ``path`` (training, evaluation
    and ``wsol data verify`` give the same message)."""
    return LocatedError(path, f"{what} refused as a possible decompression bomb ({e}){_where(rec)}; a WSOL image "
                              "needs far fewer pixels: resize the file (or, if it is genuine, raise "
                              "PIL.Image.MAX_IMAGE_PIXELS before loading)")


def open_image(path: Path, what: str, rec: Record | None, read: Callable[[Image.Image], T], fix: str = "") -> T:
    """``read(image)`` on the opened file, with one precise DataError (naming ``path``) for a
    missing, undecodable or decompression-bomb file. ``what``: "image", "mask", ...; ``fix``:
    how to restore a missing file."""
    path = Path(path)
    where = _where(rec)
    if not path.is_file():
        raise LocatedError(path, f"{what} file not found{where}{'; ' + fix if fix else ''}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return read(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise bomb_error(path, e, what, rec) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise LocatedError(path, f"cannot decode {what} ({e}){where}; re-download it or remove it from the "
                                 "split") from None


_SIXTEEN = ("I;16", "I;16B", "I;16L", "I;16N")


def _sixteen_bit(im: Image.Image, path: Path, what: str) -> np.ndarray | None:
    """The raw values (int64 H×W) of a 16-bit grey image, None for other modes; PIL mode
    "I" (32-bit) is read as 16-bit data and refused beyond 0..65535."""
    if im.mode not in _SIXTEEN and im.mode != "I":
        return None
    a = np.asarray(im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise LocatedError(path, f"{what} holds 32-bit values {int(a.min())}..{int(a.max())}; expected 8- or 16-bit "
                                 "data: convert the file")
    return a


def image_rgb(im: Image.Image, path: Path = Path("image")) -> np.ndarray:
    """H×W×3 uint8 RGB of an opened image; 16-bit grey is scaled by bit depth (v·255/65535)."""
    a = _sixteen_bit(im, path, "image")
    if a is not None:
        g = ((a * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
        return np.repeat(g[..., None], 3, axis=2)
    return np.array(im.convert("RGB"))


# libpng's rgb_to_gray with OpenCV's weights (png_set_rgb_to_gray(png, 1, 0.299, 0.587) in
# OpenCV's PNG reader, i.e. what cv2.imread(path, IMREAD_GRAYSCALE) gives wsolevaluation):
# 15-bit fixed point, truncated.
_LUMA = (9797, 19234, 32768 - 9797 - 19234)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """H×W uint8 grey of an H×W×3 uint8 RGB array, as OpenCV's IMREAD_GRAYSCALE reads a PNG."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b) >> 15).astype(np.uint8)


def gray_levels(im: Image.Image, path: Path = Path("mask"), what: str = "mask",
                instances: bool = False) -> tuple[np.ndarray, bool]:
    """(H×W integer grey levels, is 16-bit) of an opened mask image, read like OpenCV's
    IMREAD_GRAYSCALE (luminance of RGB, alpha ignored). ``instances``: palette indices are
    kept as ids and a colour pixel counts by its largest channel (an instance map)."""
    a = _sixteen_bit(im, path, what)
    if a is not None:
        return a, True
    mode = im.mode
    if mode == "F":
        raise LocatedError(path, f"{what} is a floating-point image; save it as an 8-bit (or 16-bit) image")
    if mode == "1":
        return np.asarray(im, dtype=np.uint8) * np.uint8(255), False
    if mode == "L":
        return np.asarray(im), False
    if mode in ("LA", "La"):
        return np.asarray(im)[..., 0], False
    if instances and mode in ("P", "PA"):
        return np.asarray(im.convert("P") if mode == "PA" else im), False
    rgb = np.asarray(im.convert("RGB"))
    return (rgb.max(axis=2) if instances else luminance(rgb)), False


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:12])
    return shown + (f", ... ({len(values)} distinct values)" if len(values) > 12 else "")


def label_values(gray: np.ndarray, sixteen: bool, path: Path, what: str = "mask", where: str = "") -> np.ndarray:
    """Grey levels -> H×W uint8 mask (0 / 1 / 255) by the rule of the module doc: {0, 255}
    (255 = ROI) or {0, 1, 255} (1 = ROI, 255 = ignore); anything else is a DataError."""
    values = np.unique(gray)
    if sixteen and not set(values.tolist()) <= {0, 1, 255}:
        gray = gray >> 8  # OpenCV reduces 16-bit files to 8 bits by their high byte
        values = np.unique(gray)
    vs = set(values.tolist())
    if vs <= {0, 255}:
        return (gray == 255).astype(np.uint8)
    if vs <= {0, 1, 255}:
        return gray.astype(np.uint8)
    odd = int(np.count_nonzero((gray != 0) & (gray != 1) & (gray != 255)))
    raise LocatedError(path, f"{what} holds grey levels {_values_text(values)} ({odd} pixel(s) neither 0, 1 nor 255)"
                             f"{where}; a mask must hold {{0, 255}} (255 = ROI) or {{0, 1, 255}} (1 = ROI, 255 = "
                             "ignore). JPEG compression or anti-aliasing adds such values: re-export the mask as "
                             "PNG with exactly these values (or threshold it yourself)")


def read_mask(path: Path, rec: Record | None = None, kind: MaskKind = "binary", what: str = "mask") -> np.ndarray:
    """Decode a mask file as H×W uint8 (0 / 1 / 255); see the module doc for the rules."""
    path = Path(path)
    if kind == "instances":
        gray, _ = open_image(path, what, rec, lambda im: gray_levels(im, path, what, instances=True))
        return (gray > 0).astype(np.uint8)
    gray, sixteen = open_image(path, what, rec, lambda im: gray_levels(im, path, what))
    return label_values(gray, sixteen, path, what, _where(rec))


def load_image(path: Path, rec: Record | None = None) -> np.ndarray:
    """Decode an RGB image as H×W×3 uint8, with a precise error on missing/corrupt files."""
    path = Path(path)
    return open_image(path, "image", rec, lambda im: image_rgb(im, path))


def image_size(path: Path, rec: Record | None = None) -> tuple[int, int]:
    """(width, height) from the file header (nothing decoded)."""
    return open_image(Path(path), "image", rec, lambda im: (int(im.size[0]), int(im.size[1])))


def combine_masks(masks: Sequence[np.ndarray], ignores: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Union of masks (0 / 1 / 255 each) with ignore regions (bool or non-zero = region):
    ROI where any mask is 1; ignore (255) where a mask says 255 or an ignore region covers the
    pixel, minus the ROI (wsolevaluation ``get_mask``: "ignore box region \\setminus the ground
    truth foreground" — a foreground pixel inside an ignore box still counts)."""
    fg = np.zeros(masks[0].shape, bool)
    ign = np.zeros(masks[0].shape, bool)
    for m in masks:
        fg |= m == 1
        ign |= m == IGNORE
    for g in ignores:
        ign |= np.asarray(g) != 0
    out = fg.astype(np.uint8)
    out[ign & ~fg] = IGNORE
    return out


def _size_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}×{shape[0]}"


def load_mask(rec: Record, shape: tuple[int, int]) -> np.ndarray | None:
    """The record's mask as H×W uint8 (0/1/255) checked against the image ``shape`` (H, W)."""
    src = rec.mask
    if src is None:
        return None
    if isinstance(src, EmptyMask):
        return np.zeros(shape, np.uint8)
    if isinstance(src, MaskDecoder):
        mask = np.asarray(src.decode(), dtype=np.uint8)
        what = ", ".join(str(f) for f in src.files) if src.files else "mask"
    else:
        mask, what = read_mask(src.path, rec, src.kind), str(src.path)
    if mask.shape != shape:
        raise LocatedError(what, f"mask is {_size_text(mask.shape)} (W×H) but image {rec.image_path} is "
                                 f"{_size_text(shape)}{_where(rec)}; masks must have the image's size")
    if isinstance(src, MaskFile) and src.ignore is not None:
        ign = read_mask(src.ignore, rec, what="ignore mask")
        if ign.shape != shape:
            raise LocatedError(src.ignore, f"ignore mask is {_size_text(ign.shape)} but image is "
                                           f"{_size_text(shape)}{_where(rec)}")
        mask = combine_masks([mask], [ign])
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


# -------------------------------------------------------------------------------- labels


def label_errors(records: Sequence[Record], num_classes: int, split: str = "",
                 class_names: Sequence[str] | None = None) -> list[LocatedError]:
    """One error per record whose label is outside ``[0, num_classes)``, at the line that
    gives the label (``extra["label_source"]``, else the record's ``source``)."""
    names = list(class_names or [])
    listed = f": {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}" if names else ""
    in_split = f" in split {split}" if split else ""
    out = []
    for rec in records:
        label = int(rec.label)
        if not 0 <= label < num_classes:
            where = rec.extra.get("label_source") or rec.source or rec.image_id
            out.append(LocatedError(where, f"class label {label} is out of range; expected 0..{num_classes - 1} "
                                           f"(label {label} of {rec.image_id!r}{in_split} is outside "
                                           f"0..{num_classes - 1}; {num_classes} classes{listed}); fix the label "
                                           "or the class list"))
    return out


def check_labels(records: Sequence[Record], num_classes: int, split: str = "",
                 class_names: Sequence[str] | None = None) -> None:
    """Raise a DataError (:class:`~wsol.data.problems.DataProblems`, each problem at its
    "file:line") when a label is outside ``[0, num_classes)``. The trainer calls it before
    the first step; ``wsol data verify`` reports the same problems."""
    errors = label_errors(records, num_classes, split, class_names)
    if errors:
        raise DataProblems(errors)


# -------------------------------------------------------------------------------- samples


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
        return self.apply(load_sample(self.records[i]))

    def apply(self, s: Sample, generator: torch.Generator | None = None) -> Sample:
        """The transform of a decoded sample (``generator``: the sample's own random stream,
        passed to transforms that take one, e.g. ``transforms.Compose``), plus the original
        image size, mask and boxes when ``keep_original``."""
        t = self.transform
        if t is None:
            out = s
        elif generator is not None:
            out = cast(Callable[[Sample, torch.Generator], Sample], t)(cast(Sample, dict(s)), generator)
        else:
            out = t(cast(Sample, dict(s)))
        if self.keep_original:
            out["orig_size"] = cast(tuple[int, int], tuple(s["image"].shape[-2:]))
            out["orig_mask"] = s.get("mask")
            out["orig_boxes"] = s.get("boxes")
        return out
