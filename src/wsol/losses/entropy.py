"""Entropy and Kullback-Leibler terms on softmax posteriors (max-min-uncertainty-histology.txt
§2, Eqs. 1, 4-6, 8-9). Every function takes **logits** (``dim`` is the class axis, any
batch shape around it) and works in log space (``log_softmax``), so a posterior with
a zero-ish component gives no NaN.

Notation: ``p̂ = softmax(logits)``, ``c`` the number of classes, ``q`` the uniform
distribution (``q_k = 1/c``), natural logarithms throughout.

- :func:`entropy`                   ``H(p̂) = −Σ_k p̂_k log p̂_k``                      (Eq. 1, H(p̂, p̂))
- :func:`negative_entropy`          ``−H(p̂)``, the EEM regulariser                     (Eqs. 4, 8)
- :func:`kl_to_uniform`             ``KL(p̂ ‖ q) = log c − H(p̂)``                        (Eq. 5)
- :func:`cross_entropy_to_uniform`  ``H(q, p̂) = −(1/c) Σ_k log p̂_k``, the SEM regulariser (Eqs. 6, 9)
- :func:`kl_from_uniform`           ``KL(q ‖ p̂) = H(q, p̂) − log c``                       (Eq. 6)

Sign convention (Eq. 5): ``−H(p̂) = KL(p̂ ‖ q) − log c``, so minimising the EEM term
maximises the entropy; its minimum, ``−log c``, is reached at ``p̂ = q``. Likewise the SEM
term is ``KL(q ‖ p̂) + log c`` with minimum ``log c`` at ``p̂ = q``. Both differ from their
KL divergence by a constant only, hence "=c" in the paper; they have different gradients
(paper Fig. 3 / appendix A).

``reduction``: ``"mean"`` (over the batch, default), ``"sum"`` or ``"none"`` (per sample).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]


def reduce(x: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Apply a ``"mean" | "sum" | "none"`` reduction."""
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def entropy(logits: torch.Tensor, dim: int = 1, reduction: Reduction = "mean") -> torch.Tensor:
    """Shannon entropy ``H(p̂) = −Σ_k p̂_k log p̂_k`` of ``p̂ = softmax(logits)`` (Eq. 1)."""
    logp = F.log_softmax(logits, dim=dim)
    return reduce(-(logp.exp() * logp).sum(dim=dim), reduction)


def negative_entropy(logits: torch.Tensor, dim: int = 1, reduction: Reduction = "mean") -> torch.Tensor:
    """EEM regulariser ``R(p̂) = −H(p̂)`` (Eq. 8; minimising it maximises the entropy, Eq. 4)."""
    return reduce(-entropy(logits, dim=dim, reduction="none"), reduction)


def kl_to_uniform(logits: torch.Tensor, dim: int = 1, reduction: Reduction = "mean") -> torch.Tensor:
    """``KL(p̂ ‖ q) = Σ_k p̂_k log(c·p̂_k) = log c − H(p̂)`` (Eq. 5), ``q`` uniform."""
    c = logits.shape[dim]
    return reduce(math.log(c) - entropy(logits, dim=dim, reduction="none"), reduction)


def cross_entropy_to_uniform(logits: torch.Tensor, dim: int = 1, reduction: Reduction = "mean") -> torch.Tensor:
    """SEM regulariser ``R(p̂) = H(q, p̂) = −(1/c) Σ_k log p̂_k`` (Eq. 9), ``q`` uniform."""
    return reduce(-F.log_softmax(logits, dim=dim).mean(dim=dim), reduction)


def kl_from_uniform(logits: torch.Tensor, dim: int = 1, reduction: Reduction = "mean") -> torch.Tensor:
    """``KL(q ‖ p̂) = H(q, p̂) − log c`` (Eq. 6), ``q`` uniform."""
    c = logits.shape[dim]
    return reduce(cross_entropy_to_uniform(logits, dim=dim, reduction="none") - math.log(c), reduction)


UNCERTAINTY_REGULARIZERS = {"eem": negative_entropy, "sem": cross_entropy_to_uniform}


def uncertainty_regularizer(
    logits: torch.Tensor, kind: Literal["eem", "sem"], dim: int = 1, reduction: Reduction = "mean"
) -> torch.Tensor:
    """The max-uncertainty term ``R(p̂)`` of Eq. 7: ``"eem"`` → ``−H(p̂)`` (Eq. 8),
    ``"sem"`` → ``H(q, p̂)`` (Eq. 9)."""
    if kind not in UNCERTAINTY_REGULARIZERS:
        raise ValueError(f"uncertainty regulariser must be one of {sorted(UNCERTAINTY_REGULARIZERS)}, got {kind!r}")
    return UNCERTAINTY_REGULARIZERS[kind](logits, dim=dim, reduction=reduction)
