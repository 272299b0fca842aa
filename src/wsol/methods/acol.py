"""ACoL, Adversarial Complementary Learning (Zhang et al., CVPR 2018; survey §2.2.1): two
parallel classifier branches on the backbone features. Branch A finds the most
discriminative region: its class map for the image's class, min-max normalised, is ``≥ δ``
there; those feature positions are erased (set to 0) and branch B classifies the erased
features, so it must find the complementary regions. Both branches are trained with
cross-entropy; the CAM fuses the two class maps.

Followed from wsolevaluation (``wsol/method/acol.py``, ``AcolBase``), where the paper leaves
details open:

- each branch: conv3×3 K→1024, ReLU, conv3×3 1024→1024, ReLU, conv1×1 1024→C, then GAP
  (``mid_channels`` sets the 1024);
- the erasing attention is branch A's map of the *label* class during training and of the
  *target* class in ``localize`` (predicted class in a bare ``forward``), detached, min-max
  normalised per image; erased where ``attention ≥ δ``;
- loss ``CE(s_A, y) + CE(s_B, y)``; ``Output.logits`` are branch A's scores;
- CAM = element-wise max of the two per-image min-max normalised class maps (the paper's
  fusion; ``fuse: mean`` averages them instead);
- default ``δ = 0.7``.

Not copied: wsolevaluation's VGG-16 ACoL also smooths the features with a 3×3 average pool
and uses a different pooling layout; here every backbone is the protocol's trunk as for
the other methods.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from wsol.cams import minmax_normalize, to_cam
from wsol.config import BackboneConfig
from wsol.data.sample import Batch
from wsol.methods.base import Method, MethodParams, Output, TrainState, register
from wsol.nn.backbones import build_backbone


class ACoLParams(MethodParams):
    delta: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="δ: erase the feature positions where branch A's normalised class map is >= δ. "
        "Survey Table 7 grid: δ in {0.5, 0.6, 0.7, 0.8, 0.9}.",
    )
    mid_channels: int = Field(
        1024, ge=1, description="width of each branch's two 3×3 convolutions (wsolevaluation: 1024)"
    )
    fuse: Literal["max", "mean"] = Field(
        "max", description="how the CAM fuses the two branches' normalised maps (paper: max)"
    )


def branch(in_channels: int, mid_channels: int, num_classes: int) -> nn.Sequential:
    """One ACoL classifier: conv3×3, ReLU, conv3×3, ReLU, conv1×1 to class maps."""
    return nn.Sequential(
        nn.Conv2d(in_channels, mid_channels, 3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(mid_channels, mid_channels, 3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(mid_channels, num_classes, 1),
    )


def erase_features(features: torch.Tensor, attention: torch.Tensor, delta: float) -> torch.Tensor:
    """``features`` (B×K×h×w) set to 0 where ``attention`` (B×h×w, in [0, 1]) is ``≥ δ``."""
    keep = (attention < delta).to(features.dtype)[:, None]
    return features * keep


@register
class ACoL(Method):
    """ACoL: two classifier branches, the second on features with the first's most discriminative region erased."""

    name = "acol"
    Params = ACoLParams
    #: lighter params for tests/test_contract.py (narrow branches)
    contract_params: ClassVar[dict] = {"mid_channels": 32}

    def __init__(self, params: ACoLParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        self.backbone = build_backbone(backbone)
        k = self.backbone.out_channels
        self.classifier_a = branch(k, params.mid_channels, num_classes)
        self.classifier_b = branch(k, params.mid_channels, num_classes)

    def branches(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Both branches: ``maps_a``/``maps_b`` (B×C×h×w), ``logits_a``/``logits_b``, the
        erasing ``attention`` (B×h×w) and the ``erased`` features B sees. ``labels`` (B) pick
        the erased class (default: branch A's prediction)."""
        feats = self.backbone(images)
        maps_a = self.classifier_a(feats)
        logits_a = maps_a.mean(dim=(2, 3))  # GAP (survey Eq. 2)
        t = self.select_targets(logits_a, labels)
        idx = torch.arange(len(t), device=t.device)
        attention = minmax_normalize(maps_a.detach()[idx, t])
        erased = erase_features(feats, attention, self.params.delta)
        maps_b = self.classifier_b(erased)
        logits_b = maps_b.mean(dim=(2, 3))
        return {
            "features": feats,
            "maps_a": maps_a,
            "logits_a": logits_a,
            "attention": attention,
            "erased": erased,
            "maps_b": maps_b,
            "logits_b": logits_b,
            "targets": t,
        }

    def fused_maps(self, maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
        """Per-class fusion of the two branches' min-max normalised maps (B×C×h×w)."""
        a, b = minmax_normalize(maps_a), minmax_normalize(maps_b)
        return torch.maximum(a, b) if self.params.fuse == "max" else (a + b) / 2

    def forward(self, images: torch.Tensor) -> Output:
        r = self.branches(images)
        return Output(
            logits=r["logits_a"],
            maps=self.fused_maps(r["maps_a"], r["maps_b"]),
            extras={k: r[k] for k in ("features", "maps_a", "maps_b", "logits_b", "attention")},
        )

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        r = self.branches(batch.images, batch.labels)
        ce_a = F.cross_entropy(r["logits_a"], batch.labels)
        ce_b = F.cross_entropy(r["logits_b"], batch.labels)
        return {"ce_a": ce_a, "ce_b": ce_b, "total": ce_a + ce_b}  # ACoL loss: CE of both branches

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        r = self.branches(images, targets)
        t, idx = r["targets"], torch.arange(len(images), device=images.device)
        fused = self.fused_maps(r["maps_a"][idx, t], r["maps_b"][idx, t])
        return to_cam(fused, (images.shape[-2], images.shape[-1]))
