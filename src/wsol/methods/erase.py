"""ERASE: adversarial erasing (Wei et al., "Object region mining with adversarial erasing",
CVPR 2017), the baseline "ERASE [80]" of max-min-uncertainty-histology.txt Tables 1-2
(§3.3 (b): WILDCAT pooling as in MAXMIN; "erase the pixels that belong to the top 20% of
the maximum activation").

Mining step ``i``: the CAM of the image's class on the current image ``X_i`` (min-max
normalised, so "≥ 20% of the maximum activation" reads ``cam ≥ 0.2`` between the map's
minimum and maximum) gives the region ``R_i = {cam_i ≥ erase_threshold}``; it is erased
from the image, ``X_{i+1} = X_i`` with ``R_i`` replaced by the image's mean colour (Wei et al.
fill erased pixels with the mean pixel value), and training goes on with ``X_{i+1}``.

Reconstruction for a single training run (Wei et al. train one new network per erasing
step): one network is shared by every step; the erasing depth ``d`` grows with the epochs,
``d = min(max_depth, epoch // depth_every)`` (set by :meth:`Erase.on_epoch_start`, stored in
a buffer so a checkpoint remembers it), and each step computes the cross-entropy on the
original image and on the erased ones ``X_1..X_d`` (mined without gradient). Terms: ``ce``
(original image), ``ce_erased`` (mean over the erased images, 0 at depth 0), ``total`` = their
sum, ``erased_frac`` (diagnostic: mean fraction of pixels erased at the deepest step).

CAM (``localize``): the union of the mined regions' maps, ``max_i cam_i`` over
``i = 0..d`` (each ``cam_i`` computed on ``X_i`` for the same class), min-max normalised — a
graded version of the union of the regions ``R_i``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from wsol.cams import to_cam
from wsol.data.sample import Batch
from wsol.methods.base import TrainState, register
from wsol.methods.maxmin import GlasWildcatParams, build_wildcat
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import WildcatHead


class EraseParams(GlasWildcatParams):
    erase_threshold: float = Field(0.2, gt=0, le=1, description="erase pixels with normalised CAM >= this (§3.3: 0.2)")
    max_depth: int = Field(2, ge=0, description="most erasing steps (Wei et al. mine 3 regions: 2 erasures)")
    depth_every: int = Field(10, ge=1, description="epochs between depth increments (depth = epoch // depth_every)")
    fill: Literal["mean", "zero"] = Field("mean", description="value of erased pixels: per-image channel mean, or 0")


def erase(images: torch.Tensor, regions: torch.Tensor, fill: Literal["mean", "zero"] = "mean") -> torch.Tensor:
    """``images`` (B×3×H×W) with ``regions`` (B×H×W bool) replaced by the per-image channel mean
    (``fill='mean'``) or 0."""
    keep = (~regions)[:, None].to(images.dtype)
    value = images.mean(dim=(2, 3), keepdim=True) if fill == "mean" else torch.zeros_like(images[:, :, :1, :1])
    return images * keep + value * (1.0 - keep)


@register
class Erase(PooledMethod):
    name = "erase"
    Params = EraseParams
    erase_depth: torch.Tensor  # buffer registered in __init__ (declared for the type checker)

    def __init__(self, params: EraseParams, backbone, num_classes: int):
        super().__init__(params, backbone, num_classes)
        self.register_buffer("erase_depth", torch.tensor(0, dtype=torch.long))

    def build_head(self, in_channels: int, num_classes: int) -> WildcatHead:
        return build_wildcat(self.params, in_channels, num_classes)

    @property
    def depth(self) -> int:
        return int(self.erase_depth)

    def on_epoch_start(self, epoch: int) -> None:
        self.erase_depth.fill_(min(self.params.max_depth, epoch // self.params.depth_every))

    def class_cam(self, maps: torch.Tensor, targets: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        return to_cam(maps[torch.arange(len(targets), device=maps.device), targets], size)

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        images, labels = batch.images, batch.labels
        size = tuple(images.shape[-2:])
        out = self(images)
        ce = F.cross_entropy(out.logits, labels)
        x, maps = images, out.maps
        erased_ce, frac = [], torch.zeros((), device=images.device)
        for _ in range(self.depth):  # at most max_depth steps (not a pixel loop)
            with torch.no_grad():
                region = self.class_cam(maps.detach(), labels, size) >= self.params.erase_threshold
                x = erase(x, region, self.params.fill)
                frac = region.float().mean()
            out_i = self(x)
            erased_ce.append(F.cross_entropy(out_i.logits, labels))
            maps = out_i.maps
        ce_erased = torch.stack(erased_ce).mean() if erased_ce else torch.zeros((), device=images.device)
        return {"ce": ce, "ce_erased": ce_erased, "total": ce + ce_erased, "erased_frac": frac}

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Union (max) of the CAMs mined at depths 0..d on the successively erased images."""
        size = tuple(images.shape[-2:])
        out = self(images)
        t = self.select_targets(out.logits, targets)
        cam = self.class_cam(out.maps, t, size)
        union, x = cam, images
        for _ in range(self.depth):
            x = erase(x, cam >= self.params.erase_threshold, self.params.fill)
            cam = self.class_cam(self(x).maps, t, size)
            union = torch.maximum(union, cam)
        return to_cam(union)
