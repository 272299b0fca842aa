"""No-training baselines, evaluated by the one :class:`~wsol.engine.evaluate.Evaluator`.

- **All-ones** (min-max-entropy Table 2, max-min-uncertainty Table 1, lower bound): the
  constant mask 1 everywhere. Thresholded at 0.5 it marks every pixel ROI, so on an image
  with foreground fraction p its F1+ = 2·TP/(2·TP+FP+FN) = 2p/(p + 1) and F1− = 0 (no true
  negative); PxAP = the pooled foreground fraction (one threshold, precision = p).
- **Center Gaussian** (f-cam Table 1 "Center baseline", wsolevaluation): an isotropic
  Gaussian centred on the image, exp(−d²/2σ²) with σ = ``sigma`` × the shorter side, d the
  distance of a pixel centre to the image centre, min-max normalised (the CAM contract);
  the no-training floor of PxAP / MaxBoxAcc. σ changes how the values spread over the
  threshold grid, not their order.

Both are tiny ``nn.Module`` s with the method interface the Evaluator uses: ``forward``
returns constant logits (they do not classify: their accuracy is not reported by the
suites) and ``localize`` returns the map. :func:`evaluate_baseline` scores one on a split
the way :func:`wsol.engine.pipeline.evaluate_run` scores a checkpoint (τ* from valpx for
the thresholded metrics) and writes the same files (``eval/baseline/<split>/``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn

from wsol.cams import minmax_normalize
from wsol.config import RunConfig
from wsol.engine.callbacks import Callbacks
from wsol.engine.evaluate import EvalResult, Evaluator
from wsol.errors import ConfigError
from wsol.fileio import write_json
from wsol.methods.base import Output
from wsol.runs import eval_dir, resolve_device

#: the metrics.json column a baseline's numbers are stored under
COLUMN = "baseline"


class Baseline(nn.Module, ABC):
    """A localiser without parameters: constant logits, a fixed map."""

    name: ClassVar[str] = ""
    classifies: ClassVar[bool] = False
    binary_threshold: float | None = None

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> Output:
        return Output(logits=images.new_zeros(images.shape[0], self.num_classes))

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = images.shape
        return self.map((h, w), images.device).expand(b, h, w).contiguous()

    @abstractmethod
    def map(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """The 1×H×W map in [0, 1]."""


class AllOnes(Baseline):
    """The constant mask 1 (lower bound: F1+ = 2p/(1+p), F1− = 0)."""

    name = "all-ones"

    def map(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        return torch.ones(1, *size, device=device)


class CenterGaussian(Baseline):
    """An isotropic Gaussian centred on the image, σ = ``sigma`` × the shorter side."""

    name = "center-gaussian"

    def __init__(self, num_classes: int = 2, sigma: float = 0.25):
        super().__init__(num_classes)
        if not sigma > 0:
            raise ConfigError(f"center-gaussian: sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def map(self, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        h, w = size
        s = self.sigma * min(h, w)
        # pixel centres at i + 0.5; the image centre at (h/2, w/2)
        ys = torch.arange(h, device=device, dtype=torch.float32) + 0.5 - h / 2
        xs = torch.arange(w, device=device, dtype=torch.float32) + 0.5 - w / 2
        d2 = ys.view(h, 1) ** 2 + xs.view(1, w) ** 2
        return minmax_normalize(torch.exp(-d2 / (2 * s * s))[None])


def build_baseline(name: str, num_classes: int = 2, sigma: float = 0.25) -> Baseline:
    if name == AllOnes.name:
        return AllOnes(num_classes)
    if name == CenterGaussian.name:
        return CenterGaussian(num_classes, sigma)
    raise ConfigError(f"unknown baseline {name!r}; valid: {AllOnes.name}, {CenterGaussian.name}")


def all_ones_f1(p: float) -> float:
    """F1+ (%) of the All-ones mask on an image with foreground fraction ``p`` > 0: 2p/(1+p)."""
    if not 0 < p <= 1 or math.isnan(p):
        raise ValueError(f"foreground fraction must lie in (0, 1], got {p}")
    return 100.0 * 2 * p / (1 + p)


def evaluate_baseline(cfg: RunConfig, out_dir: Path | str, baseline: Baseline, split: str = "test",
                      callbacks: Callbacks | None = None) -> EvalResult:
    """Score ``baseline`` on ``split`` of ``cfg.data`` (τ* of the thresholded metrics from
    valpx, as for a trained run) and write ``out_dir/eval/baseline/<split>/`` (metrics,
    curves, gallery). Returns the result; the caller merges it into the summary."""
    from wsol.data.registry import get_dataset
    from wsol.engine.pipeline import save_gallery
    from wsol.engine.trainer import make_loader

    cb = callbacks or Callbacks()
    spec = get_dataset(cfg.data.name)
    device = resolve_device(cfg.device)
    ev = Evaluator(baseline.to(device), loc_kind=spec.loc, device=device)
    tau = None
    if split != "valpx":
        loader = make_loader(cfg, "valpx", train=False)
        cb.on_stage(f"{baseline.name}: valpx (τ*)", len(loader.dataset))  # type: ignore[arg-type]
        tau = ev.run(loader, progress=cb.on_advance).metrics.get("tau")
    loader = make_loader(cfg, split, train=False)
    cb.on_stage(f"{baseline.name}: {split}", len(loader.dataset))  # type: ignore[arg-type]
    res = ev.run(loader, tau=tau, progress=cb.on_advance, gallery=cfg.eval.gallery)
    out = eval_dir(out_dir, COLUMN, split)
    write_json(out / "metrics.json", res.metrics)
    write_json(out / "curves.json", res.curves)
    save_gallery(out / "gallery.npz", res.gallery)
    return res
