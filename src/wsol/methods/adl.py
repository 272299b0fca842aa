"""ADL, Attention-based Dropout Layer (Choe & Shim, CVPR 2019; survey §2.2.1): a
parameter-free layer inserted after chosen backbone blocks, active in training only.

For features F (B×K×h×w): self-attention ``A = mean_k F_k`` (channel mean); drop mask
``M = 1[A < γ·max A]`` (per image; hides the most discriminative part); importance map
``I = sigmoid(A)`` (highlights it). At each forward, with probability ``drop_rate`` the
output is ``F ⊙ M``, otherwise ``F ⊙ I``. In ``eval()`` the layer is the identity. The
network on top and its CAM are the CAM method's (GAP + linear layer, survey Eqs. 2-3).

Followed from wsolevaluation (``wsol/method/adl.py``, the paper leaves these open):

- one Bernoulli draw per forward per layer, shared by the whole batch;
- positions: ResNet-50 after ``layer3.0``, ``layer4.0``, ``layer4.2`` (its
  ``_ADL_POSITION``); VGG-16 after pool3, conv4_3 and conv5_3 (``features.16``,
  ``features.22``, ``features.29``); Inception-v3 after ``Mixed_5d`` and ``Mixed_6e`` (its
  third ADL sits in the extra head convolutions that our CAM head does not have); other
  ResNets (not in wsolevaluation) by analogy, e.g. ResNet-18 after ``layer3.0``, ``layer4.0``,
  ``layer4.1``. Any other backbone needs ``positions``;
- defaults ``drop_rate = 0.75``, ``γ = 0.9``.

Positions are the backbone's units (its ``layer_names`` children in run order, plain
``nn.Sequential`` children expanded one level: ``layer3.0``, ``features.16``, ``Mixed_6e``;
finer than the backbone's decoder ``stage_names``); the layers act through forward hooks
that live for one forward only, so parameter names, pretrained weights and extractor
layer names stay those of the backbone, and extractors' hooks still fire. The helpers
:func:`trunk_units`, :func:`run_units` and :func:`unit_channels` are shared with SPG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
from pydantic import Field

from wsol.config import BackboneConfig
from wsol.errors import ConfigError
from wsol.methods.base import MethodParams, Output, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.backbones import FeatureBackbone
from wsol.nn.pooling import GAPHead


# --- walking a FeatureBackbone unit by unit (shared with SPG) ---------------------------
def trunk_units(backbone: FeatureBackbone) -> list[tuple[str, nn.Module]]:
    """The modules ``backbone.forward`` runs after its input normalisation, in order, with
    plain ``nn.Sequential`` children expanded one level (``layer3`` -> ``layer3.0``, ...).
    Running them in order is ``backbone.forward``."""
    names = getattr(backbone, "layer_names", None)  # the run order (FeatureBackbone.layer_names)
    if names is None:
        names = [n for n, _ in backbone.named_children() if n != "normalize"]
    units: list[tuple[str, nn.Module]] = []
    for name in names:
        mod = backbone.get_submodule(name)
        if type(mod) is nn.Sequential:
            units += [(f"{name}.{i}", m) for i, m in mod.named_children()]
        else:
            units.append((name, mod))
    return units


def check_units(backbone: FeatureBackbone, names: Iterable[str], field: str) -> None:
    """Raise ConfigError when a name is not one of the backbone's units."""
    valid = [n for n, _ in trunk_units(backbone)]
    bad = [n for n in names if n not in valid]
    if bad:
        raise ConfigError(
            f"{field}: {bad[0]!r} is not a unit of this backbone; valid names, in order: {', '.join(valid)}"
        )


def run_units(
    backbone: FeatureBackbone,
    images: torch.Tensor,
    after: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    taps: Iterable[str] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``backbone(images)`` where ``after[name]`` transforms the output of unit ``name``, and
    the outputs of the units named in ``taps`` (after that transform) are returned too.

    Done with forward hooks that live for this call only: the backbone runs its own
    forward, so hooks that others put on its layers (extractors on ``layer4``) still fire,
    and nothing is left on the modules (deep copies, checkpoints unaffected). The units are
    :func:`trunk_units` names, each run once per forward."""
    after, taps = after or {}, set(taps)
    tapped: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
        def fn(module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
            if name in after:
                out = after[name](out)
            if name in taps:  # a copy: a following in-place unit (ReLU(inplace=True)) must not change it
                tapped[name] = out.clone()
            return out

        return fn

    handles = [backbone.get_submodule(n).register_forward_hook(hook(n)) for n in set(after) | taps]
    try:
        x = backbone(images)
    finally:
        for h in handles:
            h.remove()
    return x, tapped


@torch.no_grad()
def unit_channels(backbone: FeatureBackbone, names: Iterable[str], size: int = 128) -> dict[str, int]:
    """Channels of the named units' outputs (one forward of a blank image in eval mode, so
    batch-norm statistics are not touched)."""
    names = list(names)
    was = backbone.training
    backbone.eval()
    try:
        p = next(backbone.parameters(), None)
        x = torch.zeros(1, 3, size, size, device=p.device if p is not None else "cpu")
        _, tapped = run_units(backbone, x, taps=names)
    finally:
        backbone.train(was)
    return {n: int(t.shape[1]) for n, t in tapped.items()}


# --- ADL --------------------------------------------------------------------------------
#: wsolevaluation's positions, as unit names of our backbones (ResNets: see default_positions)
DEFAULT_POSITIONS: dict[str, tuple[str, ...]] = {
    "resnet50": ("layer3.0", "layer4.0", "layer4.2"),
    "vgg16": ("features.16", "features.22", "features.29"),
    "inception_v3": ("Mixed_5d", "Mixed_6e"),
}


def default_positions(name: str, backbone: FeatureBackbone) -> tuple[str, ...] | None:
    """wsolevaluation's ADL positions for backbone ``name``; any ResNet by analogy with
    ResNet-50's (``layer3.0``, ``layer4.0``, ``layer4.2`` or layer4's last block); None if
    there is no default."""
    if name in DEFAULT_POSITIONS:
        return DEFAULT_POSITIONS[name]
    if getattr(backbone, "family", "") == "resnet" or name.startswith("resnet"):
        layer4 = [n for n, _ in trunk_units(backbone) if n.startswith("layer4.")]
        return ("layer3.0", "layer4.0", layer4[min(2, len(layer4) - 1)])
    return None


class AttentionDropout(nn.Module):
    """The ADL layer (Choe & Shim, 2019, Fig. 2): identity in eval(); in train(), ``F ⊙ M``
    with probability ``drop_rate``, else ``F ⊙ sigmoid(A)``, with ``A`` the channel mean and
    ``M = 1[A < γ·max A]``."""

    def __init__(self, drop_rate: float = 0.75, gamma: float = 0.9):
        super().__init__()
        if not 0 <= drop_rate <= 1 or not 0 <= gamma <= 1:
            raise ValueError(f"drop_rate and gamma must lie in [0, 1], got {drop_rate}, {gamma}")
        self.drop_rate, self.gamma = float(drop_rate), float(gamma)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1, keepdim=True)  # self-attention map: channel-wise average

    def drop_mask(self, attention: torch.Tensor) -> torch.Tensor:
        peak = attention.flatten(1).max(dim=1).values.view(-1, 1, 1, 1)
        return (attention < self.gamma * peak).to(attention.dtype)  # 0 where A >= γ·max A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        a = self.attention(x)
        use_drop = float(torch.rand(())) < self.drop_rate  # one draw per forward (wsolevaluation)
        return x * (self.drop_mask(a) if use_drop else torch.sigmoid(a))

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, gamma={self.gamma}"


class ADLParams(MethodParams):
    drop_rate: float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="probability of applying the drop mask (else the importance map) at a forward. "
        "Survey Table 7 grid: drop rate in {0, 0.25, 0.35, 0.45, 0.50, 0.75}.",
    )
    gamma: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="γ: drop the positions whose attention is >= γ·max. Survey Table 7 grid: γ in {0.75, 0.85, 0.90}.",
    )
    positions: list[str] | None = Field(
        None,
        description="backbone units after which an ADL layer acts (e.g. [layer3.0, layer4.0, layer4.2]); "
        "null = wsolevaluation's positions for resnet50 / vgg16 / inception_v3 (resnet18 by analogy).",
    )


@register
class ADL(PooledMethod):
    """ADL: CAM with attention-based dropout layers after chosen backbone blocks (training only)."""

    name = "adl"
    Params = ADLParams

    def __init__(self, params: ADLParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        positions = (
            params.positions if params.positions is not None else default_positions(backbone.name, self.backbone)
        )
        if positions is None:
            raise ConfigError(
                f"model.method.params (adl).positions: no default ADL positions for backbone {backbone.name!r}; "
                f"list the units to follow, chosen among: {', '.join(n for n, _ in trunk_units(self.backbone))}"
            )
        check_units(self.backbone, positions, "model.method.params (adl).positions")
        self.positions = tuple(positions)
        self.adl = AttentionDropout(params.drop_rate, params.gamma)

    def build_head(self, in_channels: int, num_classes: int) -> GAPHead:
        return GAPHead(in_channels, num_classes)

    def forward(self, images: torch.Tensor) -> Output:
        feats, _ = run_units(self.backbone, images, after={p: self.adl for p in self.positions})
        logits, maps = self.head(feats)
        return Output(logits=logits, maps=maps, extras={"features": feats})
