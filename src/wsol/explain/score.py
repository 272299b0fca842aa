"""Score-based (gradient-free) extractors: Score-CAM, SS-CAM, IS-CAM, Ablation-CAM.

They weigh the target layer's channels A_k (B×K×h×w) by how the target class score moves
when the input is masked by a channel (Score-CAM family) or when a channel is switched
off (Ablation-CAM). All scoring passes run under ``torch.no_grad()``.

Masking baseline (Score-CAM family): the input masked by a map M ∈ [0, 1] is
X_M = b + M ⊙ (X − b), b the baseline colour. ``baseline="mean"`` (default) is the model's
normalisation mean (``normalization``, see :mod:`wsol.explain.base`): what torchcam and
pytorch-grad-cam do when they multiply the *normalised* input by M (masked-out pixels become
0 in normalised units, the mean colour in pixel units). ``"black"`` is b = 0 (X ⊙ M, wsol's
behaviour before), or give a colour (one value per channel, in the images' units).

Speed. The masked forward passes are batched over (image, channel) pairs — and over the
noise draws / scales of SS-CAM / IS-CAM — ``batch_size`` images per forward, or, by
default, as many as ``memory_budget`` bytes allow (the per-image cost of a forward is
measured on the baseline forward). Only what cannot change the result is skipped:

- channels that carry no spatial information: a constant map normalises to the all-zero
  mask, X_0 is the baseline image, so its increase of confidence is exactly 0 (the
  official Score-CAM code skips them too); an all-zero channel for Ablation-CAM, whose
  removal changes nothing;
- duplicates: channels of an image whose min-max normalised low-resolution maps are
  identical give the same mask, hence the same score (sparse post-ReLU layers have many,
  e.g. one-hot maps at the same position); one forward serves them all.

Ablation-CAM only changes the target layer's output, so the layers before it are never
re-run: the model is cut after the layer (:mod:`wsol.explain.split`, torch.fx) and each
ablated activation goes through the tail only (for ResNet-50's ``layer4``: average pooling
and the classifier). The cut is checked on every batch (the tail must reproduce the
model's logits); models that cannot be traced run the full forward with the layer's output
replaced, as before (``head_only=False`` forces that).

``top_k`` (optional) scores only the k channels of largest spatial variance per image (the
"faster Score-CAM" variant of the official repository); the others get weight 0.

``differentiable=True`` keeps the graph of the activations A_k; the weights α are
constants (they come from no-grad forward passes).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.cams import minmax_normalize, select_targets
from wsol.errors import ConfigError
from wsol.explain.base import Extractor, LayerSpec, target_scores
from wsol.explain.split import Split, split_after

#: default memory for the batched forwards (bytes)
DEFAULT_MEMORY_BUDGET = 1 << 30


class ScoreExtractor(Extractor):
    """Shared pass: clean forward (activations, targets), channel weights from batched
    no-grad forward passes, map ReLU(Σ_k α_k A_k). ``batch_size``: images per scoring
    forward (default: from ``memory_budget``, bytes)."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, *, batch_size: int | None = None,
                 memory_budget: float = DEFAULT_MEMORY_BUDGET, top_k: int | None = None, **kw: Any):
        super().__init__(model, target_layer, **kw)
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"{type(self).__name__}: batch_size must be >= 1 (or None: from memory_budget), "
                              f"got {batch_size}")
        if not memory_budget > 0:
            raise ConfigError(f"{type(self).__name__}: memory_budget must be > 0 bytes, got {memory_budget}")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"{type(self).__name__}: top_k must be >= 1 or None, got {top_k}")
        self.batch_size, self.memory_budget, self.top_k = batch_size, float(memory_budget), top_k

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

    def _per_forward(self, per_image_bytes: float) -> int:
        """Images per scoring forward: ``batch_size``, or what ``memory_budget`` allows."""
        if self.batch_size is not None:
            return self.batch_size
        return int(max(1, min(4096, self.memory_budget // max(per_image_bytes, 1.0))))

    @abstractmethod
    def _channel_weights(self, images: torch.Tensor, act: torch.Tensor, acts: torch.Tensor, logits: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
        """Channel weights α (B×K, float32) of the target layer's channels."""


def _probe_bytes(model: nn.Module, run: Any) -> tuple[Any, float]:
    """``run()``'s result and an estimate of the memory one image of it takes in a no-grad
    forward: its input plus three times the largest output of a leaf module."""
    largest = [0.0]

    def hook(_m: nn.Module, inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() > 0:
            largest[0] = max(largest[0], out.numel() * out.element_size() / out.shape[0])

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    try:
        out = run()
    finally:
        for h in handles:
            h.remove()
    return out, 3.0 * largest[0]


class MaskScoreExtractor(ScoreExtractor):
    """The Score-CAM family: weights from the target probability of the input masked by
    each channel's upsampled, min-max normalised map H_k (see the module docstring for the
    masking baseline ``baseline``)."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, *,
                 baseline: str | Sequence[float] = "mean", **kw: Any):
        super().__init__(model, target_layer, **kw)
        if isinstance(baseline, str):
            if baseline not in ("mean", "black"):
                raise ConfigError(f"{type(self).__name__}: baseline must be 'mean', 'black' or a colour, got {baseline!r}")
        else:
            try:
                baseline = tuple(float(v) for v in baseline)
            except (TypeError, ValueError):
                raise ConfigError(f"{type(self).__name__}: baseline must be 'mean', 'black' or a colour "
                                  f"(one value per channel), got {baseline!r}") from None
        self.baseline = baseline
        self._step = 1  # (image, channel) pairs per scoring forward, set per call

    def _repeats(self) -> int:
        """Masked inputs per (image, channel) pair (SS-CAM's noise draws, IS-CAM's scales)."""
        return 1

    def baseline_colour(self, images: torch.Tensor) -> torch.Tensor:
        """b, 1×C×1×1 in the images' units (see ``baseline``)."""
        c = images.shape[1]
        if self.baseline == "black":
            return images.new_zeros(1, c, 1, 1)
        if self.baseline == "mean":
            col = self.input_stats(images.device)[0]
        else:
            col = torch.tensor(self.baseline, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        if col.shape[1] not in (1, c):
            raise ConfigError(f"{type(self).__name__}: baseline colour has {col.shape[1]} values, images {c} channels")
        return col.to(images.dtype).expand(1, c, 1, 1)

    def _masked(self, x: torch.Tensor, masks: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """X_M = b + M ⊙ (X − b) (X ⊙ M for the black baseline, exactly as before)."""
        if base is None:
            return x * masks
        return torch.addcmul(base, masks, x - base)

    def _probs(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Softmax probability of class t[i] for input x[i]."""
        return target_scores(self._run(x).float().softmax(dim=1), t)

    def _channel_weights(self, images: torch.Tensor, act: torch.Tensor, acts: torch.Tensor, logits: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
        b, k = acts.shape[:2]
        size = tuple(images.shape[-2:])
        flat = acts.flatten(2)
        lo, hi = flat.amin(-1), flat.amax(-1)
        weights = torch.zeros(b, k, device=acts.device, dtype=torch.float32)
        bi_all, ki_all = self._pairs(acts, hi > lo)
        if bi_all.numel() == 0:
            return weights
        col = self.baseline_colour(images)
        base = None if self.baseline == "black" else col
        # masked images per forward: batch_size, or what memory_budget allows (measured on one image)
        if self.batch_size is None:
            _, per_image = _probe_bytes(self.model, lambda: self._run(images[:1]))
            per_image += images[0].numel() * images.element_size() * 2  # the masked input and its mask
        else:
            per_image = 0.0
        self._step = max(1, self._per_forward(per_image) // self._repeats())  # pairs per forward
        self._gen = self._generator(images)
        base_scores = self._baseline_scores(images, t, base)  # p_c(X_b) per image
        # duplicate masks: identical normalised low-resolution maps of one image score alike
        norm = (flat[bi_all, ki_all] - lo[bi_all, ki_all, None]) / (hi - lo)[bi_all, ki_all, None]
        rows = torch.cat([bi_all[:, None].to(norm.dtype), norm], dim=1)
        uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
        first = torch.full((len(uniq),), len(rows), dtype=torch.long, device=rows.device)
        first.scatter_reduce_(0, inverse, torch.arange(len(rows), device=rows.device), reduce="amin")
        bi, ki = bi_all[first], ki_all[first]
        step = self._step
        scores = torch.empty(len(bi), device=acts.device, dtype=torch.float32)
        for s in range(0, len(bi), step):
            cb, ck = bi[s : s + step], ki[s : s + step]
            # H_k = s(Up(A_k)): bilinear upsampling to the input size, min-max to [0, 1]
            masks = F.interpolate(acts[cb, ck][:, None], size=size, mode="bilinear", align_corners=False)
            masks = minmax_normalize(masks)
            scores[s : s + step] = self._masked_score(images[cb], masks, t[cb], base)
        weights[bi_all, ki_all] = scores[inverse] - base_scores[bi_all]
        return weights

    def _generator(self, images: torch.Tensor) -> torch.Generator | None:
        return None

    def _baseline_scores(self, images: torch.Tensor, t: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """p_c(X_b) per image, X_b = the baseline image (X masked by an all-zero mask): one
        forward, the baseline image being the same for every image."""
        x0 = self._masked(images[:1], torch.zeros_like(images[:1, :1]), base)
        probs = self._run(x0).float().softmax(dim=1)
        return probs[0, t]

    def _masked_score(self, x: torch.Tensor, masks: torch.Tensor, t: torch.Tensor,
                      base: torch.Tensor | None) -> torch.Tensor:
        """Confidence p_c(X_M) of the masked inputs (n×C×H×W, masks n×1×H×W)."""
        return self._probs(self._masked(x, masks, base), t)


class ScoreCAM(MaskScoreExtractor):
    """Score-CAM (Wang et al., 2020; survey Eq. 12): α_k = CIC(A_k) = p_c(X_{H_k}) − p_c(X_b),
    the channel-wise increase of confidence with p_c the softmax probability of the target,
    H_k the upsampled min-max normalised channel map, X_{H_k} = b + H_k ⊙ (X − b) the masked
    input and X_b the baseline image (``baseline``: the mean colour by default, as the
    peers). (pytorch-grad-cam and torchcam instead use softmax_k of the masked-input logits.)"""


class SSCAM(MaskScoreExtractor):
    """SS-CAM (Naidu & Michael, 2020): Score-CAM with the confidence averaged over
    ``n_samples`` noisy masks, α_k = E_δ[p_c(X_{H_k + δ})] − E_δ[p_c(X_δ)], each expectation
    a mean over N draws of δ ~ N(0, sigma²) per pixel (shared by the colour channels; the
    noise is on the mask, which has no units). The baseline is the same noise on an
    all-zero mask (the noisy version of Score-CAM's X_b), so a channel without information
    (H_k = 0) scores 0 in expectation; with the plain X_b baseline, noise alone (sigma=2)
    pushes every confidence below it and the map vanishes. Defaults N=35, sigma=2 (the
    paper's values, as in F-CAM Table F.4). ``seed`` makes the noise repeatable. The draws
    of a pair run in the same forward as other pairs' (batched)."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, *, n_samples: int = 35, sigma: float = 2.0,
                 seed: int | None = None, **kw: Any):
        super().__init__(model, target_layer, **kw)
        if n_samples < 1 or sigma < 0:
            raise ConfigError(f"SSCAM: need n_samples >= 1 and sigma >= 0, got {n_samples}, {sigma}")
        self.n_samples, self.sigma, self.seed = n_samples, sigma, seed
        self._gen: torch.Generator | None = None

    def _repeats(self) -> int:
        return self.n_samples

    def _generator(self, images: torch.Tensor) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator(device=images.device).manual_seed(self.seed)

    def _baseline_scores(self, images: torch.Tensor, t: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        zeros = torch.zeros_like(images[:, :1])
        step = self._step
        chunks = range(0, len(images), step)
        return torch.cat([self._masked_score(images[i : i + step], zeros[i : i + step], t[i : i + step], base)
                          for i in chunks])

    def _masked_score(self, x: torch.Tensor, masks: torch.Tensor, t: torch.Tensor,
                      base: torch.Tensor | None) -> torch.Tensor:
        n, s = x.shape[0], self.n_samples
        noise = torch.randn((s, *masks.shape), generator=self._gen, device=masks.device, dtype=masks.dtype)
        noisy = (masks[None] + self.sigma * noise).flatten(0, 1)  # draw-major: (draw, pair)
        probs = self._probs(self._masked(x.repeat(s, 1, 1, 1), noisy, base), t.repeat(s))
        return probs.view(s, n).mean(dim=0)


class ISCAM(MaskScoreExtractor):
    """IS-CAM (Naidu et al., 2020): Score-CAM integrated along the mask scale, like
    integrated gradients: α_k = 1/N Σ_{i=1..N} p_c(X_{(i/N)·H_k}) − p_c(X_b). Default N=10
    (the paper's). torchcam's ISCAM accumulates the scale coefficients instead
    (Σ_{j<=i} j/N); this follows the integral's definition. The N scales of a pair run in
    the same forward as other pairs' (batched)."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, *, n_samples: int = 10, **kw: Any):
        super().__init__(model, target_layer, **kw)
        if n_samples < 1:
            raise ConfigError(f"ISCAM: n_samples must be >= 1, got {n_samples}")
        self.n_samples = n_samples

    def _repeats(self) -> int:
        return self.n_samples

    def _masked_score(self, x: torch.Tensor, masks: torch.Tensor, t: torch.Tensor,
                      base: torch.Tensor | None) -> torch.Tensor:
        n, s = x.shape[0], self.n_samples
        scales = torch.arange(1, s + 1, device=masks.device, dtype=masks.dtype) / s
        scaled = (masks[None] * scales.view(s, 1, 1, 1, 1)).flatten(0, 1)
        probs = self._probs(self._masked(x.repeat(s, 1, 1, 1), scaled, base), t.repeat(s))
        return probs.view(s, n).mean(dim=0)


class AblationCAM(ScoreExtractor):
    """Ablation-CAM (Desai & Ramaswamy, 2020): w_k = (y_c − y_c^k) / |y_c|, the relative drop
    of the target logit y_c when channel k of the target layer is set to zero; map
    ReLU(Σ_k w_k A_k). The paper divides by y_c; |y_c| keeps the sign meaning "drop" when
    the target logit is negative (same map when y_c > 0). Batched: each forward takes a
    chunk of (image, channel) pairs, the clean activation with that channel zeroed; with
    ``head_only`` (default) only the layers after the target layer run (see the module
    docstring). All-zero channels (nothing to ablate) get w_k = 0."""

    def __init__(self, model: nn.Module, target_layer: LayerSpec, *, head_only: bool = True, **kw: Any):
        super().__init__(model, target_layer, **kw)
        self.head_only = head_only
        self._split: Split | None | bool = False  # False: not built yet

    def _tail(self) -> Split | None:
        if self._split is False:
            self._split = split_after(self.model, self.layers[0]) if self.head_only else None
        return self._split  # type: ignore[return-value]

    def _channel_weights(self, images: torch.Tensor, act: torch.Tensor, acts: torch.Tensor, logits: torch.Tensor,
                         t: torch.Tensor) -> torch.Tensor:
        b, k = acts.shape[:2]
        informative = acts.flatten(2).ne(0).any(dim=-1)
        bi_all, ki_all = self._pairs(acts, informative)
        weights = torch.zeros(b, k, device=acts.device, dtype=torch.float32)
        if bi_all.numel() == 0:
            return weights
        y = target_scores(logits, t).float()
        cdim = self._channel_dim(act)
        tail = self._tail()
        captured = tail.checked_capture(images, act, logits) if tail is not None else None
        per_image = act[0].numel() * act.element_size() * 3.0  # the ablated copy and the tail's activations
        if captured is None:  # the full model runs: measure its forward
            per_image += images[0].numel() * images.element_size() * 3.0
            if self.batch_size is None:
                _, per_image = _probe_bytes(self.model, lambda: self._run(images[:1]))
        step = self._per_forward(per_image)
        for s in range(0, bi_all.numel(), step):
            bi, ki = bi_all[s : s + step], ki_all[s : s + step]
            ablated = act[bi].clone()
            rows = torch.arange(bi.numel(), device=bi.device)
            if cdim == 1:
                ablated[rows, ki] = 0
            else:  # tokens B×T×K: switch feature k off in every token
                ablated[rows, :, ki] = 0
            if tail is not None and captured is not None:
                out = tail(ablated, tail.select(captured, bi))
            else:
                self._override = lambda _out, a=ablated: a
                try:
                    out = self._run(images[bi])
                finally:
                    self._override = None
            y_k = target_scores(out, t[bi]).float()
            weights[bi, ki] = (y[bi] - y_k) / y[bi].abs().clamp_min(1e-12)
        return weights
