"""Method API (DESIGN.md "Method") and the method registry.

A method is an ``nn.Module`` registered by name and built from its config:

- ``forward(images) -> Output`` (logits and the maps the method owns),
- ``training_step(batch, state) -> dict[str, Tensor]``: named loss terms incl. ``total``,
- ``localize(images, targets) -> CAM`` (B×H×W in [0, 1], the CAM contract),
- ``on_epoch_start(epoch)``: optional hook for schedules that move with epochs,
- ``param_groups(lr, head_lr_mult)``: backbone at ``lr``, new layers at ``lr·head_lr_mult``.

Each method declares its hyper-parameters as a pydantic model ``Params`` (unknown keys and
wrong types are rejected with the field named).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, ValidationError

from wsol.config import BackboneConfig, MethodConfig, format_validation_error
from wsol.errors import ConfigError


class MethodParams(BaseModel):
    """Base of every method's hyper-parameter schema (unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Output:
    """What ``Method.forward`` returns. ``maps``: per-class low-resolution maps B×C×h×w
    (the method's CAMs before upsampling), when the method owns such maps."""

    logits: torch.Tensor
    maps: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TrainState:
    """What the engine passes to ``training_step``."""

    epoch: int = 0
    step: int = 0
    num_epochs: int = 1


class Method(nn.Module, ABC):
    """Base class of all WSOL methods. Subclasses set ``name`` and ``Params``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: module names (prefixes) of the pretrained part; everything else gets head_lr_mult
    backbone_prefixes: ClassVar[tuple[str, ...]] = ("backbone.",)

    def __init__(self, params: MethodParams, backbone: BackboneConfig, num_classes: int):
        super().__init__()
        self.params = params
        self.backbone_cfg = backbone
        self.num_classes = num_classes

    # --- the contract -------------------------------------------------------------
    @abstractmethod
    def forward(self, images: torch.Tensor) -> Output:
        """Logits (and the method's own maps) for a batch of images."""

    def training_step(self, batch: dict[str, Any], state: TrainState) -> dict[str, torch.Tensor]:
        """Default: cross-entropy on the image labels."""
        out = self(batch["images"])
        ce = nn.functional.cross_entropy(out.logits, batch["labels"])
        return {"ce": ce, "total": ce}

    @abstractmethod
    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """CAMs B×H×W in [0, 1] at the images' resolution for ``targets`` (default: predicted)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules that move with epochs (log-barrier t, erasing depth...)."""

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        back, head = [], []
        for n, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (back if n.startswith(self.backbone_prefixes) else head).append(p)
        groups = []
        if back:
            groups.append({"params": back, "lr": lr, "name": "backbone"})
        if head:
            groups.append({"params": head, "lr": lr * head_lr_mult, "name": "head"})
        return groups

    @staticmethod
    def select_targets(logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """``targets`` if given (per-sample class ids), else the predicted class."""
        if targets is None:
            return logits.argmax(dim=1)
        return targets.to(logits.device).long()


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: register a method under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    import wsol.methods  # noqa: F401  (imports every method module, which registers it)

    return sorted(METHODS)


def get_method_class(name: str) -> type[Method]:
    names = available_methods()
    if name not in METHODS:
        raise ConfigError(f"model.method.name: unknown method {name!r}; valid: {', '.join(names)}")
    return METHODS[name]


def build_method(method: MethodConfig, backbone: BackboneConfig, num_classes: int) -> Method:
    cls = get_method_class(method.name)
    try:
        params = cls.Params.model_validate(method.params)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"model.method.params ({method.name})")) from None
    return cls(params, backbone, num_classes)
