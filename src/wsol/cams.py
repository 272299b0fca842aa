"""The CAM contract (DESIGN.md): a float tensor B×H×W at the input's resolution,
per-image min-max normalised to [0, 1], a constant map becoming all zeros, no NaN.

This module sits at the bottom of the layer stack: methods, extractors and metrics all
use it, and it imports nothing from wsol but the errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from wsol.errors import ConfigError, MetricError


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-image min-max normalisation of ``maps`` (B×H×W or B×C×H×W, normalised over the
    last two dims). A constant map (max - min <= eps) becomes all zeros."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values
    hi = flat.max(dim=-1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.view_as(maps)


def to_cam(maps: torch.Tensor, size: tuple[int, ...] | None = None) -> torch.Tensor:
    """Turn low-resolution maps (B×h×w or B×1×h×w) into contract CAMs: bilinear upsampling
    to ``size`` (H, W) with ``align_corners=False``, then per-image min-max to [0, 1].
    NaN/inf values raise :class:`MetricError` instead of silently spreading."""
    if maps.dim() == 4:
        if maps.shape[1] != 1:
            raise ValueError(f"to_cam expects B×h×w or B×1×h×w maps, got shape {tuple(maps.shape)}")
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(f"to_cam expects B×h×w maps, got shape {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise MetricError(
            "CAM contains NaN or inf values; the model or extractor produced a non-finite map "
            "(check the learning rate / loss for divergence)."
        )
    maps = maps.float()
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return minmax_normalize(maps)


def check_cams(cams: torch.Tensor, name: str = "cams") -> torch.Tensor:
    """Validate the CAM contract; returns the tensor (float32) or raises MetricError."""
    if not isinstance(cams, torch.Tensor):
        cams = torch.as_tensor(cams)
    if cams.dim() != 3:
        raise MetricError(f"{name}: expected a B×H×W tensor, got shape {tuple(cams.shape)}")
    cams = cams.float()
    if not torch.isfinite(cams).all():
        n_bad = int((~torch.isfinite(cams)).sum())
        raise MetricError(f"{name}: {n_bad} NaN/inf values; CAMs must be finite (CAM contract)")
    if cams.numel() and (cams.min() < 0 or cams.max() > 1):
        raise MetricError(
            f"{name}: values in [{float(cams.min()):.4g}, {float(cams.max()):.4g}], expected [0, 1]; "
            "normalise with wsol.cams.to_cam / minmax_normalize first"
        )
    return cams


# --- the one copy of "logits of a model output" and "which class to localise" ----------
def model_logits(out: Any) -> torch.Tensor:
    """Logits of a model output: a tensor B×C or an object with ``.logits``."""
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model(images) must return B×C logits or an object with .logits, got {got}")
    return logits


def select_targets(logits: torch.Tensor, targets: torch.Tensor | Sequence[int] | int | None) -> torch.Tensor:
    """Per-sample class ids: ``targets`` (tensor, list or one int for the whole batch) or
    the predicted class."""
    b, c = logits.shape
    if targets is None:
        return logits.detach().argmax(dim=1)
    t = torch.as_tensor(targets, device=logits.device).long().flatten()
    if t.numel() == 1 and b != 1:
        t = t.expand(b)
    if t.numel() != b:
        raise ConfigError(f"{t.numel()} targets for a batch of {b} images; give one class id per image")
    if t.numel() and (t.min() < 0 or t.max() >= c):
        raise ConfigError(f"target class ids must lie in [0, {c - 1}], got [{int(t.min())}, {int(t.max())}]")
    return t
