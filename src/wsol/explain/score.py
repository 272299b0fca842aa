"""Score-based (gradient-free) extractors: Score-CAM, SS-CAM, IS-CAM, Ablation-CAM.

They weigh the target layer's channels A_k (B×K×h×w) by how the target class score moves
when the input is masked by a channel (Score-CAM family) or when a channel is switched
off (Ablation-CAM). All scoring passes run under ``torch.no_grad()``; they are batched over
(image, channel) pairs in chunks of ``batch_size`` forward passes — each channel map is
upsampled and normalised once per chunk, no per-channel Python round trips.

Channels that carry no spatial information (a constant map: its normalised mask is all
zeros, so X ⊙ H_k is the baseline image and its Score-CAM increase is exactly 0; an
all-zero channel for Ablation-CAM, whose removal changes nothing) are skipped, as the
official Score-CAM code does. ``top_k`` (optional) scores only the k channels of largest
spatial variance per image (the "faster Score-CAM" variant of the official repository);
the others get weight 0.

``differentiable=True`` keeps the graph of the activations A_k; the weights α are
constants (they come from no-grad forward passes).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.cams import minmax_normalize, select_targets
from wsol.errors import ConfigError
from wsol.explain.base import Extractor, LayerSpec, target_scores


class ScoreExtractor(Extractor):
    """Shared pass: clean forward (activations, targets), channel weights from batched
    no-grad forward passes, map ReLU(Σ_k α_k A_k)."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, *, batch_size: int = 32, top_k: int | None = None,
                 **kw: Any):
        super().__init__(model, target_layer, **kw)
        if batch_size < 1:
            raise ConfigError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"{type(self).__name__}: top_k must be >= 1 or None, got {top_k}")
        self.batch_size, self.top_k = batch_size, top_k

    def _maps(self, images: torch.Tensor, targets: Any, differentiable: bool) -> torch.Tensor:
        with torch.set_grad_enabled(differentiable):
            logits, (act,) = self._forward(images)
        t = select_targets(logits, targets)
        acts = self.to_maps(act)
        with torch.no_grad():
            weights = self._channel_weights(images, act.detach(), acts.detach(), logits.detach(), t)
        # Eq. 12 (survey): M_c = ReLU(Σ_k α_k^c F_k)
        return F.relu(torch.einsum("bk,bkhw->bhw", weights.to(acts.dtype), acts))

    def channel_weights(self, images: torch.Tensor, targets: Any = None) -> torch.Tensor:
        """The channel weights α (B×K) this extractor gives the target layer's channels."""
        self._attach()
        try:
            with torch.no_grad():
                logits, (act,) = self._forward(images)
                t = select_targets(logits, targets)
                return self._channel_weights(images, act, self.to_maps(act), logits, t)
        finally:
            if not self._entered:
                self._detach()
            else:
                self._acts = [None]

    def _pairs(self, acts: torch.Tensor, informative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, channel) index pairs to score: informative channels, optionally only the
        ``top_k`` of largest spatial variance per image."""
        if self.top_k is not None and self.top_k < acts.shape[1]:
            var = acts.flatten(2).var(dim=-1, unbiased=False).masked_fill(~informative, -1.0)
            keep = torch.zeros_like(informative)
            keep.scatter_(1, var.topk(self.top_k, dim=1).indices, True)
            informative = informative & keep
        bi, ki = informative.nonzero(as_tuple=True)
        return bi, ki

    def _probs(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Softmax probability of class t[i] for input x[i]."""
        return target_scores(self._run(x).float().softmax(dim=1), t)

    def _channel_weights(self, images: torch.Tensor, act: torch.Tensor, acts: torch.Tensor, logits: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
        b, k = acts.shape[:2]
        size = tuple(images.shape[-2:])
        flat = acts.flatten(2)
        informative = (flat.amax(-1) - flat.amin(-1)) > 0
        bi_all, ki_all = self._pairs(acts, informative)
        weights = torch.zeros(b, k, device=acts.device, dtype=torch.float32)
        if bi_all.numel() == 0:
            return weights
        base = self._baseline(images, t)
        for s in range(0, bi_all.numel(), self.batch_size):
            bi, ki = bi_all[s : s + self.batch_size], ki_all[s : s + self.batch_size]
            # H_k = s(Up(A_k)): bilinear upsampling to the input size, min-max to [0, 1]
            masks = F.interpolate(acts[bi, ki][:, None], size=size, mode="bilinear", align_corners=False)
            masks = minmax_normalize(masks)
            weights[bi, ki] = self._masked_score(images[bi], masks, t[bi]) - base[bi]
        return weights

    def _baseline(self, images: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p_c(X_b) per image, X_b = 0 (the input masked by an all-zero mask): one forward."""
        probs = self._run(torch.zeros_like(images[:1])).float().softmax(dim=1)
        return probs[0, t]

    def _masked_score(self, x: torch.Tensor, masks: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Confidence p_c(X ⊙ H_k) of the masked inputs (n×3×H×W ⊙ n×1×H×W)."""
        return self._probs(x * masks, t)


class ScoreCAM(ScoreExtractor):
    """Score-CAM (Wang et al., 2020; survey Eq. 12): α_k = CIC(A_k) = p_c(X ⊙ H_k) − p_c(X_b),
    the channel-wise increase of confidence with p_c the softmax probability of the target,
    H_k the upsampled min-max normalised channel map and X_b = 0 the baseline.
    (pytorch-grad-cam and torchcam instead use softmax_k of the masked-input logits.)"""


class SSCAM(ScoreExtractor):
    """SS-CAM (Naidu & Michael, 2020): Score-CAM with the confidence averaged over
    ``n_samples`` noisy masks, α_k = E_δ[p_c(X ⊙ (H_k + δ))] − E_δ[p_c(X ⊙ δ)], each
    expectation a mean over N draws of δ ~ N(0, sigma²) per pixel (shared by the colour
    channels). The baseline is the same noise on an all-zero mask (the noisy version of
    Score-CAM's X_b = 0), so a channel without information (H_k = 0) scores 0 in
    expectation; with the plain X_b = 0 baseline, noise alone (sigma=2) pushes every
    confidence below it and the map vanishes. Defaults N=35, sigma=2 (the paper's values,
    as in F-CAM Table F.4). ``seed`` makes the noise repeatable."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, *, n_samples: int = 35, sigma: float = 2.0,
                 seed: int | None = None, **kw: Any):
        super().__init__(model, target_layer, **kw)
        if n_samples < 1 or sigma < 0:
            raise ConfigError(f"SSCAM: need n_samples >= 1 and sigma >= 0, got {n_samples}, {sigma}")
        self.n_samples, self.sigma, self.seed = n_samples, sigma, seed
        self._gen: torch.Generator | None = None

    def _channel_weights(self, images: torch.Tensor, *args: Any) -> torch.Tensor:
        self._gen = None if self.seed is None else torch.Generator(device=images.device).manual_seed(self.seed)
        return super()._channel_weights(images, *args)

    def _baseline(self, images: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        zeros, bs = torch.zeros_like(images[:, :1]), self.batch_size
        chunks = range(0, len(images), bs)
        return torch.cat([self._masked_score(images[i : i + bs], zeros[i : i + bs], t[i : i + bs]) for i in chunks])

    def _masked_score(self, x: torch.Tensor, masks: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0], device=x.device)
        for _ in range(self.n_samples):
            noise = torch.randn(masks.shape, generator=self._gen, device=masks.device, dtype=masks.dtype)
            total += self._probs(x * (masks + self.sigma * noise), t)
        return total / self.n_samples


class ISCAM(ScoreExtractor):
    """IS-CAM (Naidu et al., 2020): Score-CAM integrated along the mask scale, like
    integrated gradients: α_k = 1/N Σ_{i=1..N} p_c(X ⊙ (i/N)·H_k) − p_c(X_b). Default
    N=10 (the paper's). torchcam's ISCAM accumulates the scale coefficients instead
    (Σ_{j<=i} j/N); this follows the integral's definition."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, *, n_samples: int = 10, **kw: Any):
        super().__init__(model, target_layer, **kw)
        if n_samples < 1:
            raise ConfigError(f"ISCAM: n_samples must be >= 1, got {n_samples}")
        self.n_samples = n_samples

    def _masked_score(self, x: torch.Tensor, masks: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0], device=x.device)
        for i in range(1, self.n_samples + 1):
            total += self._probs(x * (masks * (i / self.n_samples)), t)
        return total / self.n_samples


class AblationCAM(ScoreExtractor):
    """Ablation-CAM (Desai & Ramaswamy, 2020): w_k = (y_c − y_c^k) / |y_c|, the relative drop
    of the target logit y_c when channel k of the target layer is set to zero; map
    ReLU(Σ_k w_k A_k). The paper divides by y_c; |y_c| keeps the sign meaning "drop" when
    the target logit is negative (same map when y_c > 0). Batched: each forward pass
    replaces the layer output of a chunk of (image, channel) pairs by the clean activation
    with that channel zeroed. All-zero channels (nothing to ablate) get w_k = 0."""

    def _channel_weights(self, images: torch.Tensor, act: torch.Tensor, acts: torch.Tensor, logits: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
        b, k = acts.shape[:2]
        informative = acts.flatten(2).ne(0).any(dim=-1)
        bi_all, ki_all = self._pairs(acts, informative)
        weights = torch.zeros(b, k, device=acts.device, dtype=torch.float32)
        y = target_scores(logits, t).float()
        cdim = self._channel_dim(act)
        for s in range(0, bi_all.numel(), self.batch_size):
            bi, ki = bi_all[s : s + self.batch_size], ki_all[s : s + self.batch_size]
            ablated = act[bi].clone()
            rows = torch.arange(bi.numel(), device=bi.device)
            if cdim == 1:
                ablated[rows, ki] = 0
            else:  # tokens B×T×K: switch feature k off in every token
                ablated[rows, :, ki] = 0
            self._override = lambda _out, a=ablated: a
            try:
                y_k = target_scores(self._run(images[bi]), t[bi]).float()
            finally:
                self._override = None
            weights[bi, ki] = (y[bi] - y_k) / y[bi].abs().clamp_min(1e-12)
        return weights
