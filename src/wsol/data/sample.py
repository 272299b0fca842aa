"""The data contract (DESIGN.md "Sample") and the collate function.

A **Sample** is a dict:

- ``image``: float tensor 3×H×W (values in [0, 1] before normalisation),
- ``label``: int class id,
- ``mask`` (optional): uint8 tensor H×W, 1 = ROI, 0 = background, 255 = ignore.
  A normal sample of a histology set has an all-zero mask ("no ROI" is evaluated),
- ``boxes`` (optional): float tensor N×4, (x1, y1, x2, y2) in pixels of ``image``,
- ``image_id``: str.

:func:`collate` builds a **Batch** dict: ``images`` B×3×H×W, ``labels`` B (long),
``masks`` (B×H×W uint8 when every sample has one of the same size; a list of tensors or
None per sample when sizes differ or some lack one; None when no sample has one),
``has_mask`` B (bool), ``boxes`` list of N_i×4 tensors (0×4 when absent),
``image_ids`` list of str; with ``keep_original`` datasets also ``orig_sizes`` (list of
(H, W)), ``orig_masks`` and ``orig_boxes`` (lists, None where absent).
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

import torch


class Sample(TypedDict):
    image: torch.Tensor
    label: int
    image_id: str
    mask: NotRequired[torch.Tensor]
    boxes: NotRequired[torch.Tensor]


IGNORE = 255


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    images = torch.stack([s["image"] for s in samples])
    labels = torch.as_tensor([int(s["label"]) for s in samples], dtype=torch.long)
    masks_l = [s.get("mask") for s in samples]
    has_mask = torch.as_tensor([m is not None for m in masks_l], dtype=torch.bool)
    if not has_mask.any():
        masks: Any = None
    elif has_mask.all() and len({tuple(m.shape) for m in masks_l}) == 1:
        masks = torch.stack(masks_l)
    else:
        masks = masks_l
    boxes = [
        s["boxes"].float().reshape(-1, 4) if s.get("boxes") is not None else torch.zeros(0, 4) for s in samples
    ]
    batch = {
        "images": images,
        "labels": labels,
        "masks": masks,
        "has_mask": has_mask,
        "boxes": boxes,
        "image_ids": [s["image_id"] for s in samples],
    }
    if "orig_size" in samples[0]:  # RecordDataset(keep_original=True): labels at original size
        batch["orig_sizes"] = [s["orig_size"] for s in samples]
        batch["orig_masks"] = [s.get("orig_mask") for s in samples]
        batch["orig_boxes"] = [s.get("orig_boxes") for s in samples]
    return batch
