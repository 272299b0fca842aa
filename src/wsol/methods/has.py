"""HaS, Hide-and-Seek (Singh & Lee, ICCV 2017; survey §2.2.1): during training, the input
image is cut into a grid of S×S-pixel patches and each patch is hidden with probability p,
so the classifier must find evidence beyond the most discriminative part; the network and
its CAM are the plain CAM method's (GAP + linear layer, survey Eqs. 2-3). Evaluation is
untouched: nothing is hidden outside ``training_step``, and only in ``train()`` mode.

Details:

- ``grid_size`` is the patch side S **in pixels**, as in the paper and in wsolevaluation's
  ``has(image, grid_size, drop_rate)`` (survey Table 7 grid: S ∈ {8, 16, 32, 44, 56} on
  224² images). An ``[S_h, S_w]`` pair gives a different patch side per axis. The grid is
  laid per axis, so a non-square image gets ``ceil(H/S_h) × ceil(W/S_w)`` cells, the last
  row/column of cells possibly partial (wsolevaluation clips both axes at the *height*, a
  bug for non-square images that we do not copy).
- each cell of each image is hidden independently with probability ``drop_rate``
  (wsolevaluation: ``random() <= drop_rate``; we use ``<`` so that p = 0 never hides).
- hidden pixels take the value ``fill``. The paper fills them with the mean pixel of the
  training set so that train and test activations have the same expectation;
  wsolevaluation sets them to 0 *after* ImageNet normalisation, i.e. to the ImageNet mean.
  wsol images are in [0, 1] and each backbone normalises its own input, so the default
  fill is the ImageNet mean in [0, 1] pixel units, which matches both. Set your dataset's
  mean for histology.
- the paper's random mix of several grid sizes per epoch is not used (wsolevaluation and
  the survey use one grid size per run).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, field_validator

from wsol.data.sample import Batch
from wsol.methods.base import MethodParams, TrainState, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.backbones import IMAGENET_MEAN
from wsol.nn.pooling import GAPHead


class HaSParams(MethodParams):
    grid_size: int | tuple[int, int] = Field(
        32,
        description="patch side S in pixels (an [S_h, S_w] pair for a different side per axis). "
        "Survey Table 7 grid: grid size in {8, 16, 32, 44, 56}.",
    )
    drop_rate: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="probability p that a patch is hidden. Survey Table 7 grid: drop rate in {0.2, 0.3, 0.4, 0.5, 0.6}.",
    )
    fill: tuple[float, float, float] = Field(
        IMAGENET_MEAN,
        description="RGB value of hidden pixels in [0, 1] pixel units: the training set's mean pixel "
        "(default: the ImageNet mean, which is wsolevaluation's 0 after normalisation).",
    )

    @field_validator("grid_size")
    @classmethod
    def _grid(cls, v):
        sides = (v, v) if isinstance(v, int) else v
        if any(s < 1 for s in sides):
            raise ValueError(f"patch sides must be >= 1 pixel, got {v}")
        return v

    @field_validator("fill")
    @classmethod
    def _fill(cls, v):
        if any(not 0.0 <= c <= 1.0 for c in v):
            raise ValueError(f"fill is an RGB value in [0, 1] pixel units, got {v}")
        return v


def hidden_cells(
    batch_size: int,
    size: tuple[int, int],
    grid_size: int | tuple[int, int],
    drop_rate: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean B×n_h×n_w: which grid cells to hide, ``n = ceil(H/S_h), ceil(W/S_w)``; each
    cell independently with probability ``drop_rate`` (one ``torch.rand`` draw per cell)."""
    sh, sw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    nh, nw = math.ceil(size[0] / sh), math.ceil(size[1] / sw)
    return torch.rand(batch_size, nh, nw, device=device, generator=generator) < drop_rate


def cells_to_pixels(cells: torch.Tensor, size: tuple[int, int], grid_size: int | tuple[int, int]) -> torch.Tensor:
    """B×n_h×n_w cell mask -> B×H×W pixel mask (cell (i, j) covers rows i·S_h.. and
    columns j·S_w.., the last ones cut at the image border)."""
    sh, sw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    return cells.repeat_interleave(sh, dim=1).repeat_interleave(sw, dim=2)[:, : size[0], : size[1]]


def hide_patches(
    images: torch.Tensor,
    grid_size: int | tuple[int, int],
    drop_rate: float,
    fill: tuple[float, float, float] = IMAGENET_MEAN,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hide-and-Seek on a batch B×3×H×W: ``(hidden images, B×n_h×n_w cell mask)``; the input
    is not modified."""
    size = (images.shape[-2], images.shape[-1])
    cells = hidden_cells(images.shape[0], size, grid_size, drop_rate, images.device, generator)
    m = cells_to_pixels(cells, size, grid_size)[:, None].to(images.dtype)
    value = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return images * (1.0 - m) + value * m, cells


@register
class HaS(PooledMethod):
    """Hide-and-Seek: CAM trained on images with random grid patches hidden (training only)."""

    name = "has"
    Params = HaSParams

    def build_head(self, in_channels: int, num_classes: int) -> GAPHead:
        return GAPHead(in_channels, num_classes)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Training images with patches hidden; the identity in ``eval()`` mode."""
        if not self.training:
            return images
        p = self.params
        return hide_patches(images, p.grid_size, p.drop_rate, p.fill)[0]

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        out = self(self.augment(batch.images))
        ce = torch.nn.functional.cross_entropy(out.logits, batch.labels)  # survey Eq. 2 classifier, CE loss
        return {"ce": ce, "total": ce}
