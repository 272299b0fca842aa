"""Joint transforms: each takes a Sample and returns a new Sample whose ``mask`` and
``boxes`` stay aligned with ``image`` (DESIGN.md "Sample").

- images are resized bilinearly with antialiasing; masks with nearest neighbour so their
  values (0 / 1 / 255 ignore) never change — by default OpenCV's ``INTER_NEAREST``, as
  wsolevaluation resizes its masks (``mask_mode="opencv"``: source index
  ``floor(x · (1 / (W_new / W)))`` in float64, clipped to the last pixel; reference:
  wsolevaluation ``evaluation.py`` ``get_mask``, OpenCV ``resize.cpp`` ``resizeNN``), or
  centre-aligned ``nearest-exact`` (``mask_mode="nearest-exact"``);
- boxes are (x1, y1, x2, y2) in continuous pixel coordinates (the pixel with column
  index ``j`` spans x in [j, j+1)), so a flip maps x to ``W - x`` and a resize scales x
  by ``W_new / W``, computed in float64 in wsolevaluation's ``resize_bbox`` order
  ``(x · W_new) / W`` (so the metrics' truncation to integers gives the reference's boxes);
- randomness comes from a ``torch.Generator``: the one passed to the call (the engine
  passes one per sample, seeded from (seed, epoch, index), so the number of DataLoader
  workers never changes a run), else the transform's own, else the global torch RNG;
- the image stays float in [0, 1]; no mean/std normalisation here (models do it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from wsol.config import DataConfig
from wsol.data.sample import Sample
from wsol.errors import ConfigError

Transform = Callable[[Sample], Sample]
MaskMode = Literal["opencv", "nearest-exact"]


def _copy(sample: Sample) -> Sample:
    return dict(sample)  # type: ignore[return-value]


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=generator) < p)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch intra-op thread inside the block, the previous count restored after:
    per-sample ops are far too small to split, and torch's threads slow them down by an
    order of magnitude (issue 19: 26× on the demo's transforms with 2 threads)."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class RandomTransform:
    """Base of the random transforms: ``t(sample, generator)`` draws from ``generator`` when
    given, else from the transform's own ``generator``, else from the global torch RNG."""

    generator: torch.Generator | None = None

    def rng(self, generator: torch.Generator | None) -> torch.Generator | None:
        return generator if generator is not None else self.generator

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        raise TypeError(f"{type(self).__name__} does not implement __call__")


class Compose:
    """Apply transforms in order, on one torch thread (:func:`single_thread`); ``generator``
    (one per sample) goes to every random one."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        with single_thread():
            for t in self.transforms:
                sample = t(sample, generator) if isinstance(t, (RandomTransform, Compose)) else t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(t) for t in self.transforms)})"


def nearest_indices(src: int, dst: int) -> torch.Tensor:
    """Source index of each of ``dst`` output pixels as OpenCV's ``INTER_NEAREST`` computes
    it (``resize.cpp`` ``resizeNN``: ``min(cvFloor(x · (1 / (dst / src))), src − 1)`` in
    double precision)."""
    ifx = 1.0 / (dst / src)
    idx = np.minimum(np.floor(np.arange(dst, dtype=np.float64) * ifx).astype(np.int64), src - 1)
    return torch.from_numpy(idx)


def resize_mask(mask: torch.Tensor, size: tuple[int, int], mode: MaskMode = "opencv") -> torch.Tensor:
    """An H×W label mask resized to ``size`` (H', W') by nearest neighbour: ``opencv``
    (default; wsolevaluation's ``cv2.resize(..., INTER_NEAREST)``, a top-left-aligned pick)
    or ``nearest-exact`` (centre-aligned). Values are never mixed."""
    h, w = mask.shape[-2:]
    nh, nw = size
    if mode == "opencv":
        return mask.index_select(-2, nearest_indices(h, nh)).index_select(-1, nearest_indices(w, nw))
    if mode == "nearest-exact":
        return F.interpolate(mask[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0].to(mask.dtype)
    raise ConfigError(f"data.mask_resize: expected 'opencv' or 'nearest-exact', got {mode!r}")


def resize_boxes(boxes: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """Boxes (x1, y1, x2, y2) of an image of ``from_size`` (H, W) in the pixels of an image of
    ``to_size`` (H', W'), float (not truncated). Computed in float64 in the order of
    wsolevaluation's ``resize_bbox`` — ``x · W' / W`` — so that truncating gives exactly its
    integer boxes (float32 arithmetic put a few boxes 1 px off, issue 18)."""
    (h, w), (nh, nw) = from_size, to_size
    b = boxes.to(torch.float64).reshape(-1, 4)
    num = torch.tensor([nw, nh, nw, nh], dtype=torch.float64)
    den = torch.tensor([w, h, w, h], dtype=torch.float64)
    return (b * num / den).to(torch.float32)


class Resize:
    """Resize to ``size`` (int: square, or (height, width)); masks by nearest neighbour
    (``mask_mode``, see :func:`resize_mask`), boxes scaled (:func:`resize_boxes`)."""

    def __init__(self, size: int | tuple[int, int], mask_mode: MaskMode = "opencv"):
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) <= 0:
            raise ConfigError(f"Resize: size must be positive, got {size!r}")
        if mask_mode not in ("opencv", "nearest-exact"):
            raise ConfigError(f"data.mask_resize: expected 'opencv' or 'nearest-exact', got {mask_mode!r}")
        self.mask_mode = mask_mode

    def __call__(self, sample: Sample) -> Sample:
        img = sample["image"]
        h, w = img.shape[-2:]
        nh, nw = self.size
        if (h, w) == (nh, nw):
            return sample
        out = _copy(sample)
        out["image"] = F.interpolate(img[None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                                     antialias=True)[0].clamp_(0.0, 1.0)
        if sample.get("mask") is not None:
            out["mask"] = resize_mask(sample["mask"], (nh, nw), self.mask_mode)
        if sample.get("boxes") is not None:
            out["boxes"] = resize_boxes(sample["boxes"], (h, w), (nh, nw))
        return out

    def __repr__(self) -> str:
        mode = "" if self.mask_mode == "opencv" else f", mask_mode={self.mask_mode!r}"
        return f"Resize({self.size}{mode})"


def crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Crop a window; boxes are shifted, clipped to the window, and dropped when empty."""
    out = _copy(sample)
    out["image"] = sample["image"][..., top:top + height, left:left + width]
    if sample.get("mask") is not None:
        out["mask"] = sample["mask"][top:top + height, left:left + width]
    if sample.get("boxes") is not None:
        b = sample["boxes"].float().reshape(-1, 4) - torch.tensor([left, top, left, top], dtype=torch.float32)
        b[:, 0::2] = b[:, 0::2].clamp(0, width)
        b[:, 1::2] = b[:, 1::2].clamp(0, height)
        keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        out["boxes"] = b[keep]
    return out


class RandomCrop(RandomTransform):
    """A random ``size``×``size`` window (uniform over positions)."""

    def __init__(self, size: int, generator: torch.Generator | None = None):
        if size <= 0:
            raise ConfigError(f"RandomCrop: size must be positive, got {size}")
        self.size = int(size)
        self.generator = generator

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        g = self.rng(generator)
        h, w = sample["image"].shape[-2:]
        if self.size > h or self.size > w:
            raise ConfigError(
                f"data.crop_size: crop {self.size} is larger than the {w}×{h} image; "
                "set crop_size <= image_size"
            )
        top = int(torch.randint(0, h - self.size + 1, (), generator=g))
        left = int(torch.randint(0, w - self.size + 1, (), generator=g))
        return crop(sample, top, left, self.size, self.size)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


def hflip(sample: Sample) -> Sample:
    out = _copy(sample)
    w = sample["image"].shape[-1]
    out["image"] = sample["image"].flip(-1)
    if sample.get("mask") is not None:
        out["mask"] = sample["mask"].flip(-1)
    if sample.get("boxes") is not None:
        b = sample["boxes"].float().reshape(-1, 4)
        out["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
    return out


def vflip(sample: Sample) -> Sample:
    out = _copy(sample)
    h = sample["image"].shape[-2]
    out["image"] = sample["image"].flip(-2)
    if sample.get("mask") is not None:
        out["mask"] = sample["mask"].flip(-2)
    if sample.get("boxes") is not None:
        b = sample["boxes"].float().reshape(-1, 4)
        out["boxes"] = torch.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], dim=1)
    return out


def rot90(sample: Sample, k: int) -> Sample:
    """Rotate by ``k`` quarter turns counter-clockwise (as ``torch.rot90`` on (H, W)).

    One quarter turn sends pixel (row r, col c) of a W-wide image to (row W-1-c, col r),
    i.e. in continuous coordinates x' = y, y' = W - x.
    """
    k = k % 4
    if k == 0:
        return sample
    out = _copy(sample)
    out["image"] = torch.rot90(sample["image"], k, dims=(-2, -1))
    if sample.get("mask") is not None:
        out["mask"] = torch.rot90(sample["mask"], k, dims=(-2, -1))
    if sample.get("boxes") is not None:
        b = sample["boxes"].float().reshape(-1, 4)
        h, w = sample["image"].shape[-2:]
        for _ in range(k):
            b = torch.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], dim=1)
            h, w = w, h
        out["boxes"] = b
    return out


class RandomHFlip(RandomTransform):
    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return hflip(sample) if _coin(self.p, self.rng(generator)) else sample

    def __repr__(self) -> str:
        return f"RandomHFlip(p={self.p})"


class RandomVFlip(RandomTransform):
    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return vflip(sample) if _coin(self.p, self.rng(generator)) else sample

    def __repr__(self) -> str:
        return f"RandomVFlip(p={self.p})"


class RandomRot90(RandomTransform):
    """Rotate by 0, 90, 180 or 270 degrees, each with probability 1/4."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        return rot90(sample, int(torch.randint(0, 4, (), generator=self.rng(generator))))

    def __repr__(self) -> str:
        return "RandomRot90()"


def _gray(img: torch.Tensor) -> torch.Tensor:
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]


class ColorJitter(RandomTransform):
    """Random brightness, contrast and saturation factors, each uniform in
    [1 - strength, 1 + strength], applied in random order; image only (mask/boxes untouched)."""

    def __init__(self, strength: float, generator: torch.Generator | None = None):
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"data.augment.color_jitter: expected a strength in [0, 1], got {strength}")
        self.strength = float(strength)
        self.generator = generator

    def __call__(self, sample: Sample, generator: torch.Generator | None = None) -> Sample:
        if self.strength == 0.0:
            return sample
        s = self.strength
        g = self.rng(generator)
        factors = 1.0 + s * (2.0 * torch.rand(3, generator=g) - 1.0)
        order = torch.randperm(3, generator=g).tolist()
        img = sample["image"].float()
        for i in order:
            f = float(factors[i])
            if i == 0:  # brightness
                img = img * f
            elif i == 1:  # contrast: blend with the mean grey level
                img = f * img + (1.0 - f) * _gray(img).mean()
            else:  # saturation: blend with the grey image
                img = f * img + (1.0 - f) * _gray(img)
            img = img.clamp(0.0, 1.0)
        out = _copy(sample)
        out["image"] = img
        return out

    def __repr__(self) -> str:
        return f"ColorJitter({self.strength})"


def build_transform(cfg: DataConfig, train: bool) -> Compose:
    """Training: resize to ``image_size``², random crop (``crop_size``), flips, 90° rotations
    and colour jitter as configured in ``cfg.augment``. Evaluation: resize only. Masks are
    resized as ``cfg.mask_resize`` says (default: OpenCV ``INTER_NEAREST``, the reference's)."""
    steps: list[Transform] = [Resize(cfg.image_size, cfg.mask_resize)]
    if train:
        if cfg.crop_size is not None:
            if cfg.crop_size > cfg.image_size:
                raise ConfigError(
                    f"data.crop_size: {cfg.crop_size} is larger than data.image_size {cfg.image_size}; "
                    "set crop_size <= image_size or leave it null"
                )
            steps.append(RandomCrop(cfg.crop_size))
        aug = cfg.augment
        if aug.hflip:
            steps.append(RandomHFlip())
        if aug.vflip:
            steps.append(RandomVFlip())
        if aug.rot90:
            steps.append(RandomRot90())
        if aug.color_jitter > 0:
            steps.append(ColorJitter(aug.color_jitter))
    return Compose(steps)
