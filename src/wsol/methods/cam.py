"""CAM (Zhou et al., 2016; survey §2.2, Eqs. 2-3): GAP + linear classifier trained with
cross-entropy; the CAM of class c is Σ_k W_ck F_k, upsampled and min-max normalised."""

from __future__ import annotations

from wsol.methods.base import register
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import GAPHead


@register
class CAM(PooledMethod):
    name = "cam"

    def build_head(self, in_channels: int, num_classes: int) -> GAPHead:
        return GAPHead(in_channels, num_classes)
