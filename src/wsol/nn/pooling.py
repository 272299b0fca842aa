"""Spatial-pooling heads (survey §2.2). Every head maps backbone features B×K×h×w to
``(logits B×C, maps B×C×h×w)``: ``maps`` are the per-class activation maps (the CAMs
before upsampling), ``logits`` the class scores pooled from them.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class PoolingHead(nn.Module):
    """Interface of the head family: ``forward(features) -> (logits, maps)``."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes


class GAPHead(PoolingHead):
    """GAP + linear layer (Lin et al., survey Eq. 2) and its CAM (Zhou et al., survey Eq. 3).

    The linear layer W (C×K) is applied per position as a 1×1 convolution, so
    ``maps[c] = Σ_k W_ck F_k + b_c`` (Eq. 3) and, because the average is linear,
    ``logits = GAP(maps) = W·GAP(F) + b`` (Eq. 2): one computation gives both.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(in_channels, num_classes)
        self.fc = nn.Linear(in_channels, num_classes)

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        # Eq. 3: M_c = Σ_k W_ck F_k (+ b_c, which min-max normalisation removes)
        return torch.einsum("ck,bkhw->bchw", self.fc.weight, features) + self.fc.bias[None, :, None, None]

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.class_maps(features)
        logits = maps.mean(dim=(2, 3))  # Eq. 2: s_c = (1/hw) Σ_z M_c(z)
        return logits, maps
