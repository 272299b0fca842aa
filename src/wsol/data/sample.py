"""The data contract (DESIGN.md "Sample / Batch") and the collate function. Light: imports
torch only (no reader, no OpenCV), so methods and the engine can use it cheaply.

A **Sample** is a dict:

- ``image``: float tensor 3×H×W (values in [0, 1]; each backbone normalises its own input),
- ``label``: int class id,
- ``mask`` (optional): uint8 tensor H×W, 1 = ROI, 0 = background, 255 = ignore.
  A normal sample of a histology set has an all-zero mask ("no ROI" is evaluated),
- ``boxes`` (optional): float tensor N×4, (x1, y1, x2, y2) in pixels of ``image``,
- ``image_id``: str,
- with ``keep_original`` datasets also ``orig_size`` (H, W), ``orig_mask``, ``orig_boxes``.

:func:`collate` builds a typed :class:`Batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NotRequired, TypedDict

import torch
from torch import Tensor

IGNORE = 255


class Sample(TypedDict):
    image: Tensor
    label: int
    image_id: str
    mask: NotRequired[Tensor]
    boxes: NotRequired[Tensor]
    orig_size: NotRequired[tuple[int, int]]
    orig_mask: NotRequired[Tensor | None]
    orig_boxes: NotRequired[Tensor | None]


@dataclass
class Batch:
    """A collated batch.

    ``images`` B×3×H×W float in [0, 1]; ``labels`` B long; ``masks`` B×H×W uint8 (0/1/255)
    or None when no sample of the batch has a mask — a sample without one has an all-255
    (ignore) row and ``has_mask`` False; ``boxes``: one N_i×4 float tensor per sample
    (0×4 when absent); ``image_ids``; ``orig_sizes`` / ``orig_masks`` / ``orig_boxes``:
    the labels at each image's original size (None unless the dataset keeps them)."""

    images: Tensor
    labels: Tensor
    image_ids: list[str]
    masks: Tensor | None = None
    has_mask: Tensor | None = None
    boxes: list[Tensor] = field(default_factory=list)
    orig_sizes: list[tuple[int, int]] | None = None
    orig_masks: list[Tensor | None] | None = None
    orig_boxes: list[Tensor | None] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with its tensors (images, labels, masks) on ``device``."""

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(self, images=self.images.to(device, non_blocking=non_blocking),
                       labels=self.labels.to(device, non_blocking=non_blocking), masks=mv(self.masks),
                       has_mask=mv(self.has_mask))

    def pin_memory(self) -> Batch:
        """Page-locked copies (DataLoader ``pin_memory=True`` calls this)."""
        return replace(self, images=self.images.pin_memory(), labels=self.labels.pin_memory(),
                       masks=None if self.masks is None else self.masks.pin_memory())

    def mask_list(self) -> list[Tensor | None]:
        """One H×W mask per sample, None where the sample has none."""
        if self.masks is None or self.has_mask is None:
            return [None] * len(self)
        return [m if bool(h) else None for m, h in zip(self.masks, self.has_mask)]


def collate(samples: list[Any]) -> Batch:
    """Stack samples into a :class:`Batch` (masks of samples without one become all-ignore)."""
    images = torch.stack([s["image"] for s in samples])
    labels = torch.as_tensor([int(s["label"]) for s in samples], dtype=torch.long)
    masks_l = [s.get("mask") for s in samples]
    has_mask = torch.as_tensor([m is not None for m in masks_l], dtype=torch.bool)
    masks: Tensor | None = None
    if has_mask.any():
        shape = images.shape[-2:]
        bad = [tuple(m.shape) for m in masks_l if m is not None and tuple(m.shape) != tuple(shape)]
        if bad:
            raise ValueError(f"collate: mask of shape {bad[0]} for images of {tuple(shape)}; transforms must resize masks")
        masks = torch.stack([m.to(torch.uint8) if m is not None else torch.full(tuple(shape), IGNORE, dtype=torch.uint8)
                             for m in masks_l])
    boxes = [
        s["boxes"].float().reshape(-1, 4) if s.get("boxes") is not None else torch.zeros(0, 4) for s in samples
    ]
    batch = Batch(images=images, labels=labels, image_ids=[s["image_id"] for s in samples], masks=masks,
                  has_mask=has_mask, boxes=boxes)
    if "orig_size" in samples[0]:  # RecordDataset(keep_original=True): labels at original size
        batch.orig_sizes = [s["orig_size"] for s in samples]
        batch.orig_masks = [s.get("orig_mask") for s in samples]
        batch.orig_boxes = [s.get("orig_boxes") for s in samples]
    return batch
