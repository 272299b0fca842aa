"""Joint transforms: each takes a Sample and returns a new Sample whose ``mask`` and
``boxes`` stay aligned with ``image`` (DESIGN.md "Sample").

- images are resized bilinearly with antialiasing, masks with centre-aligned nearest
  neighbour (``nearest-exact``) so their values (0 / 1 / 255 ignore) never change;
- boxes are (x1, y1, x2, y2) in continuous pixel coordinates (the pixel with column
  index ``j`` spans x in [j, j+1)), so a flip maps x to ``W - x`` and a resize scales x
  by ``W_new / W``;
- randomness comes from the torch RNG (an optional ``torch.Generator``), so DataLoader
  worker seeding makes a run repeatable;
- the image stays float in [0, 1]; no mean/std normalisation here (models do it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from wsol.config import DataConfig
from wsol.data.sample import Sample
from wsol.errors import ConfigError

Transform = Callable[[Sample], Sample]


def _copy(sample: Sample) -> Sample:
    return dict(sample)  # type: ignore[return-value]


def _coin(p: float, generator: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=generator) < p)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(t) for t in self.transforms)})"


class Resize:
    """Resize to ``size`` (int: square, or (height, width)); boxes are scaled."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) <= 0:
            raise ConfigError(f"Resize: size must be positive, got {size!r}")

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
            m = sample["mask"]
            out["mask"] = F.interpolate(m[None, None].float(), size=(nh, nw), mode="nearest-exact")[0, 0].to(m.dtype)
        if sample.get("boxes") is not None:
            scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
            out["boxes"] = sample["boxes"].float().reshape(-1, 4) * scale
        return out

    def __repr__(self) -> str:
        return f"Resize({self.size})"


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


class RandomCrop:
    """A random ``size``×``size`` window (uniform over positions)."""

    def __init__(self, size: int, generator: torch.Generator | None = None):
        if size <= 0:
            raise ConfigError(f"RandomCrop: size must be positive, got {size}")
        self.size = int(size)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        if self.size > h or self.size > w:
            raise ConfigError(
                f"data.crop_size: crop {self.size} is larger than the {w}×{h} image; "
                "set crop_size <= image_size"
            )
        top = int(torch.randint(0, h - self.size + 1, (), generator=self.generator))
        left = int(torch.randint(0, w - self.size + 1, (), generator=self.generator))
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


class RandomHFlip:
    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, sample: Sample) -> Sample:
        return hflip(sample) if _coin(self.p, self.generator) else sample

    def __repr__(self) -> str:
        return f"RandomHFlip(p={self.p})"


class RandomVFlip:
    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p, self.generator = p, generator

    def __call__(self, sample: Sample) -> Sample:
        return vflip(sample) if _coin(self.p, self.generator) else sample

    def __repr__(self) -> str:
        return f"RandomVFlip(p={self.p})"


class RandomRot90:
    """Rotate by 0, 90, 180 or 270 degrees, each with probability 1/4."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        return rot90(sample, int(torch.randint(0, 4, (), generator=self.generator)))

    def __repr__(self) -> str:
        return "RandomRot90()"


def _gray(img: torch.Tensor) -> torch.Tensor:
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]


class ColorJitter:
    """Random brightness, contrast and saturation factors, each uniform in
    [1 - strength, 1 + strength], applied in random order; image only (mask/boxes untouched)."""

    def __init__(self, strength: float, generator: torch.Generator | None = None):
        if not 0.0 <= strength <= 1.0:
            raise ConfigError(f"data.augment.color_jitter: expected a strength in [0, 1], got {strength}")
        self.strength = float(strength)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        if self.strength == 0.0:
            return sample
        s = self.strength
        factors = 1.0 + s * (2.0 * torch.rand(3, generator=self.generator) - 1.0)
        order = torch.randperm(3, generator=self.generator).tolist()
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


def build_transform(cfg: DataConfig, train: bool) -> Transform:
    """Training: resize to ``image_size``², random crop (``crop_size``), flips, 90° rotations
    and colour jitter as configured in ``cfg.augment``. Evaluation: resize only."""
    steps: list[Transform] = [Resize(cfg.image_size)]
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
