"""Backbones that return feature maps (B×C×h×w), built from torchvision.

``build_backbone(cfg)`` gives a module with ``out_channels`` and ``stride`` attributes.
``cam_friendly=True`` applies the WSOL protocol's higher-resolution variants (Choe et al.,
2020, as used by the survey): ResNet-50 with layer3 and layer4 at stride 1 (28×28 maps at 224²),
VGG-16 without its last max-pool (14×14 at 224²), Inception-v3 cut after Mixed_6e.

Weights: ``none`` (random init, the default), a torchvision weights enum name (e.g.
``IMAGENET1K_V1`` or ``ResNet50_Weights.IMAGENET1K_V2``; downloaded by torchvision when
online, a clear error offline), or a local file path to a state dict (torchvision key
names, with or without a ``backbone.`` prefix; the classifier ``fc``/``classifier`` keys
are ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torchvision.models as tvm

from wsol.config import BackboneConfig
from wsol.errors import ConfigError


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Channel-wise (x - mean) / std. wsol images stay in [0, 1] everywhere (masking an
    image by a CAM happens in that space); each backbone normalises its own input."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FeatureBackbone(nn.Module):
    """A trunk as named children run in order after input normalisation; ``forward``
    returns the last feature map (B×out_channels×h×w)."""

    def __init__(self, layers: dict[str, nn.Module], out_channels: int, stride: int):
        super().__init__()
        self.normalize = Normalize()
        for name, mod in layers.items():
            self.add_module(name, mod)
        self._order = list(layers)
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for name in self._order:
            x = getattr(self, name)(x)
        return x


def _resnet(name: str, cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    net = getattr(tvm, name)(weights=None)
    stride = 32
    if cam_friendly:
        # wsolevaluation's ResNet50-CAM with large_feature_map: layer3 and layer4 at stride 1
        # (output stride 8 -> 28×28 maps at 224²). In each, the first block's strided conv
        # (conv2 of a Bottleneck, conv1 of a BasicBlock) and its 1×1 downsample stop striding.
        for layer in (net.layer3, net.layer4):
            block = layer[0]
            conv = block.conv2 if hasattr(block, "conv3") else block.conv1
            conv.stride = (1, 1)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
        stride = 8
    layers = {k: getattr(net, k) for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")}
    return net, FeatureBackbone(layers, net.fc.in_features, stride)


def _vgg16(cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    net = tvm.vgg16(weights=None)
    feats = net.features
    stride = 32
    if cam_friendly:
        feats = nn.Sequential(*list(feats.children())[:-1])  # drop pool5
        stride = 16
    return net, FeatureBackbone({"features": feats}, 512, stride)


def _inception_v3(cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    net = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
    names = [
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
        "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    ]
    channels, stride = 768, 16
    if not cam_friendly:
        names += ["Mixed_7a", "Mixed_7b", "Mixed_7c"]
        channels, stride = 2048, 32
    return net, FeatureBackbone({n: getattr(net, n) for n in names}, channels, stride)


_BUILDERS: dict[str, Callable[[bool], tuple[nn.Module, FeatureBackbone]]] = {
    "resnet18": lambda cf: _resnet("resnet18", cf),
    "resnet50": lambda cf: _resnet("resnet50", cf),
    "vgg16": _vgg16,
    "inception_v3": _inception_v3,
}

_WEIGHT_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "vgg16": "VGG16_Weights",
    "inception_v3": "Inception_V3_Weights",
}


#: builders that load special weights values themselves: name -> {weights value -> builder}
_WEIGHTED_BUILDERS: dict[str, dict[str, Callable[[bool], tuple[nn.Module, FeatureBackbone]]]] = {}


def register_backbone(
    name: str,
    builder: Callable[[bool], tuple[nn.Module, FeatureBackbone]],
    weights: dict[str, Callable[[bool], tuple[nn.Module, FeatureBackbone]]] | None = None,
) -> None:
    """Register a backbone builder ``cam_friendly -> (full_net, FeatureBackbone)``.
    ``weights`` maps special weights values (e.g. ``imagenet-offline``) to builders that
    return the network with those weights loaded; other values go the usual way."""
    _BUILDERS[name] = builder
    if weights:
        _WEIGHTED_BUILDERS[name] = {k.lower(): v for k, v in weights.items()}


def available_backbones() -> list[str]:
    return sorted(_BUILDERS)


def _state_dict_from_weights(name: str, weights: str) -> dict[str, torch.Tensor]:
    path = Path(weights).expanduser()
    if path.suffix in {".pt", ".pth", ".bin", ".ckpt"} or path.exists():
        if not path.is_file():
            raise ConfigError(f"model.backbone.weights: file {path} not found (expected a state-dict .pth file)")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt / not a torch file
            raise ConfigError(f"model.backbone.weights: cannot read {path} as a torch state dict ({e})") from None
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        return {k.removeprefix("backbone.").removeprefix("module."): v for k, v in sd.items()}
    enum_name = _WEIGHT_ENUMS.get(name)
    if enum_name is None:
        special = "".join(f"'{k}', " for k in _WEIGHTED_BUILDERS.get(name, {}))
        raise ConfigError(f"model.backbone.weights: backbone {name!r} has no torchvision weights; use {special}'none' or a local file")
    enum_cls = getattr(tvm, enum_name)
    member = weights.split(".")[-1]
    if weights.count(".") and weights.split(".")[0] != enum_name:
        raise ConfigError(f"model.backbone.weights: {weights!r} is not a {enum_name} member")
    if not hasattr(enum_cls, member):
        valid = ", ".join(m for m in enum_cls.__members__)
        raise ConfigError(f"model.backbone.weights: unknown {enum_name} member {member!r}; valid: {valid}, none, or a file path")
    w = getattr(enum_cls, member)
    try:
        return w.get_state_dict(progress=False)
    except Exception as e:  # offline: URLError / OSError
        raise ConfigError(
            f"model.backbone.weights: could not download {enum_name}.{member} ({e.__class__.__name__}: {e}). "
            "Offline? Download the file elsewhere and pass its local path as model.backbone.weights."
        ) from None


def build_backbone(cfg: BackboneConfig) -> FeatureBackbone:
    if cfg.name not in _BUILDERS:
        raise ConfigError(f"model.backbone.name: unknown backbone {cfg.name!r}; valid: {', '.join(available_backbones())}")
    special = _WEIGHTED_BUILDERS.get(cfg.name, {}).get(cfg.weights.lower())
    if special is not None:
        return special(cfg.cam_friendly)[1]
    full, trunk = _BUILDERS[cfg.name](cfg.cam_friendly)
    if cfg.weights.lower() != "none":
        sd = _state_dict_from_weights(cfg.name, cfg.weights)
        own = full.state_dict()
        keep = {k: v for k, v in sd.items() if k in own and not k.startswith(("fc.", "classifier.", "AuxLogits."))}
        shape_bad = [k for k, v in keep.items() if own[k].shape != v.shape]
        if shape_bad:
            raise ConfigError(f"model.backbone.weights: shape mismatch for {shape_bad[:3]} (weights of another architecture?)")
        missing = [k for k in own if k not in keep and not k.startswith(("fc.", "classifier.", "AuxLogits."))]
        if not keep or len(missing) > len(own) // 2:
            raise ConfigError(
                f"model.backbone.weights: the weights match only {len(keep)} of {len(own)} tensors of {cfg.name}; "
                "expected a torchvision state dict of the same architecture"
            )
        full.load_state_dict(keep, strict=False)
    return trunk


def _efficientnet_lite0(cam_friendly: bool, weights: str = "none") -> tuple[nn.Module, FeatureBackbone]:
    from wsol.nn.efficientnet import efficientnet_lite0_backbone  # lazy: timm is only needed here

    return efficientnet_lite0_backbone(cam_friendly, weights)


register_backbone(
    "efficientnet_lite0",
    _efficientnet_lite0,
    weights={"imagenet-offline": lambda cf: _efficientnet_lite0(cf, "imagenet-offline")},
)
