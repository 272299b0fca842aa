"""Method API (DESIGN.md "Method") and the method registry.

A method is an ``nn.Module`` registered by name and built from its config:

- ``forward(images) -> Output`` (logits and the maps the method owns),
- ``training_step(batch, state) -> dict[str, Tensor]``: named loss terms incl. ``total``,
- ``localize(images, targets) -> CAM`` (B×H×W in [0, 1], the CAM contract),
- ``on_epoch_start(epoch)``: optional hook for schedules that move with epochs,
- ``param_groups(lr, head_lr_mult)``: backbone at ``lr``, new layers at ``lr·head_lr_mult``.

Each method declares its hyper-parameters as a pydantic model ``Params`` (unknown keys and
wrong types are rejected with the field named, when the config loads). Methods are
registered by name in :data:`wsol.methods.METHODS` (a lazy ``name -> "module:attr"`` table
plus the ``@register`` decorator on the class).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, ValidationError

from wsol.cams import model_logits, select_targets
from wsol.config import BackboneConfig, MethodConfig, format_validation_error
from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.methods import METHODS


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


P = TypeVar("P", bound=MethodParams)


class Method(nn.Module, ABC, Generic[P]):
    """Base class of all WSOL methods. Subclasses set ``name`` and ``Params``."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    #: module names (prefixes) of the pretrained part; everything else gets head_lr_mult
    backbone_prefixes: ClassVar[tuple[str, ...]] = ("backbone.",)
    #: extra selection criteria this method defines (names in wsol.engine.selection)
    selection_criteria: ClassVar[tuple[str, ...]] = ()
    #: params the contract test (tests/test_contract.py) builds the method with (small
    #: widths to keep it fast); defaults are used for everything else
    contract_params: ClassVar[dict[str, Any]] = {}
    #: the split the engine trains on; "valpx" for a fully-supervised baseline trained on
    #: the few pixel-annotated images (the FSL U-Net of f-cam)
    train_split: str = "train"

    def __init__(self, params: P, backbone: BackboneConfig, num_classes: int):
        super().__init__()
        self.params = params
        self.backbone_cfg = backbone
        self.num_classes = num_classes

    #: the threshold of the method's own binary mask (MAXMIN: σ), used for F1±; None: 0.5.
    #: Typed as a read-only property so that subclasses may override it with one (MaxMin);
    #: at run time it stays a plain class attribute, so a subclass may also set it in __init__.
    if TYPE_CHECKING:
        @property
        def binary_threshold(self) -> float | None:
            return None
    else:
        binary_threshold = None

    # --- the contract -------------------------------------------------------------
    @abstractmethod
    def forward(self, images: torch.Tensor) -> Output:
        """Logits (and the method's own maps) for a batch of images."""

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        """Default: cross-entropy on the image labels."""
        out = self(batch.images)
        ce = nn.functional.cross_entropy(out.logits, batch.labels)
        return {"ce": ce, "total": ce}

    @abstractmethod
    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """CAMs B×H×W in [0, 1] at the images' resolution for ``targets`` (default: predicted)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for schedules that move with epochs (log-barrier t, erasing depth...)."""

    def param_groups(self, lr: float, head_lr_mult: float) -> list[dict]:
        back: list[nn.Parameter] = []
        head: list[nn.Parameter] = []
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

    select_targets = staticmethod(select_targets)
    logits_of = staticmethod(model_logits)


M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator: register a method under ``cls.name`` (and add one line to the
    table in ``wsol/methods/__init__.py`` so it loads lazily)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    METHODS.add(cls.name, cls)
    return cls


def available_methods() -> list[str]:
    return METHODS.names()


def get_method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def validate_params(name: str, params: dict[str, Any] | MethodParams) -> MethodParams:
    """The typed ``Params`` of method ``name`` from a config dict (one error format)."""
    cls = get_method_class(name)
    if isinstance(params, cls.Params):
        return params
    try:
        return cls.Params.model_validate(params if isinstance(params, dict) else params.model_dump())
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, f"model.method.params ({name})")) from None


def build_method(method: MethodConfig, backbone: BackboneConfig, num_classes: int) -> Method:
    cls = get_method_class(method.name)
    return cls(validate_params(method.name, method.params), backbone, num_classes)
