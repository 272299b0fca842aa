"""Region-size terms on soft masks (values in [0, 1]).

- :func:`region_size`: ``s = Σ_z M(z)`` (max-min-uncertainty-histology.txt Eqs. 10-11),
  optionally divided by the number of pixels ``|Ω|`` (a fraction in [0, 1]).
- :func:`size_lower_barrier`: the constraint ``s ≥ a`` through the extended log-barrier,
  ``ψ_t(a − s)``. With ``a = 0`` this is the absolute size constraint (ASC) of
  max-min-uncertainty Eq. 7 and f-cam Eq. 3: ``ψ_t(−s) = −(1/t)·log s`` when ``s ≥ 1/t²``.
- :func:`absolute_size_constraint`: ASC on a foreground and its complement, ``M− = 1 − M+``.
- :func:`size_bounds_penalty`: Kervadec et al.'s quadratic size penalty (Constrained-CNN
  losses, 2019): ``(s − a)²`` if ``s < a``, ``(s − b)²`` if ``s > b``, else 0.

Scale of the barrier: the log term's gradient does not depend on whether ``s`` is a pixel
count or a fraction (``log(s/|Ω|) = log s − log|Ω|``), but the point where ψ_t switches to
its linear extension does (``s < 1/t²``). On pixel counts that point is a fraction of one
pixel, so the extension would never act; on fractions (``normalize=True``, the default)
it acts when a region covers less than ``1/t²`` of the image (4% at t = 5), so an empty
region gets a finite penalty with gradient ``t`` instead of an infinite one. The penalty
value differs from the paper's by the constant ``(1/t)·log|Ω|`` per region.
"""

from __future__ import annotations

import torch

from wsol.losses.barrier import extended_log_barrier
from wsol.losses.entropy import Reduction, reduce


def region_size(masks: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Size of each map: the sum over the last two (spatial) dims (Eqs. 10-11); divided by
    the number of pixels when ``normalize``. ``masks``: ...×H×W → ``...``."""
    if masks.dim() < 2:
        raise ValueError(f"region_size expects ...×H×W masks, got shape {tuple(masks.shape)}")
    s = masks.sum(dim=(-2, -1))
    if normalize:
        s = s / (masks.shape[-2] * masks.shape[-1])
    return s


def size_lower_barrier(
    sizes: torch.Tensor, t: float, lower: float | torch.Tensor = 0.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Constraint ``sizes ≥ lower`` as the extended log-barrier ``ψ_t(lower − sizes)``."""
    return reduce(extended_log_barrier(lower - sizes, t), reduction)


def absolute_size_constraint(
    fg: torch.Tensor, t: float, normalize: bool = True, reduction: Reduction = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """ASC of max-min-uncertainty Eq. 7 on a soft foreground ``fg`` (B×H×W in [0, 1]) and its
    background ``1 − fg``: returns ``(ψ_t(−s+), ψ_t(−s−))`` (each reduced over the batch).
    Their sum is ``−(1/t)(log s+ + log s−)`` wherever both regions hold ≥ 1/t² of the image."""
    s_fg = region_size(fg, normalize)
    s_bg = region_size(1.0 - fg, normalize)
    return size_lower_barrier(s_fg, t, reduction=reduction), size_lower_barrier(s_bg, t, reduction=reduction)


def size_bounds_penalty(
    sizes: torch.Tensor,
    lower: float | torch.Tensor = 0.0,
    upper: float | torch.Tensor = float("inf"),
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Kervadec et al. (2019) quadratic penalty for ``lower ≤ sizes ≤ upper``:
    ``relu(lower − s)² + relu(s − upper)²`` (bounds broadcast against ``sizes``, so each
    image can have its own, e.g. ``[1, |Ω|]`` when the class is present, ``[0, 0]`` when absent)."""
    lower = torch.as_tensor(lower, dtype=sizes.dtype, device=sizes.device)
    upper = torch.as_tensor(upper, dtype=sizes.dtype, device=sizes.device)
    if bool((lower > upper).any()):
        raise ValueError("size_bounds_penalty: a lower bound exceeds its upper bound")
    below = torch.relu(lower - sizes)
    above = torch.relu(sizes - upper)
    return reduce(below**2 + above**2, reduction)
