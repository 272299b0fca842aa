"""PRM (Zhou et al., 2018; survey Eq. 5): peak stimulation — the class score is the mean
of the class map's local maxima, so the gradient flows through the peaks only; the CAM is
the class map."""

from __future__ import annotations

from pydantic import Field, field_validator

from wsol.methods.base import MethodParams, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import PRMHead


class PRMParams(MethodParams):
    kernel: int = Field(
        3,
        ge=1,
        description="size r of the square window in which a peak must be the maximum (stride 1). "
        "Survey Table 7 grid: r in {3, 5, 7, 9, 11, 13}; default 3 (PRM's peak-finding window). "
        "Table 7 also lists a 'kernel stride' in {1, 3, ..., 13} next to PRM (garbled layout); the peak "
        "test here always slides with stride 1, so that every position is tested.",
    )

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd so the window is centred on the pixel (e.g. {v + 1})")
        return v


@register
class PRM(PooledMethod):
    name = "prm"
    Params = PRMParams

    def build_head(self, in_channels: int, num_classes: int) -> PRMHead:
        return PRMHead(in_channels, num_classes, kernel=self.params.kernel)
