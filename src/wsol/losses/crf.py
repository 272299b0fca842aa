"""CRF loss (f-cam Eq. B.1, after Tang et al. 2018, "On regularized losses for
weakly-supervised CNN segmentation"):

    R(S, X) = Σ_k S_kᵀ W (1 − S_k),   W_ij = exp(−|p_i − p_j|²/2σ_xy² − |X_i − X_j|²/2σ_rgb²)

for the softmax maps S (B×K×H×W) of an image X: pixels that are close and of similar colour
are pushed to the same state. ``W`` is the dense Gaussian kernel over all pixel pairs, self
term included (W_ii = 1); it is applied with one of the filters of :mod:`wsol.losses.bilateral`:

- ``"fast"`` (default) — the dense bilateral grid (step 0.5σ): within ~1 % of ``"exact"`` on
  R (bound tested: ≤ 2 % at 48×48 on random smooth images and maps, measured ≤ 0.6 %; the
  gradient w.r.t. the logits ≤ 5 % in L2 norm, measured ≤ 3.4 %),
  O(pixels + grid cells), right for the wide kernels of this loss (σ_xy = 100 px, σ_rgb = 15).
  It refuses kernels so narrow that the grid would not fit, pointing to ``"lattice"``.
- ``"exact"`` — W materialised block by block, O(N²): the oracle, for small images.
- ``"lattice"`` — the permutohedral lattice of Tang et al.'s DenseCRFLoss, the code F-CAM
  ran: the authors' operator (the same forward values to float rounding; the gradient here
  uses the lattice's exact transpose where theirs reuses W), any kernel width, but not the
  Gaussian it stands for — its W is ≈ 0.6 × the exact one on 224² photographs for these σ
  (≈ 0.5 on 48×48 synthetic images) and shaped differently (wider, flatter).

Normalisation — the convention of F-CAM's code (sbelharbi/fcam-wsol,
``dlib/crf/dense_crf_loss.py``: Tang et al.'s DenseCRFLoss called from
``ConRanFieldFcams``): R is *summed* over pixels and classes and divided by the batch size;
colours are on the 0..255 scale (F-CAM passes the un-normalised image; here images in [0, 1]
are multiplied by 255), σ_rgb = 15, σ_xy = 100 pixels at the loss's input resolution, the
weight multiplies the result (the caller does that here). ``scale_factor`` < 1 is Tang's
down-scaling (image nearest, maps bilinear, σ_xy × scale_factor; as there, nothing
compensates the ≈ scale⁴ fewer pixel pairs); F-CAM's ``crf_scale`` is 1. Their forward is
``−Σ_k S_kᵀ W S_k``; when the S_k sum to one, Eq. B.1 equals ``1ᵀW1 − Σ_k S_kᵀ W S_k``, so the
two differ by a constant of the image and give the same gradient w.r.t. the logits — this
module returns Eq. B.1 (≥ 0, zero for a constant hard labelling). With this normalisation a
224² photograph with a soft 120-px blob as S gives R ≈ 3–5·10⁷ (each pixel's row of W sums
to ≈ 2–3·10³ on average), so the paper's λ = 2e-9 makes λR ≈ 0.06–0.1, the scale of its
cross-entropy terms — that is why λ is so small, and why a per-pixel mean (÷ 50 176) or a
different colour scale would make it meaningless. The one remaining factor is W itself:
λ = 2e-9 (Tang et al.'s value, kept by F-CAM) goes with the lattice's ≈ 0.6 × W (0.60–0.64
of the exact R measured on skimage's chelsea, coffee, astronaut at 224²), so
``method="lattice"`` with λ = 2e-9 reproduces the paper's term, and ``"fast"``/``"exact"``
with λ ≈ 1.2e-9 give the same strength.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from wsol.errors import ConfigError
from wsol.losses.bilateral import FILTERS, pixel_features

CRFMethod = Literal["fast", "exact", "lattice"]
_FILTER_OF = {"fast": "grid", "exact": "exact", "lattice": "lattice"}
# "exact" materialises B·N² kernel entries; beyond this it would take minutes on a CPU.
_EXACT_MAX_ENTRIES = 2**33


def crf_loss(
    images: torch.Tensor,
    probs: torch.Tensor,
    *,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale_factor: float = 1.0,
    method: CRFMethod = "fast",
    grid_step: float = 0.5,
) -> torch.Tensor:
    """R(S, X) of f-cam Eq. B.1 summed over pixels and classes, averaged over the batch
    (multiply by λ yourself; F-CAM: 2e-9, see the module docstring for the convention).

    ``images``: B×3×H×W in [0, 1] (not differentiated); ``probs``: B×K×H×W softmax maps (the
    decoder's S, or ``[1 − s, s]`` for a sigmoid map). Returns a scalar (float32, or float64
    for float64 maps), differentiable w.r.t. ``probs`` on CPU and CUDA."""
    if method not in _FILTER_OF:
        raise ConfigError(f"unknown CRF-loss method {method!r}; choose one of {sorted(_FILTER_OF)}")
    if images.dim() != 4 or probs.dim() != 4 or images.shape[0] != probs.shape[0]:
        raise ValueError(
            f"crf_loss expects images B×3×H×W and probs B×K×H×W, got {tuple(images.shape)} and {tuple(probs.shape)}"
        )
    if images.shape[-2:] != probs.shape[-2:]:
        raise ValueError(
            f"images ({tuple(images.shape[-2:])}) and probs ({tuple(probs.shape[-2:])}) must have the same H×W; "
            "upsample the maps to the image size first"
        )
    if not 0 < scale_factor <= 1:
        raise ConfigError(f"scale_factor must lie in (0, 1], got {scale_factor}")
    if probs.dtype != torch.float64:  # float64 stays (gradcheck); half precision is promoted
        probs = probs.float()
    images = images.detach().to(probs.dtype)
    if scale_factor != 1.0:  # Tang et al.'s down-scaling
        images = F.interpolate(images, scale_factor=scale_factor, mode="nearest", recompute_scale_factor=False)
        probs = F.interpolate(
            probs, scale_factor=scale_factor, mode="bilinear", align_corners=False, recompute_scale_factor=False
        )
        sigma_xy = sigma_xy * scale_factor
    b, k, h, w = probs.shape
    if method == "exact" and b * (h * w) ** 2 > _EXACT_MAX_ENTRIES:
        raise ConfigError(
            f"method='exact' would materialise {b}×{h * w}² kernel entries; it is the oracle for small images. "
            "Use method='fast' (or scale_factor < 1)."
        )
    features = pixel_features(images, sigma_xy, sigma_rgb)
    if method == "fast":
        op = FILTERS["grid"](features, step=grid_step)
    else:
        op = FILTERS[_FILTER_OF[method]](features)
    s = probs.flatten(2).transpose(1, 2)  # B×N×K
    # Eq. B.1: Σ_k S_kᵀ W (1 − S_k), summed over the batch, then / B as in DenseCRFLoss.
    return (s * op(1.0 - s)).sum() / b
