"""SPG, Self-Produced Guidance (Zhang et al., ECCV 2018; survey §2.2.1): attention maps of
the top classifier and of shallower layers are thresholded into foreground / background /
ignore seeds, which supervise auxiliary branches with pixel-wise losses, so the shallower
layers learn the object's extent.

Network (wsolevaluation ``wsol/resnet.py``/``vgg.py``/``inception.py``, ``ResNetSpg`` & co.):

- the backbone, with two taps on shallower units: ``b1_after`` (wsolevaluation: ResNet
  ``layer3.0``, VGG-16 pool4 = ``features.23``, Inception ``Mixed_5d``) and ``b2_after``
  (ResNet end of ``layer3``, VGG-16 conv5_3 = ``features.29``, Inception ``Mixed_6d``);
- SPG-A: the classifier, a 1×1 conv to class maps + GAP on the last features (our CAM head);
- SPG-B: ``B1 = shared(conv3×3+ReLU(tap1))``, ``B2 = shared(conv3×3+ReLU(tap2))`` with
  ``shared`` = conv3×3+ReLU, conv1×1 to one logit map; SPG-C: conv3×3+ReLU, conv1×1 on the
  last features (``branch_channels`` = the convs' width, wsolevaluation: 512 for VGG /
  Inception, 1024 for ResNet).

Seeds (``spg_seeds``; reference ``get_mask``): 1 where the map ``> δ_h`` (if fewer than 30
pixels pass, ``> 0.7·max`` instead), 0 where ``< δ_l`` (background wins), 255 (ignored)
elsewhere; all maps are bilinearly upsampled to the input size first.

Loss (reference ``get_loss``; each term a BCE-with-logits mean over the seeded pixels):

- ``ce``: cross-entropy of SPG-A,
- ``spg_b2``: B2 against the seeds of the attention map, SPG-A's map of the label class
  min-max normalised (``δ1h``, ``δ1l``),
- ``spg_b1``: B1 against the seeds of ``sigmoid(B2)`` (``δ2h``, ``δ2l``),
- ``spg_c``: SPG-C against the seeds of the fused map ``(sigmoid(B1)+sigmoid(B2))/2``
  (``δ3h``, ``δ3l``),
- ``total`` = their sum. Seeds come from detached maps (no gradient through thresholds).

CAM (as wsolevaluation): SPG-A's class map of the target. Defaults: wsolevaluation's
thresholds (0.7, 0.01), (0.5, 0.05), (0.7, 0.1). Not copied: wsolevaluation's VGG/Inception
SPG adds two extra convolutions (and dropout) before SPG-A; here the head is the CAM
method's, as for the other methods.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from wsol.cams import to_cam
from wsol.config import BackboneConfig
from wsol.data.sample import IGNORE, Batch
from wsol.errors import ConfigError
from wsol.methods.adl import check_units, run_units, trunk_units, unit_channels
from wsol.methods.base import MethodParams, Output, TrainState, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.pooling import GAPHead


def _last_block(layer: str):
    def pick(units: list[str]) -> str:
        return [u for u in units if u.startswith(layer + ".")][-1]

    return pick


#: wsolevaluation's taps (B1, B2) as unit names of our backbones; callables pick by depth;
#: "resnet" serves every ResNet (wsolevaluation has ResNet-50 only)
DEFAULT_TAPS = {
    "resnet": ("layer3.0", _last_block("layer3")),
    "vgg16": ("features.23", "features.29"),
    "inception_v3": ("Mixed_5d", "Mixed_6d"),
}

#: reference get_mask: fewer foreground pixels than this -> threshold at 0.7·max instead
MIN_FG_PIXELS = 30
FG_FALLBACK_RATIO = 0.7


def _thr(default: float, grid: str, what: str):
    return Field(default, ge=0.0, le=1.0, description=f"{what}. Survey Table 7 grid: {grid}.")


class SPGParams(MethodParams):
    delta1_high: float = _thr(0.7, "δ1h in {0.5, 0.7}", "foreground threshold of the attention map (B2's seeds)")
    delta1_low: float = _thr(0.01, "δ1l in {0.01, 0.05, 0.1}", "background threshold of the attention map (B2's seeds)")
    delta2_high: float = _thr(0.5, "δ2h in {0.5, 0.6, 0.7}", "foreground threshold of sigmoid(B2) (B1's seeds)")
    delta2_low: float = _thr(0.05, "δ2l in {0.01, 0.05, 0.1}", "background threshold of sigmoid(B2) (B1's seeds)")
    delta3_high: float = _thr(
        0.7, "δ3h in {0.5, 0.6, 0.7}", "foreground threshold of the fused B1/B2 map (SPG-C's seeds)"
    )
    delta3_low: float = _thr(
        0.1, "δ3l in {0.01, 0.05, 0.1}", "background threshold of the fused B1/B2 map (SPG-C's seeds)"
    )
    branch_channels: int = Field(
        512, ge=1, description="width of the SPG-B / SPG-C convolutions (wsolevaluation: 512, 1024 for ResNet-50)"
    )
    b1_after: str | None = Field(None, description="backbone unit feeding B1 (null: wsolevaluation's, e.g. layer3.0)")
    b2_after: str | None = Field(
        None, description="backbone unit feeding B2 (null: wsolevaluation's, e.g. the end of layer3)"
    )

    @model_validator(mode="after")
    def _low_below_high(self):
        for i in (1, 2, 3):
            lo, hi = getattr(self, f"delta{i}_low"), getattr(self, f"delta{i}_high")
            if lo > hi:
                raise ValueError(f"delta{i}_low ({lo}) must not exceed delta{i}_high ({hi})")
        return self


def spg_seeds(attention: torch.Tensor, high: float, low: float, min_fg: int = MIN_FG_PIXELS) -> torch.Tensor:
    """Seeds of a B×H×W map: 1 (foreground) where ``> high`` — where fewer than ``min_fg``
    pixels of an image pass, where ``> 0.7·max`` instead —, 0 (background) where ``< low``
    (overriding foreground), 255 (ignore) elsewhere. Float B×H×W (reference ``get_mask``)."""
    fg = attention > high
    few = fg.flatten(1).sum(dim=1) < min_fg
    peak = attention.flatten(1).max(dim=1).values.view(-1, 1, 1)
    fg = torch.where(few.view(-1, 1, 1), attention > FG_FALLBACK_RATIO * peak, fg)
    seeds = torch.full_like(attention, float(IGNORE))
    seeds = torch.where(fg, torch.ones_like(seeds), seeds)
    return torch.where(attention < low, torch.zeros_like(seeds), seeds)


def seeded_bce(logits: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the seeded (non-ignored) pixels (reference
    ``loss_attention``); 0 when no pixel is seeded."""
    valid = (seeds != IGNORE).to(logits.dtype)
    target = torch.where(seeds == IGNORE, torch.zeros_like(seeds), seeds)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (bce * valid).sum() / valid.sum().clamp_min(1.0)


def _up(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B×1×h×w logits -> B×H×W, bilinear (align_corners=False, as the reference's nn.Upsample)."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]


def _conv_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


@register
class SPG(PooledMethod):
    """SPG: self-produced guidance; thresholded attention seeds supervise auxiliary branches on shallower layers."""

    name = "spg"
    Params = SPGParams
    #: lighter params for tests/test_contract.py (narrow branches)
    contract_params: ClassVar[dict] = {"branch_channels": 32}

    def __init__(self, params: SPGParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        units = [n for n, _ in trunk_units(self.backbone)]
        is_resnet = getattr(self.backbone, "family", "") == "resnet" or backbone.name.startswith("resnet")
        default = DEFAULT_TAPS.get("resnet" if is_resnet else backbone.name, (None, None))
        taps: list[str] = []
        for i, (given, fallback) in enumerate(zip((params.b1_after, params.b2_after), default)):
            tap = given if given is not None else fallback
            if tap is None:
                raise ConfigError(
                    f"model.method.params (spg).b{i + 1}_after: no default tap for backbone {backbone.name!r}; "
                    f"name the units feeding B1 and B2, among: {', '.join(units)}"
                )
            taps.append(tap(units) if callable(tap) else tap)
        check_units(self.backbone, taps, "model.method.params (spg).b1_after/b2_after")
        self.taps = tuple(taps)
        ch = unit_channels(self.backbone, self.taps)
        m = params.branch_channels
        self.b1_in = _conv_relu(ch[self.taps[0]], m)  # SPG_B_1a
        self.b2_in = _conv_relu(ch[self.taps[1]], m)  # SPG_B_2a
        self.b_shared = nn.Sequential(_conv_relu(m, m), nn.Conv2d(m, 1, 1))  # SPG_B_shared
        self.c = nn.Sequential(_conv_relu(self.backbone.out_channels, m), nn.Conv2d(m, 1, 1))  # SPG_C

    def build_head(self, in_channels: int, num_classes: int) -> GAPHead:
        return GAPHead(in_channels, num_classes)  # SPG-A: 1×1 conv class maps + GAP

    def forward(self, images: torch.Tensor) -> Output:
        feats, tapped = run_units(self.backbone, images, taps=self.taps)
        logits, maps = self.head(feats)
        b1 = self.b_shared(self.b1_in(tapped[self.taps[0]]))
        b2 = self.b_shared(self.b2_in(tapped[self.taps[1]]))
        return Output(logits=logits, maps=maps, extras={"features": feats, "b1": b1, "b2": b2, "c": self.c(feats)})

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        p, labels = self.params, batch.labels
        size = (batch.images.shape[-2], batch.images.shape[-1])
        out = self(batch.images)
        ce = F.cross_entropy(out.logits, labels)
        b1, b2, c = (_up(out.extras[k], size) for k in ("b1", "b2", "c"))
        with torch.no_grad():
            idx = torch.arange(len(labels), device=labels.device)
            attention = to_cam(out.maps.detach()[idx, labels], size)  # SPG-A's label map, upsampled, min-max
            b2_prob = torch.sigmoid(b2.detach())
            fused = (torch.sigmoid(b1.detach()) + b2_prob) / 2
        loss_b2 = seeded_bce(b2, spg_seeds(attention, p.delta1_high, p.delta1_low))
        loss_b1 = seeded_bce(b1, spg_seeds(b2_prob, p.delta2_high, p.delta2_low))
        loss_c = seeded_bce(c, spg_seeds(fused, p.delta3_high, p.delta3_low))
        total = ce + loss_b2 + loss_b1 + loss_c  # reference get_loss: the four terms, unweighted
        return {"ce": ce, "spg_b2": loss_b2, "spg_b1": loss_b1, "spg_c": loss_c, "total": total}
