"""Backbones that return feature maps (B×C×h×w), built from torchvision (and timm).

``build_backbone(cfg)`` gives a :class:`FeatureBackbone`: ``forward(x)`` is the last
feature map (``out_channels`` channels, output ``stride``), ``forward_stages(x)`` the
features at each resolution a U-Net decoder needs (``stage_names``, ``stage_channels``,
``stage_strides``; see :mod:`wsol.nn.decoders`). Backbones are registered by name in
:data:`BACKBONES` (a lazy table: a module is imported when its name is first used).

``cam_friendly=True`` applies the WSOL protocol's CAM architectures (wsolevaluation, Choe
et al., 2020, with ``large_feature_map``; f-cam.txt Table F.2), all 28×28 maps at 224²
(stride 8): ResNet with layer3 and layer4 at stride 1 (wsol/resnet.py, ResNetCam); VGG-16
without pool4 and pool5, plus conv6 (3×3, 1024 channels) + ReLU (wsol/vgg.py, VggCam);
Inception-v3 as wsol/inception.py's InceptionCam (padded stem and pools, Mixed_6a at stride
1, no Mixed_7, then two 3×3 1024-channel convolutions). EfficientNet-Lite0 gets its last
strided stage at stride 1 (stride 16).

Weights: ``none`` (random init, the default), a torchvision weights enum name (e.g.
``IMAGENET1K_V1`` or ``ResNet50_Weights.IMAGENET1K_V2``; downloaded by torchvision when
online, a clear error offline), a backbone's own special value (``imagenet-offline`` for
efficientnet_lite0), or a local file path to a state dict (torchvision / timm key names,
with or without a ``backbone.`` prefix; the classifier ``fc``/``classifier`` keys are
ignored).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm

from wsol.config import BackboneConfig
from wsol.errors import ConfigError
from wsol.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """Channel-wise (x - mean) / std. wsol images stay in [0, 1] everywhere (masking an
    image by a CAM happens in that space); each backbone normalises its own input."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Stage(NamedTuple):
    """One feature resolution of a backbone: ``name`` is the dotted name (relative to the
    backbone) of the module whose output is the stage's feature map, ``channels`` its
    channel count and ``stride`` its nominal output stride (input size / map size; exact
    for sizes that are multiples of the stride, except Inception-v3, whose unpadded
    convolutions lose a few pixels)."""

    name: str
    channels: int
    stride: int


class FeatureBackbone(nn.Module):
    """A trunk as named children run in order after input normalisation.

    - ``forward(x)`` returns the last feature map (B×out_channels×h×w);
    - ``forward_stages(x)`` returns one feature map per :class:`Stage` (shallow to deep;
      the last one is ``forward(x)``), the skip inputs of a U-Net decoder;
    - ``layer_names``: the named children, in the order ``forward`` runs them;
    - ``stage_names`` / ``stage_channels`` / ``stage_strides``: per stage (aligned lists);
    - ``default_layer``: the module whose output is the feature map (the last stage), the
      usual target layer of a top-down extractor;
    - ``family``: ``resnet``, ``vgg``, ``inception``, ``efficientnet`` (decoder defaults).

    A stage name may point inside a child (``features.15``) when that child is an
    ``nn.Sequential``; ``forward_stages`` then runs the child's parts one by one.
    """

    def __init__(
        self,
        layers: dict[str, nn.Module],
        out_channels: int,
        stride: int,
        stages: Sequence[Stage | tuple[str, int, int]] | None = None,
        family: str = "",
    ):
        super().__init__()
        if not layers:
            raise ValueError("FeatureBackbone needs at least one layer")
        self.normalize = Normalize()
        for name, mod in layers.items():
            if name in self.__dict__ or hasattr(type(self), name):
                raise ValueError(f"layer name {name!r} clashes with an attribute of FeatureBackbone; rename it")
            self.add_module(name, mod)
        self.layer_names: list[str] = list(layers)
        self.out_channels = out_channels
        self.stride = stride
        self.family = family
        if stages is None:
            stages = [Stage(self.layer_names[-1], out_channels, stride)]
        self.stage_specs: tuple[Stage, ...] = tuple(Stage(*s) for s in stages)
        last = self.stage_specs[-1]
        if (last.channels, last.stride) != (out_channels, stride):
            raise ValueError(f"last stage {last} must give the trunk's output ({out_channels} channels, stride {stride})")
        strides = self.stage_strides
        if any(b < a for a, b in zip(strides, strides[1:])):
            raise ValueError(f"stage strides must not decrease, got {strides}")
        self._plan = self._build_plan()

    # --- stage description ------------------------------------------------------------
    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stage_specs]

    @property
    def stage_channels(self) -> list[int]:
        return [s.channels for s in self.stage_specs]

    @property
    def stage_strides(self) -> list[int]:
        return [s.stride for s in self.stage_specs]

    @property
    def default_layer(self) -> str:
        """Dotted name (relative to the backbone) of the layer that outputs the feature map."""
        return self.stage_specs[-1].name

    def _build_plan(self) -> list[tuple[str, int | None]]:
        """``(dotted module name, stage index or None)`` in run order: a child holding a
        stage below it is unrolled into its parts (it must then be an ``nn.Sequential``,
        whose forward is running its parts in order)."""
        taps = {s.name: i for i, s in enumerate(self.stage_specs)}
        if len(taps) != len(self.stage_specs):
            raise ValueError(f"duplicate stage names in {self.stage_names}")
        plan: list[tuple[str, int | None]] = []

        def visit(name: str, module: nn.Module) -> None:
            inner = [t for t in taps if t.startswith(name + ".")]
            if not inner:
                plan.append((name, taps.get(name)))
                return
            if not isinstance(module, nn.Sequential):
                raise ValueError(f"stage {inner[0]!r} lies inside {name!r}, which is not an nn.Sequential")
            for child_name, child in module.named_children():
                visit(f"{name}.{child_name}", child)
            if name in taps:
                plan.append(("", taps[name]))  # the Sequential's output: the current tensor

        for name in self.layer_names:
            visit(name, self._modules[name])  # type: ignore[arg-type]
        found = [i for _, i in plan if i is not None]
        if found != list(range(len(self.stage_specs))):
            missing = sorted(set(range(len(self.stage_specs))) - set(found))
            if missing:
                raise ValueError(f"stages {[self.stage_specs[i].name for i in missing]} are not modules of this backbone")
            raise ValueError(f"stages {self.stage_names} are not in the order the layers run")
        return plan

    # --- running ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for name in self.layer_names:
            x = self._modules[name](x)  # type: ignore[misc]
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map of every stage (shallow to deep); the last equals ``forward(x)``."""
        x = self.normalize(x)
        out: list[torch.Tensor] = []
        for name, tap in self._plan:
            if name:
                x = self.get_submodule(name)(x)
            if tap is not None:
                out.append(x)
        return out


Builder = Callable[[bool], tuple[nn.Module, FeatureBackbone]]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: ``build(cam_friendly) -> (full_net, FeatureBackbone)`` (the
    full network is where weight files are loaded; the trunk shares its modules),
    ``torchvision_weights``: the name of its torchvision weights enum (None: none),
    ``weights``: special weights values (e.g. ``imagenet-offline``) -> builder returning
    the network with those weights loaded. ``description`` is the one-line help text."""

    build: Builder
    description: str = ""
    torchvision_weights: str | None = None
    weights: Mapping[str, Builder] = field(default_factory=dict)


def _resnet(name: str, cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    net = getattr(tvm, name)(weights=None)
    strides = [2, 4, 8, 16, 32]
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
        strides = [2, 4, 8, 8, 8]
    e = net.layer1[0].expansion  # 1 (BasicBlock: resnet18/34) or 4 (Bottleneck: resnet50)
    channels = [64, 64 * e, 128 * e, 256 * e, 512 * e]
    stages = [Stage(n, c, s) for n, c, s in zip(("relu", "layer1", "layer2", "layer3", "layer4"), channels, strides)]
    layers = {k: getattr(net, k) for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")}
    return net, FeatureBackbone(layers, net.fc.in_features, strides[-1], stages, family="resnet")


def _vgg16(cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    net = tvm.vgg16(weights=None)
    # after the last ReLU of conv blocks 2..5 (before their max-pool), then pool5
    stages = [Stage("features.8", 128, 2), Stage("features.15", 256, 4), Stage("features.22", 512, 8),
              Stage("features.29", 512, 16)]
    if not cam_friendly:
        stages.append(Stage("features.30", 512, 32))
        return net, FeatureBackbone({"features": net.features}, 512, 32, stages, family="vgg")
    # wsolevaluation wsol/vgg.py, VggCam with large_feature_map (config 'cam'/'28x28'): the
    # conv layers without pool4 and pool5, then conv6 (3×3, 512 -> 1024, He init) + ReLU:
    # 1024 channels, 28×28 maps at 224² (f-cam.txt Table F.2: VGG16 #NFM 1024, SFM 28x28).
    # pool4 becomes an identity so that torchvision's layer indices (weight keys, the ADL /
    # SPG positions) stay those of vgg16.features.
    feats = nn.Sequential(*list(net.features.children())[:-1])  # drop pool5
    feats[23] = nn.Identity()  # pool4
    conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
    nn.init.kaiming_normal_(conv6.weight, mode="fan_out", nonlinearity="relu")  # initialize_weights(..., 'he')
    nn.init.zeros_(conv6.bias)  # type: ignore[arg-type]
    stages = [Stage("features.8", 128, 2), Stage("features.15", 256, 4), Stage("features.22", 512, 8),
              Stage("features.29", 512, 8), Stage("relu6", 1024, 8)]
    layers = {"features": feats, "conv6": conv6, "relu6": nn.ReLU(inplace=False)}
    return net, FeatureBackbone(layers, 1024, 8, stages, family="vgg")


class InceptionBStride1(nn.Module):
    """Inception-v3's Mixed_6a (torchvision ``InceptionB``, its modules and weight names) run
    at stride 1 with padding 1, as wsolevaluation's ``InceptionB(288, kernel_size=3,
    stride=1, padding=1)`` (wsol/inception.py): both 3×3 branches and the max-pool branch."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.branch3x3: nn.Module = block.get_submodule("branch3x3")
        self.branch3x3dbl_1: nn.Module = block.get_submodule("branch3x3dbl_1")
        self.branch3x3dbl_2: nn.Module = block.get_submodule("branch3x3dbl_2")
        self.branch3x3dbl_3: nn.Module = block.get_submodule("branch3x3dbl_3")
        for conv in (block.get_submodule("branch3x3.conv"), block.get_submodule("branch3x3dbl_3.conv")):
            assert isinstance(conv, nn.Conv2d)
            conv.stride, conv.padding = (1, 1), (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([branch3x3, dbl, pool], 1)


def _spg_conv(cin: int, cout: int) -> nn.Sequential:
    """3×3 conv + ReLU (+ dropout 0.5 after it, training only) of InceptionCam's 1024-channel
    layers; xavier init (wsolevaluation's ``initialize_weights(..., 'xavier')``)."""
    conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.Dropout(0.5))


def _inception_v3(cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    net = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
    names = [
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
        "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    ]
    if not cam_friendly:
        # the encoder layers of F-CAM's Table F.2 (64, 80, 288, 768 channels; 2048 after Mixed_7c)
        stages = [Stage("Conv2d_2b_3x3", 64, 2), Stage("Conv2d_3b_1x1", 80, 4), Stage("Mixed_5d", 288, 8),
                  Stage("Mixed_6e", 768, 16), Stage("Mixed_7c", 2048, 32)]
        layers = {n: getattr(net, n) for n in names + ["Mixed_7a", "Mixed_7b", "Mixed_7c"]}
        return net, FeatureBackbone(layers, 2048, 32, stages, family="inception")
    # wsolevaluation wsol/inception.py, InceptionCam with large_feature_map: Conv2d_1a_3x3 with
    # padding 1; both max-pools 3×3/2 with padding 1 and ceil_mode; no max-pool after
    # Mixed_5d; Mixed_6a at stride 1 (padding 1); then SPG_A3_1b (768 -> 1024) and SPG_A3_2b
    # (1024 -> 1024), 3×3 conv + ReLU, with dropout 0.5 before each and after the last (training
    # only). 1024 channels, 28×28 maps at 224² (f-cam.txt Table F.2: Inception #NFM 1024, SFM 28x28).
    # Weight names stay torchvision's (SPG_A3_*.0 as in wsolevaluation).
    net.Conv2d_1a_3x3.conv.padding = (1, 1)  # type: ignore[union-attr,method-assign]
    layers = {n: getattr(net, n) for n in names}
    layers["maxpool1"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    layers["maxpool2"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
    layers["Mixed_6a"] = InceptionBStride1(net.Mixed_6a)
    layers["drop_6e"] = nn.Dropout(0.5)
    layers["SPG_A3_1b"] = _spg_conv(768, 1024)
    layers["SPG_A3_2b"] = _spg_conv(1024, 1024)
    stages = [Stage("Conv2d_2b_3x3", 64, 2), Stage("Conv2d_3b_1x1", 80, 4), Stage("Mixed_5d", 288, 8),
              Stage("Mixed_6e", 768, 8), Stage("SPG_A3_2b", 1024, 8)]
    return net, FeatureBackbone(layers, 1024, 8, stages, family="inception")


def resnet18(cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    return _resnet("resnet18", cam_friendly)


def resnet34(cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    return _resnet("resnet34", cam_friendly)


def resnet50(cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    return _resnet("resnet50", cam_friendly)


RESNET18 = BackboneSpec(resnet18, "ResNet-18 (torchvision); CAM-friendly: layer3/layer4 at stride 1 (stride 8)",
                        "ResNet18_Weights")
RESNET34 = BackboneSpec(resnet34, "ResNet-34 (torchvision); CAM-friendly: layer3/layer4 at stride 1 (stride 8)",
                        "ResNet34_Weights")
RESNET50 = BackboneSpec(resnet50, "ResNet-50 (torchvision); CAM-friendly: layer3/layer4 at stride 1 (stride 8)",
                        "ResNet50_Weights")
VGG16 = BackboneSpec(_vgg16, "VGG-16 conv layers (torchvision); CAM-friendly: wsolevaluation's VggCam, no "
                     "pool4/pool5 + conv6 1024 (stride 8)", "VGG16_Weights")
INCEPTION_V3 = BackboneSpec(_inception_v3, "Inception-v3 (torchvision); CAM-friendly: wsolevaluation's InceptionCam, "
                            "Mixed_6a at stride 1 + two 1024-channel convs (stride 8)", "Inception_V3_Weights")

class BackboneRegistry(Registry[BackboneSpec]):
    """The backbone registry, plus prefix rules: a name ``prefix:rest`` (``timm:resnet34``)
    is resolved by the rule of ``prefix``, a lazy ``"module:function"`` (imported on first
    use) or a callable taking ``rest`` and returning a :class:`BackboneSpec`. Resolved
    specs are cached; :meth:`names` lists the named entries only (a rule stands for a family
    of names, shown as ``prefix:<name>`` in error messages)."""

    def __init__(self, kind: str, lazy: Mapping[str, str], field: str, prefixes: Mapping[str, str]):
        super().__init__(kind, lazy, field=field)
        self._rules: dict[str, str | Callable[[str], BackboneSpec]] = dict(prefixes)
        self._resolved: dict[str, BackboneSpec] = {}

    def add_prefix(self, prefix: str, rule: str | Callable[[str], BackboneSpec]) -> None:
        """Resolve names ``prefix:<rest>`` with ``rule`` (a callable or ``"module:function"``)."""
        if not prefix or ":" in prefix:
            raise ValueError(f"backbone prefix must be a non-empty word without ':', got {prefix!r}")
        have = self._rules.get(prefix)
        if have is not None and have != rule:
            raise ValueError(f"backbone prefix {prefix!r} registered twice")
        self._rules[prefix] = rule

    def prefixes(self) -> list[str]:
        return sorted(self._rules)

    def _rule(self, name: str) -> tuple[Callable[[str], BackboneSpec], str] | None:
        prefix, sep, rest = name.partition(":")
        rule = self._rules.get(prefix) if sep else None
        if rule is None:
            return None
        if isinstance(rule, str):
            module, _, attr = rule.partition(":")
            rule = getattr(importlib.import_module(module), attr)
        return rule, rest  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or (isinstance(name, str) and self._rule(name) is not None)

    def get(self, name: str) -> BackboneSpec:
        found = self._rule(name) if ":" in name else None
        if found is not None:
            spec = self._resolved.get(name)
            if spec is None:
                rule, rest = found
                if not rest:
                    raise ConfigError(f"{self.field}: {name!r} names no model; write {name}<model name>")
                spec = self._resolved[name] = rule(rest)
            return spec
        try:
            return super().get(name)
        except ConfigError as e:
            rules = ", ".join(f"{p}:<name>" for p in self.prefixes())
            raise ConfigError(f"{e}; or {rules}" if rules else str(e)) from None


#: name -> BackboneSpec. Adding a backbone: a BackboneSpec in a module plus one line here
#: (or ``BACKBONES.add(name, spec)`` / :func:`register_backbone` from user code). Prefix
#: rules: ``timm:<model>`` is any timm CNN (:mod:`wsol.nn.timm_backbones`).
BACKBONES = BackboneRegistry(
    "backbone",
    {
        "resnet18": "wsol.nn.backbones:RESNET18",
        "resnet34": "wsol.nn.backbones:RESNET34",
        "resnet50": "wsol.nn.backbones:RESNET50",
        "vgg16": "wsol.nn.backbones:VGG16",
        "inception_v3": "wsol.nn.backbones:INCEPTION_V3",
        "efficientnet_lite0": "wsol.nn.efficientnet:EFFICIENTNET_LITE0",
    },
    field="model.backbone.name",
    prefixes={"timm": "wsol.nn.timm_backbones:resolve"},
)


def register_backbone(name: str, builder: Builder, weights: dict[str, Builder] | None = None,
                      description: str = "") -> BackboneSpec:
    """Register a backbone builder ``cam_friendly -> (full_net, FeatureBackbone)``.
    ``weights`` maps special weights values (e.g. ``imagenet-offline``) to builders that
    return the network with those weights loaded; other values go the usual way."""
    spec = BackboneSpec(builder, description, None, {k.lower(): v for k, v in (weights or {}).items()})
    return BACKBONES.add(name, spec)


def available_backbones() -> list[str]:
    return BACKBONES.names()


def _state_dict_from_weights(name: str, spec: BackboneSpec, weights: str) -> dict[str, torch.Tensor]:
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
    enum_name = spec.torchvision_weights
    if enum_name is None:
        special = "".join(f"'{k}', " for k in spec.weights)
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


def head_prefixes(full: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes of a full network's classifier (ignored when weights are loaded
    into a backbone): torchvision's ``fc.`` / ``classifier.`` / ``AuxLogits.``, and a timm
    model's own ``pretrained_cfg['classifier']`` (e.g. ``head.fc``)."""
    heads = ["fc.", "classifier.", "AuxLogits."]
    cls = (getattr(full, "pretrained_cfg", None) or {}).get("classifier")
    for c in [cls] if isinstance(cls, str) else list(cls or ()):
        heads.append(f"{c}.")
    return tuple(heads)


def build_backbone(cfg: BackboneConfig) -> FeatureBackbone:
    spec = BACKBONES.get(cfg.name)  # ConfigError listing the valid names
    special = spec.weights.get(cfg.weights.lower())
    if special is not None:
        return special(cfg.cam_friendly)[1]
    full, trunk = spec.build(cfg.cam_friendly)
    if cfg.weights.lower() != "none":
        sd = _state_dict_from_weights(cfg.name, spec, cfg.weights)
        own = full.state_dict()
        heads = head_prefixes(full)
        keep = {k: v for k, v in sd.items() if k in own and not k.startswith(heads)}
        shape_bad = [k for k, v in keep.items() if own[k].shape != v.shape]
        if shape_bad:
            raise ConfigError(f"model.backbone.weights: shape mismatch for {shape_bad[:3]} (weights of another architecture?)")
        missing = [k for k in own if k not in keep and not k.startswith(heads)]
        if not keep or len(missing) > len(own) // 2:
            raise ConfigError(
                f"model.backbone.weights: the weights match only {len(keep)} of {len(own)} tensors of {cfg.name}; "
                "expected a torchvision state dict of the same architecture"
            )
        full.load_state_dict(keep, strict=False)
    return trunk
