"""WILDCAT (Durand et al., 2017; survey Eq. 6): M class-related modalities per class
(1×1 conv to C·M maps, averaged per class), scored by the mean of the k+ highest plus α
times the mean of the k- lowest activations; the CAM is the class map.

Paper settings (configs/methods/wildcat-*.yaml): max-min-uncertainty §3.3 GlaS: 5
modalities, kmax 0.3, kmin 0, dropout 0.1; CAMELYON16: kmax = kmin = 0.1, 4 modalities,
α = 0.6; min-max-entropy B.2: 5 modalities, kmax = kmin = 0.09, α = 0, dropout 0.75 (GlaS)
or 0.85 (CUB5, CUB, Oxford-102).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from wsol.methods.base import MethodParams, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import WildcatHead


def _check_k(v: float | int | None, allow_zero: bool) -> float | int | None:
    if v is None:
        return v
    if isinstance(v, bool):
        raise ValueError("expected a fraction in (0, 1] (float) or a pixel count >= 1 (int), got a boolean")
    if isinstance(v, int):
        if v < (0 if allow_zero else 1):
            raise ValueError(f"a pixel count must be >= {0 if allow_zero else 1}, got {v}")
        return v
    if v == 0 and allow_zero:
        return 0
    if not 0 < v <= 1:
        raise ValueError(f"a fraction must lie in (0, 1] (write an int for a pixel count), got {v}")
    return v


class WildcatParams(MethodParams):
    modalities: int = Field(
        4, ge=1, description="M, class-related modalities per class. Survey Table 7: modalities = 5."
    )
    kmax: int | float = Field(
        0.1,
        description="k+: how many highest activations make the score: a fraction of the map in (0, 1] "
        "(float) or a pixel count >= 1 (int; 1 = one pixel, 1.0 = the whole map). "
        "Survey Table 7 grid: kmax in {0.1, 0.3, 0.5, 0.6, 0.7}.",
    )
    kmin: int | float | None = Field(
        None,
        description="k-: how many lowest activations (same forms as kmax); null = same as kmax, "
        "0 = no min term. Survey Table 7 grid: kmin in {0.1, 0.2, 0.3}.",
    )
    alpha: float = Field(
        0.6, description="α, weight of the min term (Eq. 6). Survey Table 7 grid: α in {0.1, 0.6}."
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="dropout on the class maps right before scoring, training only "
        "(max-min-uncertainty GlaS: 0.1; min-max-entropy B.2: 0.75 GlaS, 0.85 CUB).",
    )

    @field_validator("kmax")
    @classmethod
    def _kmax(cls, v):
        return _check_k(v, allow_zero=False)

    @field_validator("kmin")
    @classmethod
    def _kmin(cls, v):
        return _check_k(v, allow_zero=True)


@register
class Wildcat(PooledMethod):
    name = "wildcat"
    Params = WildcatParams

    def build_head(self, in_channels: int, num_classes: int) -> WildcatHead:
        p = self.params
        return WildcatHead(
            in_channels,
            num_classes,
            modalities=p.modalities,
            kmax=p.kmax,
            kmin=p.kmin,
            alpha=p.alpha,
            dropout=p.dropout,
        )
