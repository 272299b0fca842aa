"""PN: constrained-CNN size losses with image-level presence / non-presence only
(Kervadec et al., "Constrained-CNN losses for weakly supervised segmentation", 2019), the
baseline "PN [39]" of max-min-uncertainty-histology.txt Tables 1-2 (§3.3 (b): WILDCAT
pooling for the CAMs as in MAXMIN, λ = 1e-5).

A WILDCAT CAM network trained with cross-entropy plus λ times Kervadec's quadratic size
penalty ``(s − a)²`` if ``s < a``, ``(s − b)²`` if ``s > b`` (``wsol.losses.size_bounds_penalty``)
on the size of each class's soft map. Reconstruction (the paper gives no more detail):

- the soft foreground of class k is ``sigmoid(map_k)`` at the maps' own resolution h×w, and
  its size ``s_k = Σ_z sigmoid(map_k(z))`` is counted in map cells (Kervadec counts pixels of
  the network's output grid), which keeps λ = 1e-5 on the scale the paper used;
- presence (class k is the image's label and not the negative class): ``a = min_size``,
  ``b = h·w`` — a non-empty foreground, with no upper bound (why the paper sees PN light up
  large regions);
- non-presence (every other class except the negative class): ``a = b = 0`` — empty. In a
  negative (normal) image every class but the negative one must be empty;
- the negative class's own map is not constrained (it has no "object"). ``negative_class:
  null`` treats every class as an object class (e.g. GlaS benign/malignant).

Terms: ``ce``, ``size`` (λ·penalty, mean over images of the sum over classes), ``total``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.losses import region_size, size_bounds_penalty
from wsol.methods.base import TrainState, register
from wsol.methods.maxmin import GlasWildcatParams, build_wildcat
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import WildcatHead


class PNParams(GlasWildcatParams):
    size_weight: float = Field(1e-5, ge=0, description="λ of the size penalty (max-min-uncertainty §3.3: 1e-5)")
    negative_class: int | None = Field(
        0, ge=0, description="class id of negative (normal) images, whose object maps must be empty; null = none"
    )
    min_size: float = Field(1.0, ge=0, description="lower size bound a (map cells) of a present class")


def presence_bounds(
    labels: torch.Tensor, num_classes: int, n_cells: int, negative_class: int | None, min_size: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(image, class) size bounds ``(lower, upper)``, each B×C: ``[min_size, n_cells]`` for
    the present class, ``[0, 0]`` for absent classes, ``[0, inf]`` for the negative class."""
    present = F.one_hot(labels, num_classes).bool()
    lower = torch.where(present, float(min_size), 0.0)
    upper = torch.where(present, float(n_cells), 0.0)
    if negative_class is not None:
        neg = torch.zeros(num_classes, dtype=torch.bool, device=labels.device)
        neg[negative_class] = True
        lower = torch.where(neg, 0.0, lower)
        upper = torch.where(neg, float("inf"), upper)
    return lower, upper


@register
class PN(PooledMethod):
    name = "pn"
    Params = PNParams

    def __init__(self, params: PNParams, backbone, num_classes: int):
        if params.negative_class is not None and params.negative_class >= num_classes:
            raise ConfigError(
                f"model.method.params.negative_class (pn): {params.negative_class} is not a class id "
                f"(0..{num_classes - 1}); set it to the normal class or null"
            )
        super().__init__(params, backbone, num_classes)

    def build_head(self, in_channels: int, num_classes: int) -> WildcatHead:
        return build_wildcat(self.params, in_channels, num_classes)

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        p = self.params
        out = self(batch.images)
        labels = batch.labels
        ce = F.cross_entropy(out.logits, labels)
        sizes = region_size(torch.sigmoid(out.maps), normalize=False)  # B×C, in map cells
        n_cells = out.maps.shape[-2] * out.maps.shape[-1]
        lower, upper = presence_bounds(labels, self.num_classes, n_cells, p.negative_class, p.min_size)
        # Kervadec et al. 2019 quadratic size penalty, summed over classes, mean over images
        size = p.size_weight * size_bounds_penalty(sizes, lower, upper, reduction="none").sum(dim=1).mean()
        return {"ce": ce, "size": size, "total": ce + size}
