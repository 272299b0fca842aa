"""Gradient-based extractors: Grad-CAM, Grad-CAM++, Smooth-Grad-CAM++, XGrad-CAM, LayerCAM.

Notation: A = activations of the target layer (B×K×h×w), G = ∂s_c/∂A with s_c the
pre-softmax score (logit) of the target class c. Gradients are taken with
``torch.autograd.grad`` on the hooked activation only (the backward stops at the layer),
inside ``torch.enable_grad()`` so that the extractors also work under ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.cams import select_targets
from wsol.errors import ConfigError
from wsol.explain.base import Extractor, LayerSpec, fuse_layer_maps, target_scores


def _weighted_sum(weights: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """ReLU(Σ_k w_k A_k): weights B×K, acts B×K×h×w -> B×h×w."""
    return F.relu(torch.einsum("bk,bkhw->bhw", weights, acts))


class GradientExtractor(Extractor):
    """Shared forward + gradient pass of the gradient-based extractors."""

    def _acts_and_grads(
        self, images: torch.Tensor, targets: torch.Tensor | None, differentiable: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Maps A_l and gradients ∂s_c/∂A_l (each B×K×h×w) of every target layer, and the
        targets used (given, else predicted)."""
        # Not differentiable: the part of the model before the (first) target layer runs
        # without autograd; the hook turns grad on at the layer, so the graph (and the
        # backward) covers only layer -> logits. Differentiable: the full graph is kept.
        self._leaf_grad = True
        try:
            with torch.enable_grad() if differentiable else torch.no_grad():
                logits, acts = self._forward(images)
                t = select_targets(logits, targets)
                with torch.enable_grad():
                    score = target_scores(logits, t).sum()  # samples are independent: Σ_b s_c(b)
            if not score.requires_grad:
                raise ConfigError(
                    f"{type(self).__name__}: the target score does not depend on layer(s) {self.layer_names}"
                )
            grads = torch.autograd.grad(score, acts, create_graph=differentiable, allow_unused=True)
        finally:
            self._leaf_grad = False
        unused = [n for n, g in zip(self.layer_names, grads) if g is None]
        if unused:
            raise ConfigError(
                f"{type(self).__name__}: the target score does not depend on layer(s) {unused}; "
                "pick a layer before the classifier"
            )
        if not differentiable:
            acts = [a.detach() for a in acts]
            grads = tuple(g.detach() for g in grads)
        return [self.to_maps(a) for a in acts], [self.to_maps(g) for g in grads], t


class GradCAM(GradientExtractor):
    """Grad-CAM (Selvaraju et al., 2017; survey Eqs. 10-11):
    M_c = ReLU(Σ_k A_{c,k} F_k), A_{c,k} = 1/(HW) Σ_ij ∂s_c/∂F_{k,ij}."""

    def _maps(self, images: torch.Tensor, targets: Any, differentiable: bool) -> torch.Tensor:
        (acts,), (grads,), _ = self._acts_and_grads(images, targets, differentiable)
        return _weighted_sum(grads.mean(dim=(2, 3)), acts)  # Eq. 11 weights, Eq. 10 map


def gradcampp_weights(acts: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, g3: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights (Chattopadhyay et al., 2018, Eqs. 10 and 19):
    α_ij = g²_ij / (2 g²_ij + Σ_ab A_ab g³_ij),  w_k = Σ_ij α_ij ReLU(g_ij).
    With the exponential score Y = exp(s_c) the paper's 2nd/3rd derivatives are exp(s_c)·g²
    and exp(s_c)·g³; exp(s_c) cancels in α and is a positive per-image factor in w, so it
    is dropped (no overflow for large logits; the normalised CAM is unchanged).
    ``g2``/``g3`` are g² and g³ (or their means over noisy copies, Smooth-Grad-CAM++).
    Where the denominator is 0 (g = 0) α is 0."""
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    alpha = torch.where(denom != 0, g2 / safe, torch.zeros_like(denom))
    return (alpha * F.relu(g1)).sum(dim=(2, 3))


class GradCAMPlusPlus(GradientExtractor):
    """Grad-CAM++ (Chattopadhyay et al., 2018): second/third-order gradient weights."""

    def _maps(self, images: torch.Tensor, targets: Any, differentiable: bool) -> torch.Tensor:
        (acts,), (g,), _ = self._acts_and_grads(images, targets, differentiable)
        g2 = g * g
        return _weighted_sum(gradcampp_weights(acts, g, g2, g2 * g), acts)


class SmoothGradCAMPlusPlus(GradientExtractor):
    """Smooth-Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with the 1st/2nd/3rd-order
    gradients averaged over ``n_samples`` noisy copies of the input. ``sigma`` is the noise
    standard deviation in the units of the *normalised* input, as in torchcam's
    ``SmoothGradCAMpp`` (``std=0.3``, added to the normalised tensor) and F-CAM (defaults
    n=4, sigma=0.3). The extractor sees [0, 1] images and the model normalises them, so the
    noise added here is N(0, (sigma·std_c)²) per colour channel c, std being the model's
    normalisation (``normalization``; ImageNet's std ≈ 0.226 when the model has no
    ``Normalize`` module): after the model's normalisation it is N(0, sigma²). Targets and
    activations A come from the clean image. ``seed`` makes the noise repeatable."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, *, n_samples: int = 4, sigma: float = 0.3,
                 seed: int | None = None, **kw: Any):
        super().__init__(model, target_layer, **kw)
        if n_samples < 1 or sigma < 0:
            raise ConfigError(f"SmoothGradCAMPlusPlus: need n_samples >= 1 and sigma >= 0, got {n_samples}, {sigma}")
        self.n_samples, self.sigma, self.seed = n_samples, sigma, seed

    def _maps(self, images: torch.Tensor, targets: Any, differentiable: bool) -> torch.Tensor:
        with torch.set_grad_enabled(differentiable):
            logits, (act,) = self._forward(images)
        t = select_targets(logits, targets)
        acts = self.to_maps(act if differentiable else act.detach())
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=images.device).manual_seed(self.seed)
        # σ in normalised units -> σ·std_c in the units of the images given to the extractor
        scale = (self.sigma * self.input_stats(images.device)[1]).to(images.dtype)
        sums: list[torch.Tensor] = []  # Σ G, Σ G², Σ G³ over the noisy copies
        for _ in range(self.n_samples):
            noise = torch.randn(images.shape, generator=gen, device=images.device, dtype=images.dtype)
            _, (g,), _ = self._acts_and_grads(images + scale * noise, t, differentiable)
            gg = g * g
            powers = [g, gg, gg * g]
            sums = powers if not sums else [s + p for s, p in zip(sums, powers)]
        n = self.n_samples
        g1, g2, g3 = (s / n for s in sums)
        return _weighted_sum(gradcampp_weights(acts, g1, g2, g3), acts)


class XGradCAM(GradientExtractor):
    """XGrad-CAM (Fu et al., 2020, the closed-form solution of its two axioms):
    w_k = Σ_ij (A_k,ij / Σ_ab A_k,ab) · ∂s_c/∂A_k,ij;  M = ReLU(Σ_k w_k A_k).
    Channels with Σ A_k = 0 get w_k = 0."""

    def _maps(self, images: torch.Tensor, targets: Any, differentiable: bool) -> torch.Tensor:
        (acts,), (grads,), _ = self._acts_and_grads(images, targets, differentiable)
        num = (acts * grads).sum(dim=(2, 3))
        den = acts.sum(dim=(2, 3))
        w = torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))
        return _weighted_sum(w, acts)


class LayerCAM(GradientExtractor):
    """LayerCAM (Jiang et al., 2021): M = ReLU(Σ_k ReLU(∂s_c/∂A_k) ⊙ A_k),
    element-wise weights. Several target layers (a list) are fused: each layer's map is
    upsampled to the finest layer grid and min-max normalised; the maps of the shallow
    layers — every target layer but the deepest, i.e. the one the forward runs last — are
    scaled by tanh(gamma·M) (the paper's §III-C scaling of shallow-layer maps, gamma=2;
    ``gamma=None`` disables it), the deepest layer's map is used as it is; then they are
    fused by element-wise ``max`` (the paper's fusion, default) or ``sum``. With several
    layers, ``raw=True`` returns the fused map on the finest grid."""

    multi_layer = True

    def __init__(self, model: nn.Module, target_layer: LayerSpec | Sequence[LayerSpec], *, fuse: str = "max",
                 gamma: float | None = 2.0, **kw: Any):
        super().__init__(model, target_layer, **kw)
        if fuse not in ("max", "sum"):
            raise ConfigError(f"LayerCAM: fuse must be 'max' or 'sum', got {fuse!r}")
        self.fuse, self.gamma = fuse, gamma

    def _maps(self, images: torch.Tensor, targets: Any, differentiable: bool) -> torch.Tensor:
        acts, grads, _ = self._acts_and_grads(images, targets, differentiable)
        maps = [F.relu((F.relu(g) * a).sum(dim=1)) for a, g in zip(acts, grads)]
        deepest = self._fired[-1] if self._fired else len(maps) - 1
        return fuse_layer_maps(maps, self.fuse, self.gamma, shallow=[i != deepest for i in range(len(maps))])
