"""Deep MIL (Ilse et al., 2018; survey Eqs. 7-9), multi-class: the feature vectors of the
spatial positions are instances, one attention map per class pools them into a per-class
bag embedding that a per-class linear layer scores; the CAM of a class is its attention map."""

from __future__ import annotations

from pydantic import Field

from wsol.methods.base import MethodParams, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import DeepMILHead


class DeepMILParams(MethodParams):
    mid_channels: int = Field(
        128,
        ge=1,
        description="L, the hidden size of the attention network (V, U in R^{L×K}, Eq. 9). "
        "Survey Table 7: mid-channels = 128.",
    )
    gated: bool = Field(
        False,
        description="False: ψ1(f) = w·tanh(Vf); True: gated ψ2(f) = w·(tanh(Vf) ⊙ sigmoid(Uf)) (Eq. 9). "
        "Survey Table 7 grid: gated attention in {True, False}.",
    )


@register
class DeepMIL(PooledMethod):
    name = "deepmil"
    Params = DeepMILParams

    def build_head(self, in_channels: int, num_classes: int) -> DeepMILHead:
        return DeepMILHead(in_channels, num_classes, mid_channels=self.params.mid_channels, gated=self.params.gated)
