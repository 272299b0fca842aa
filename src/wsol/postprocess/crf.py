"""Dense-CRF refinement of a CAM (Krähenbühl & Koltun 2011, "Efficient inference in fully
connected CRFs with Gaussian edge potentials"), as used in min-max-entropy-recursive-erasing
App. B.3.3 through pydensecrf, here in PyTorch: batched, CPU and CUDA.

Model: two labels (background, foreground) per pixel; unary ``ψ_u(l) = −log P(l)`` with
``P = [1 − CAM, CAM]`` clamped to [eps, 1] (pydensecrf's ``unary_from_softmax``); pairwise
Potts potentials ``μ(l, l') = [l ≠ l']`` weighted by

    k(i, j) = w(1)·exp(−|p_i − p_j|²/2θα² − |I_i − I_j|²/2θβ²)      (appearance)
            + w(2)·exp(−|p_i − p_j|²/2θγ²)                         (smoothness)

(positions in pixels, colours on 0..255). Mean-field inference (K&K Alg. 1) as in densecrf:
``Q⁰ = softmax(−ψ_u)``, then ``iterations`` times ``Q = softmax(−ψ_u + Σ_m w(m)·K̃_m Q)``,
with each kernel symmetrically normalised, ``K̃ = D^{-1/2} K D^{-1/2}``, ``D = diag(K 1)`` —
pydensecrf's defaults (``NORMALIZE_SYMMETRIC``, self term included). The kernels are applied
with :mod:`wsol.losses.bilateral`: ``method="lattice"`` (default) is densecrf's own
permutohedral lattice (same messages as pydensecrf to float rounding, O(N), any size);
``"exact"`` materialises the Gaussians (O(N²), small images).

Presets (min-max-entropy App. B.3.3; "W(I) = w(2) = 1" there is w(1) = w(2) = 1):
``glas`` θα = 13, θβ = 3, θγ = 3, 2 iterations; ``natural`` (CUB5, CUB, Oxford flowers)
θα = 19, θβ = 11, θγ = 5, 5 iterations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch

from wsol.cams import check_cams, minmax_normalize
from wsol.errors import ConfigError
from wsol.losses.bilateral import FILTERS, pixel_features

DenseCRFMethod = Literal["lattice", "exact"]
_EXACT_MAX_ENTRIES = 2**33


@dataclass(frozen=True)
class DenseCRFParams:
    """Parameters of the dense CRF (names after Krähenbühl & Koltun 2011, Eq. 3)."""

    w_appearance: float = 1.0  # w(1)
    w_smoothness: float = 1.0  # w(2)
    theta_alpha: float = 19.0  # appearance kernel, position std (pixels)
    theta_beta: float = 11.0  # appearance kernel, colour std (0..255)
    theta_gamma: float = 5.0  # smoothness kernel, position std (pixels)
    iterations: int = 5
    eps: float = 1e-5  # probabilities are clamped to [eps, 1] before −log

    def __post_init__(self) -> None:
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"dense CRF {name} must be > 0, got {getattr(self, name)}")
        for name in ("w_appearance", "w_smoothness"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"dense CRF {name} must be >= 0, got {getattr(self, name)}")
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise ConfigError(f"dense CRF iterations must be an integer >= 0, got {self.iterations!r}")
        if not 0 < self.eps < 0.5:
            raise ConfigError(f"dense CRF eps must lie in (0, 0.5), got {self.eps}")


PRESETS: dict[str, DenseCRFParams] = {
    "glas": DenseCRFParams(theta_alpha=13.0, theta_beta=3.0, theta_gamma=3.0, iterations=2),
    "natural": DenseCRFParams(theta_alpha=19.0, theta_beta=11.0, theta_gamma=5.0, iterations=5),
}


def resolve_params(params: str | DenseCRFParams = "natural", **overrides: Any) -> DenseCRFParams:
    """A preset name or a :class:`DenseCRFParams`, with fields overridden by keyword."""
    if isinstance(params, str):
        if params not in PRESETS:
            raise ConfigError(f"unknown dense-CRF preset {params!r}; choose one of {sorted(PRESETS)}")
        params = PRESETS[params]
    fields = {f.name for f in dataclasses.fields(DenseCRFParams)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown dense-CRF parameter(s) {unknown}; valid: {sorted(fields)}")
    return dataclasses.replace(params, **overrides) if overrides else params


@torch.no_grad()
def dense_crf(
    images: torch.Tensor,
    cams: torch.Tensor,
    params: str | DenseCRFParams = "natural",
    *,
    method: DenseCRFMethod = "lattice",
    normalize: bool = True,
    **overrides: Any,
) -> torch.Tensor:
    """Refine ``cams`` (B×H×W in [0, 1]) on ``images`` (B×3×H×W in [0, 1]) with a dense CRF.

    ``params``: ``"glas"``, ``"natural"`` or a :class:`DenseCRFParams`; keyword overrides
    (``iterations=10``, ``theta_beta=5``, ...) replace fields. Returns the refined foreground
    probability Q(fg), B×H×W in [0, 1]; with ``normalize`` (default) min-max normalised per
    image, the CAM contract (a constant map becomes zeros)."""
    p = resolve_params(params, **overrides)
    if method not in ("lattice", "exact"):
        raise ConfigError(f"unknown dense-CRF method {method!r}; choose 'lattice' or 'exact'")
    cams = check_cams(cams, "dense_crf cams")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"dense_crf expects B×3×H×W images, got shape {tuple(images.shape)}")
    if images.shape[0] != cams.shape[0] or images.shape[-2:] != cams.shape[-2:]:
        raise ValueError(
            f"images {tuple(images.shape)} and cams {tuple(cams.shape)} must have the same batch size and H×W"
        )
    b, h, w = cams.shape
    n = h * w
    if method == "exact" and b * n * n > _EXACT_MAX_ENTRIES:
        raise ConfigError(f"method='exact' would materialise {b}×{n}² kernel entries; use method='lattice'")
    cams = cams.to(images.device)
    images = images.float()
    filt = FILTERS[method]

    prob = torch.stack([1.0 - cams, cams], dim=-1).reshape(b, n, 2)
    unary = -torch.log(prob.clamp(p.eps, 1.0))  # ψ_u = −log P
    kernels = []  # (weight, operator on B×N×2, symmetric normaliser D^{-1/2})
    if p.w_appearance > 0:
        op = filt(pixel_features(images, p.theta_alpha, p.theta_beta))
        kernels.append((p.w_appearance, op, _inv_sqrt_degree(op, b, n, images)))
    if p.w_smoothness > 0:
        # Position-only kernel: the same for every image, so one lattice, images as channels.
        shared = filt(pixel_features(None, p.theta_gamma, size=(h, w)).to(images.device))

        def op(v: torch.Tensor, shared=shared) -> torch.Tensor:
            out = shared(v.transpose(0, 1).reshape(1, n, -1))
            return out.reshape(n, b, -1).transpose(0, 1)

        kernels.append((p.w_smoothness, op, _inv_sqrt_degree(op, b, n, images)))

    q = torch.softmax(-unary, dim=-1)
    for _ in range(p.iterations):  # mean-field updates (K&K Alg. 1, Potts compatibility)
        message = sum(wt * d * op(d * q) for wt, op, d in kernels)
        q = torch.softmax(-unary + message, dim=-1)
    fg = q[..., 1].reshape(b, h, w)
    return minmax_normalize(fg) if normalize else fg


def _inv_sqrt_degree(op, b: int, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(op(like.new_ones(b, n, 1)) + 1e-20)
