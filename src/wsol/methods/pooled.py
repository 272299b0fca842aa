"""Shared body of the spatial-pooling methods: a backbone, a pooling head that yields
per-class maps and scores, cross-entropy on the image label, and the target class map as
CAM. Each pooling method (cam.py, max_pool.py, ...) only says which head it builds."""

from __future__ import annotations

from abc import abstractmethod

import torch

from wsol.cams import to_cam
from wsol.config import BackboneConfig
from wsol.methods.base import Method, MethodParams, Output
from wsol.nn.backbones import build_backbone
from wsol.nn.pooling import PoolingHead


class PooledMethod(Method):
    def __init__(self, params: MethodParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        self.backbone = build_backbone(backbone)
        self.head = self.build_head(self.backbone.out_channels, num_classes)

    @abstractmethod
    def build_head(self, in_channels: int, num_classes: int) -> PoolingHead:
        """The pooling head of this method."""

    def forward(self, images: torch.Tensor) -> Output:
        feats = self.backbone(images)
        logits, maps = self.head(feats)
        return Output(logits=logits, maps=maps, extras={"features": feats})

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        out = self(images)
        t = self.select_targets(out.logits, targets)
        maps = out.maps[torch.arange(len(t), device=t.device), t]
        return to_cam(maps, tuple(images.shape[-2:]))
