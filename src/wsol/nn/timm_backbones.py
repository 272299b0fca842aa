"""Any timm model as a backbone: ``model.backbone.name: timm:<model name>``.

The name after ``timm:`` is any CNN in timm's registry (``timm.list_models()``), e.g.
``timm:resnet34``, ``timm:convnext_tiny``, ``timm:efficientnet_b0``. The backbone is built the
way timm builds its ``features_only`` models, without timm's wrapper: the model's top-level
modules run in order after input normalisation (the model's own ``pretrained_cfg`` mean and
std), and its ``feature_info`` stages (module, channels, reduction) are the backbone's
stages, so ``forward_stages`` feeds the U-Net decoders. Models whose features timm itself
can only read through hooks or ``forward_intermediates`` (vision transformers, ...) are
refused with a clear message: their forward is not a sequence of modules.

Weights are never downloaded: ``weights: none`` (random init) or a local state-dict file of
the timm model (the classifier, named by the model's ``pretrained_cfg['classifier']``, is
ignored by :func:`wsol.nn.backbones.build_backbone`; ``wsol cam --model timm:NAME --weights
FILE`` uses it). ``cam_friendly: true`` asks timm for ``output_stride=8`` (dilated last
stages, 28×28 maps at 224²), for the models that support it.

Resolved lazily by the ``timm`` prefix rule of :data:`wsol.nn.backbones.BACKBONES`; timm is
imported only when such a name is used.
"""

from __future__ import annotations

import difflib
import functools
from collections import OrderedDict
from typing import Any

import torch.nn as nn

from wsol.errors import ConfigError
from wsol.nn.backbones import BackboneSpec, FeatureBackbone, Normalize, Stage

TIMM_HINT = "pip install 'wsol[timm]'"
#: timm's feature wrappers whose forward is not the model's modules run in order
_NOT_SEQUENTIAL = ("FeatureGetterNet", "FeatureHookNet", "FeatureGraphNet")


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"timm: backbones need the package timm: {TIMM_HINT} (or pip install timm)") from None
    return timm


def resolve(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of timm model ``name`` (ConfigError when timm has no such
    model, listing close names from timm's local registry)."""
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6) or timm.list_models(f"*{name}*")[:6]
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise ConfigError(f"model.backbone.name: timm has no model {name!r}{hint} (see timm.list_models())")
    return BackboneSpec(
        functools.partial(build_timm_backbone, name),
        f"timm {name} (features_only-style stages; weights: none or a local file; CAM-friendly: output_stride=8)",
    )


def build_timm_backbone(name: str, cam_friendly: bool) -> tuple[nn.Module, FeatureBackbone]:
    """``(full timm classifier, FeatureBackbone sharing its modules)`` for timm model ``name``."""
    timm = _timm()
    kw: dict[str, Any] = {"output_stride": 8} if cam_friendly else {}
    try:
        full = timm.create_model(name, pretrained=False, **kw)
        # timm's own features_only build tells whether the features are a module sequence
        ref = timm.create_model(name, pretrained=False, features_only=True, **kw)
    except TypeError as e:
        if cam_friendly and "output_stride" in str(e):
            raise ConfigError(
                f"model.backbone: timm model {name} has no output_stride option, so no CAM-friendly variant; "
                "set model.backbone.cam_friendly=false"
            ) from None
        raise ConfigError(f"model.backbone: timm could not build {name} ({e})") from None
    except RuntimeError as e:  # e.g. a model without features_only support
        raise ConfigError(f"model.backbone: timm model {name} has no feature extraction support ({e})") from None
    kind = type(ref).__name__
    if kind in _NOT_SEQUENTIAL or not hasattr(ref, "feature_info"):
        raise ConfigError(
            f"model.backbone: timm model {name} gives its features through {kind} (hooks or forward_intermediates), "
            "not as a sequence of modules, so it cannot be a wsol backbone; use a CNN (resnet*, convnext*, "
            "efficientnet*, regnet*, mobilenet*, ...)"
        )
    info = ref.feature_info
    stages = [Stage(m, int(c), int(r)) for m, c, r in zip(info.module_name(), info.channels(), info.reduction())]
    del ref
    layers = _trunk_layers(full, [s.name for s in stages], name)
    try:
        trunk = FeatureBackbone(layers, stages[-1].channels, stages[-1].stride, stages, family="timm")
    except ValueError as e:
        raise ConfigError(f"model.backbone: timm model {name}'s stages do not form a module sequence ({e})") from None
    cfg = getattr(full, "pretrained_cfg", None) or {}
    if cfg.get("mean") and cfg.get("std"):
        trunk.normalize = Normalize(tuple(cfg["mean"]), tuple(cfg["std"]))
    return full, trunk


def _trunk_layers(full: nn.Module, stage_names: list[str], name: str) -> dict[str, nn.Module]:
    """The top-level modules of ``full`` in registration order (the order timm's feature
    wrappers run them), up to the one holding the last stage; a Sequential holding it is cut
    right after it, so that the trunk's output is the last stage."""
    last = stage_names[-1]
    top, _, rest = last.partition(".")
    layers: dict[str, nn.Module] = {}
    for child_name, child in full.named_children():
        if child_name != top:
            layers[child_name] = child
            continue
        if rest:
            layers[child_name] = _cut_after(child, rest, name)
        else:
            layers[child_name] = child
        return layers
    raise ConfigError(f"model.backbone: timm model {name}'s last feature module {last!r} is not a module of the model")


def _cut_after(module: nn.Module, path: str, name: str) -> nn.Module:
    """``module`` (a Sequential) without its children after ``path`` (a dotted child path),
    recursively; children keep their names (so weight names are unchanged)."""
    head, _, rest = path.partition(".")
    if not isinstance(module, nn.Sequential):
        raise ConfigError(f"model.backbone: timm model {name}: a feature module lies inside {type(module).__name__}, "
                          "which is not a module sequence")
    kept = {}
    for child_name, child in module.named_children():
        kept[child_name] = _cut_after(child, rest, name) if (child_name == head and rest) else child
        if child_name == head:
            break
    if len(kept) == len(module) and not rest:
        return module
    return nn.Sequential(OrderedDict(kept))
