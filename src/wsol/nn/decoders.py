"""A U-Net-style decoder on a backbone's stage features (shared by F-CAM, NEGEV, the
weight-map generator and the U-Net baseline).

``UNetDecoder(stage_channels, stage_strides, ...)`` (or :meth:`UNetDecoder.for_backbone`)
takes the list returned by :meth:`FeatureBackbone.forward_stages` (shallow to deep) and the
image size, and returns ``out_channels`` maps at the image resolution::

    feats = backbone.forward_stages(images)
    maps = decoder(feats, images.shape[-2:])        # B×out_channels×H×W

Blocks, deepest first. Block i takes the running map ``x`` (at first the deepest stage),
resizes it to the size of the next shallower stage (its skip), concatenates that skip
and applies two 3×3 convolutions (padding 1), each followed by BatchNorm and ReLU. When
the skips are used up (the shallowest stage, stride 2 for every wsol backbone), blocks
without skip double the resolution until the image size (the last one resizes to the
exact image size). So a backbone with n stages whose shallowest stride is 2 gets n blocks.

Upsampling is **bilinear interpolation to the skip's size** (``align_corners=False``), not
a transposed convolution: it handles any size ratio — 1 for the CAM-friendly stages that
share stride 8 (ResNet layer2-4), ≈2 for Inception-v3 whose unpadded convolutions give
odd sizes (109 → 54 → 25 at 224²), any image size that is not a multiple of 32 — adds no
parameters and no checkerboard artefacts, and the two convolutions after it learn the
refinement. (segmentation_models_pytorch, which F-CAM's code builds on, uses nearest ×2.)

Correspondence to the papers:

- **F-CAM** (f-cam.txt §3, Fig. 2, Table F.2): decoder f on the frozen classifier's
  encoder, five blocks 256, 128, 64, 32, 16 for ResNet-50 / Inception-v3 (three, 256,
  128, 64, for F-CAM's VGG16, whose encoder has three resolutions); two output maps
  S = softmax(f(X)) ∈ [0, 1]^{|Ω|×2}, S¹ background and S² foreground: ``out_channels=2,
  final="softmax2"`` (channel 0 background, 1 foreground), ``norm="each"`` and
  ``head="conv"`` (a 3×3 convolution from the last block to the two maps, as in
  segmentation_models_pytorch's head). Train with ``final="none"`` and a log-softmax in the
  loss when numerical stability matters; the maps are the same. :func:`fcam_decoder`.
  With these defaults the ResNet-50 decoder has 9.01 M parameters (Table F.4: ≈9 M), and
  one on F-CAM's Inception encoder widths (64, 80, 288, 768, 1024) 5.70 M (Table F.4: ≈5.7 M).
- **Weight map** (weight-map-wsol.txt §3 "Architecture"): generator g's decoder of five
  upsampling blocks on a ResNet encoder, each "two convolutional layers with a kernel
  size equal to 3 and zero padding equal to one", "batch normalization after the last
  convolution layer before the activation function", ReLU in the first four blocks and a
  sigmoid in the last, skip connections from the encoder block of the same resolution:
  ``out_channels=1, final="sigmoid", norm="last", head="block"`` (the fifth block's second
  convolution gives the single output map, then BN, then the sigmoid). The paper does not
  say what follows a block's first convolution; we apply a ReLU (two stacked linear
  convolutions would collapse into one). Block widths are not given: the F-CAM widths
  are used. :func:`weight_map_decoder`.
- **U-Net baseline / NEGEV**: the F-CAM form (``out_channels=2``; ``final`` as the loss
  needs).

Default widths per backbone family: :data:`FAMILY_CHANNELS` (Table F.2); a decoder with
more blocks than the family's list continues halving (at least 16), one with fewer takes
the first ones. Pass ``channels`` to override.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.errors import ConfigError

Final = Literal["softmax2", "sigmoid", "none"]
Norm = Literal["each", "last"]
Head = Literal["conv", "block"]

#: decoder widths per backbone family, deepest block first (f-cam.txt Table F.2)
FAMILY_CHANNELS: dict[str, tuple[int, ...]] = {
    "resnet": (256, 128, 64, 32, 16),
    "vgg": (256, 128, 64),
    "inception": (256, 128, 64, 32, 16),
}
_GENERIC_CHANNELS = (256, 128, 64, 32, 16)


def default_channels(family: str, n_blocks: int) -> tuple[int, ...]:
    """Decoder widths for ``n_blocks`` blocks of a ``family`` backbone: Table F.2's list,
    cut to ``n_blocks`` or continued by halving (never below 16)."""
    out = list(FAMILY_CHANNELS.get(family, _GENERIC_CHANNELS)[:n_blocks])
    while len(out) < n_blocks:
        out.append(max(16, out[-1] // 2))
    return tuple(out)


class UpBlock(nn.Module):
    """Resize to ``size`` (bilinear), concatenate the skip (if any), then
    conv3×3 → [BN] → ReLU → conv3×3 → BN → activation.

    ``norm="each"``: BN after both convolutions (F-CAM / segmentation_models_pytorch);
    ``norm="last"``: BN after the second only (weight map). ``activation`` follows the last
    BN (ReLU, or Identity when the decoder's final activation comes after this block)."""

    def __init__(self, in_channels: int, skip_channels: int, mid_channels: int, out_channels: int, norm: Norm,
                 activation: nn.Module):
        super().__init__()
        each = norm == "each"
        self.conv1 = nn.Conv2d(in_channels + skip_channels, mid_channels, 3, padding=1, bias=not each)
        self.bn1 = nn.BatchNorm2d(mid_channels) if each else nn.Identity()
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = activation
        self.skip_channels = skip_channels

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = F.relu(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(x)))


class UNetDecoder(nn.Module):
    """U-Net decoder on backbone stages (see the module docstring for the block layout and
    the correspondence to F-CAM and the weight map).

    Parameters: ``stage_channels`` / ``stage_strides`` of the backbone (shallow to deep,
    strides powers of two, non-decreasing); ``out_channels`` output maps; ``channels``: the
    width of each block, deepest first (default :func:`default_channels` of ``family``);
    ``final``: ``"softmax2"`` (softmax over two maps: background, foreground), ``"sigmoid"``
    or ``"none"`` (logits); ``norm``: ``"each"`` or ``"last"`` (BN placement in a block);
    ``head``: ``"conv"`` (a 3×3 conv from the last block to ``out_channels``) or ``"block"``
    (the last block's second conv gives ``out_channels``, then BN, then ``final``).

    ``forward(stages, size) -> B×out_channels×H×W`` with ``(H, W) = size``.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        stage_strides: Sequence[int],
        out_channels: int = 2,
        channels: Sequence[int] | None = None,
        final: Final = "softmax2",
        norm: Norm = "each",
        head: Head = "conv",
        family: str = "",
    ):
        super().__init__()
        stage_channels, stage_strides = list(stage_channels), list(stage_strides)
        if not stage_channels or len(stage_channels) != len(stage_strides):
            raise ConfigError(f"decoder: need one stride per stage, got channels {stage_channels}, strides {stage_strides}")
        if any(s < 1 or s & (s - 1) for s in stage_strides) or stage_strides != sorted(stage_strides):
            raise ConfigError(f"decoder: stage strides must be non-decreasing powers of two, got {stage_strides}")
        if final not in ("softmax2", "sigmoid", "none"):
            raise ConfigError(f"decoder: final must be 'softmax2', 'sigmoid' or 'none', got {final!r}")
        if norm not in ("each", "last") or head not in ("conv", "block"):
            raise ConfigError(f"decoder: norm must be 'each' or 'last' and head 'conv' or 'block', got {norm!r}, {head!r}")
        if out_channels < 1 or (final == "softmax2" and out_channels != 2):
            raise ConfigError(f"decoder: final 'softmax2' needs out_channels=2 (background, foreground), got {out_channels}")
        n_skip = len(stage_channels) - 1
        n_free = int(math.log2(stage_strides[0]))  # ×2 blocks after the shallowest skip
        n_blocks = n_skip + n_free
        if n_blocks < 1:
            raise ConfigError("decoder: the backbone has a single stage at stride 1; nothing to decode")
        widths = tuple(channels) if channels is not None else default_channels(family, n_blocks)
        if len(widths) != n_blocks or min(widths) < 1:
            raise ConfigError(
                f"decoder: channels {list(widths)} must give {n_blocks} positive widths "
                f"({n_skip} blocks with a skip + {n_free} ×2 blocks for stage strides {stage_strides})"
            )
        self.stage_channels, self.stage_strides = stage_channels, stage_strides
        self.channels, self.out_channels, self.final = widths, out_channels, final
        skips = list(reversed(stage_channels[:-1])) + [0] * n_free
        blocks = []
        prev = stage_channels[-1]
        for i, (w, skip) in enumerate(zip(widths, skips)):
            last = i == n_blocks - 1
            out = out_channels if (last and head == "block") else w
            act: nn.Module = nn.Identity() if (last and head == "block") else nn.ReLU(inplace=True)
            blocks.append(UpBlock(prev, skip, w, out, norm, act))
            prev = w
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(widths[-1], out_channels, 3, padding=1) if head == "conv" else nn.Identity()

    @classmethod
    def for_backbone(cls, backbone: nn.Module, **kw) -> UNetDecoder:
        """A decoder for a :class:`~wsol.nn.backbones.FeatureBackbone` (its stage channels,
        strides and family defaults); ``kw`` as in the constructor."""
        kw.setdefault("family", getattr(backbone, "family", ""))
        return cls(backbone.stage_channels, backbone.stage_strides, **kw)  # type: ignore[arg-type]

    def forward(self, stages: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        size = (int(size[0]), int(size[1]))
        got = [int(t.shape[1]) for t in stages]
        if got != self.stage_channels:
            raise ConfigError(f"decoder: built for stage channels {self.stage_channels}, got {got}")
        x = stages[-1]
        skips = list(reversed(stages[:-1]))
        for i, block in enumerate(self.blocks):
            if i < len(skips):
                x = block(x, skips[i], tuple(skips[i].shape[-2:]))
            else:  # no skip left: ×2 per block, the last one exactly to the image size
                left = len(self.blocks) - 1 - i
                target = size if left == 0 else (math.ceil(size[0] / 2**left), math.ceil(size[1] / 2**left))
                x = block(x, None, target)
        x = self.head(x)
        if self.final == "softmax2":
            return torch.softmax(x, dim=1)  # F-CAM's S: [background, foreground], Σ = 1 per pixel
        if self.final == "sigmoid":
            return torch.sigmoid(x)  # weight map's g(I) ∈ [0, 1]
        return x


def fcam_decoder(backbone: nn.Module, channels: Sequence[int] | None = None, final: Final = "softmax2") -> UNetDecoder:
    """F-CAM's decoder (f-cam.txt §3, Table F.2): two maps [background, foreground]."""
    return UNetDecoder.for_backbone(backbone, out_channels=2, channels=channels, final=final, norm="each", head="conv")


def weight_map_decoder(backbone: nn.Module, channels: Sequence[int] | None = None) -> UNetDecoder:
    """The weight-map generator's decoder (weight-map-wsol.txt §3): one map in [0, 1]."""
    return UNetDecoder.for_backbone(backbone, out_channels=1, channels=channels, final="sigmoid", norm="last",
                                    head="block")
