"""LSE pooling (Pinheiro & Collobert, 2015; Sun et al., 2016; survey Eq. 4): the class
score is a log-sum-exp of the class map, between mean (q → 0) and max (q → ∞)."""

from __future__ import annotations

from pydantic import Field

from wsol.methods.base import MethodParams, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import LSEHead


class LSEParams(MethodParams):
    q: float = Field(
        5.0,
        gt=0,
        description="smoothness of the log-sum-exp (Eq. 4): small q ~ average, large q ~ max. "
        "Survey Table 7 grid: q in {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}; default 5 = middle of the grid "
        "(the papers give no single value).",
    )


@register
class LSE(PooledMethod):
    name = "lse"
    Params = LSEParams

    def build_head(self, in_channels: int, num_classes: int) -> LSEHead:
        return LSEHead(in_channels, num_classes, q=self.params.q)
