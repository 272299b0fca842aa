"""MAX-Pool (Oquab et al., 2015; survey §2.2): the class score is the spatial max of the
class map, trained with cross-entropy; the CAM is the class map."""

from __future__ import annotations

from wsol.methods.base import MethodParams, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import MaxPoolHead


class MaxPoolParams(MethodParams):
    """MAX-Pool has no hyper-parameter of its own (survey Table 7 lists none)."""


@register
class MaxPool(PooledMethod):
    name = "max_pool"
    Params = MaxPoolParams

    def build_head(self, in_channels: int, num_classes: int) -> MaxPoolHead:
        return MaxPoolHead(in_channels, num_classes)
