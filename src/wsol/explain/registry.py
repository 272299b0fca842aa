"""Registry of extractors by CLI name (the lower-case class name) and a builder.

:data:`EXTRACTORS` is a lazy :class:`~wsol.registry.Registry` (``name -> "module:Class"``);
adding an extractor means one class plus one line in the table."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from wsol.errors import ConfigError
from wsol.explain.base import Extractor, LayerSpec
from wsol.registry import Registry

EXTRACTORS: Registry[type[Extractor]] = Registry(
    "extractor",
    {
        "gradcam": "wsol.explain.gradient:GradCAM",
        "gradcamplusplus": "wsol.explain.gradient:GradCAMPlusPlus",
        "smoothgradcamplusplus": "wsol.explain.gradient:SmoothGradCAMPlusPlus",
        "xgradcam": "wsol.explain.gradient:XGradCAM",
        "layercam": "wsol.explain.gradient:LayerCAM",
        "scorecam": "wsol.explain.score:ScoreCAM",
        "sscam": "wsol.explain.score:SSCAM",
        "iscam": "wsol.explain.score:ISCAM",
        "ablationcam": "wsol.explain.score:AblationCAM",
    },
)


def available_extractors() -> list[str]:
    return EXTRACTORS.names()


def _options(cls: type[Extractor]) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        for p in inspect.signature(vars(klass)["__init__"]).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return names


def build_extractor(name: str, model: nn.Module, target_layer: LayerSpec | Sequence[LayerSpec], **kw: Any) -> Extractor:
    """The extractor ``name`` (e.g. ``"gradcamplusplus"``; '-' and '_' are ignored) on
    ``model``'s ``target_layer``. The result is callable as ``(images, targets) -> CAM``
    (B×H×W in [0, 1]); hooks are added and removed around each call."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in EXTRACTORS:
        raise ConfigError(f"unknown extractor {name!r}; valid: {', '.join(available_extractors())}")
    cls = EXTRACTORS.get(key)
    valid = _options(cls)
    bad = [k for k in kw if k not in valid]
    if bad:
        raise ConfigError(f"extractor {key}: unknown option(s) {bad}; valid: {', '.join(valid)}")
    return cls(model, target_layer, **kw)
