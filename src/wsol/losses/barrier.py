"""Extended log-barrier (Kervadec et al., "Constrained deep networks: Lagrangian
optimization via log-barrier extensions", 2019), used for the size constraints of
max-min-uncertainty-histology.txt (Eq. 7) and f-cam.txt (Eq. 3).

An inequality constraint ``z ≤ 0`` becomes the penalty

    ψ_t(z) = −(1/t)·log(−z)                        if z ≤ −1/t²
             t·z − (1/t)·log(1/t²) + 1/t           otherwise,

a standard log-barrier inside the feasible set, continued by its tangent at
``z = −1/t²`` (value ``(2/t)·log t``, slope ``t``), so the penalty is finite and has a
gradient for infeasible points too. ψ_t and its derivative are continuous. A larger ``t``
approximates the hard constraint better; ``t`` grows during training (:class:`BarrierSchedule`).

(The f-cam.txt extraction garbles the formula; the piecewise form above is Kervadec et
al.'s, as quoted in the task issue.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def extended_log_barrier(z: torch.Tensor, t: float) -> torch.Tensor:
    """Element-wise ψ_t(z) for the constraint ``z ≤ 0`` (any shape, differentiable)."""
    t = float(t)
    if not t > 0:
        raise ValueError(f"log-barrier t must be > 0, got {t}")
    thr = -1.0 / t**2
    inside = z <= thr
    # clamp so the unused branch never takes log of a non-negative number (no NaN grads)
    z_in = torch.minimum(z, torch.full_like(z, thr))
    log_branch = -torch.log(-z_in) / t
    lin_branch = t * z - math.log(1.0 / t**2) / t + 1.0 / t
    return torch.where(inside, log_branch, lin_branch)


@dataclass(frozen=True)
class BarrierSchedule:
    """``t`` of the barrier at an epoch: ``t = min(t0 · factor^epoch, t_max)`` (epoch 0-based).

    Computed from the epoch instead of accumulated, so a resumed run gets the same ``t``
    (max-min-uncertainty-histology.txt §3.3: GlaS t0=5, ×1.01/epoch, t_max=10;
    CAMELYON16-P512 t0=10, ×1.1/epoch, t_max=30; f-cam.txt §4.1: t0=1, ×1.01, t_max=10)."""

    t0: float = 5.0
    factor: float = 1.01
    t_max: float = 10.0

    def __post_init__(self) -> None:
        if not self.t0 > 0:
            raise ValueError(f"log-barrier t0 must be > 0, got {self.t0}")
        if not self.factor >= 1:
            raise ValueError(f"log-barrier factor must be >= 1, got {self.factor}")
        if not self.t_max >= self.t0:
            raise ValueError(f"log-barrier t_max ({self.t_max}) must be >= t0 ({self.t0})")

    def t_at(self, epoch: int) -> float:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        # log-space comparison avoids overflow of factor**epoch for long runs
        if epoch * math.log(self.factor) >= math.log(self.t_max / self.t0):
            return float(self.t_max)
        return float(self.t0 * self.factor**epoch)
