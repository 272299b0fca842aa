"""Complexity figures (max-min-uncertainty Table 3, f-cam Table F.4): number of parameters
and mean inference time per image on the current device.

- ``params`` / ``trainable``: all parameters, and those with ``requires_grad`` (for F-CAM
  and the weight map the trainable part is the decoder; the frozen classifier is the rest);
- ``forward_ms_b{B}``: the model's forward (logits) under ``no_grad`` (max-min Table 3
  "considering only the forward phase"), ``cam_ms_b{B}``: building the full-size CAM —
  the method's own ``localize`` under ``no_grad`` or an extractor (which runs its own
  forward and backward), f-cam Table F.4 — each in milliseconds **per image** at batch
  size B: ``warmup`` untimed calls, then the mean over ``repeats`` timed calls divided by
  B (CUDA synchronised before the clock is read).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from wsol.cams import model_logits
from wsol.errors import WSOLError

log = logging.getLogger(__name__)

Localize = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters); shared tensors counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return total, trainable


def device_name(device: torch.device | str) -> str:
    """A readable name of the device that ran something: ``cpu (N threads)`` or
    ``cuda:0 (NVIDIA H100 ...)``."""
    device = torch.device(device)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{idx} ({torch.cuda.get_device_name(idx)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_image(fn: Callable[[], Any], batch: int, device: torch.device, warmup: int = 2,
                   repeats: int = 5) -> float:
    """Mean milliseconds per image of ``fn()`` (one batch of ``batch`` images), warm-up excluded."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return 1000.0 * (time.perf_counter() - start) / (repeats * batch)


def measure(model: nn.Module, *, image_size: int, device: torch.device | str, num_classes: int,
            localize: Localize | None = None, own_localize: bool = True, batch_sizes: Sequence[int] = (1, 32),
            warmup: int = 2, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Parameters and per-image forward / CAM times of ``model`` on random images of side
    ``image_size``. ``localize``: the CAM builder (default: ``model.localize``, run under
    ``no_grad`` when ``own_localize``; an extractor manages gradients itself)."""
    device = torch.device(device)
    model = model.to(device).eval()
    total, trainable = count_params(model)
    loc: Localize = localize if localize is not None else model.localize  # type: ignore[assignment]
    out: dict[str, Any] = {"params": total, "trainable": trainable, "image_size": int(image_size),
                           "device": device_name(device)}
    g = torch.Generator().manual_seed(seed)
    for b in batch_sizes:
        images = torch.rand(b, 3, image_size, image_size, generator=g).to(device)
        targets = (torch.arange(b) % max(num_classes, 1)).to(device)

        def forward(images: torch.Tensor = images) -> torch.Tensor:
            with torch.no_grad():
                return model_logits(model(images))

        def cam(images: torch.Tensor = images, targets: torch.Tensor = targets) -> torch.Tensor:
            if own_localize:
                with torch.no_grad():
                    return loc(images, targets)
            return loc(images, targets)

        out[f"forward_ms_b{b}"] = time_per_image(forward, b, device, warmup, repeats)
        out[f"cam_ms_b{b}"] = time_per_image(cam, b, device, warmup, repeats)
    return out


def method_complexity(name: str, *, backbone: str = "resnet18", num_classes: int = 2, image_size: int = 224,
                      device: torch.device | str = "cpu", params: dict[str, Any] | None = None,
                      extractor: str | None = None, batch_sizes: Sequence[int] = (1, 32), warmup: int = 2,
                      repeats: int = 5) -> dict[str, Any]:
    """Complexity of the registered method ``name`` built untrained on ``backbone`` (random
    init): ``params`` default to the method's ``contract_params`` (two-stage methods then
    build a fresh stage-one network, which has the trained one's size). ``extractor``: time
    the CAM through that extractor on the method's backbone instead of its own maps."""
    from wsol.bench import ensure_registered
    from wsol.config import BackboneConfig, MethodConfig
    from wsol.methods import METHODS
    from wsol.methods.base import build_method

    ensure_registered()
    cls = METHODS.get(name)
    p = dict(cls.contract_params or {}) if params is None else dict(params)
    with _quiet("wsol.methods"):  # "no stage-1 run given (tests only)" is expected when timing two-stage methods
        model = build_method(MethodConfig(name=name, params=p), BackboneConfig(name=backbone), num_classes)
    loc, own = None, True
    if extractor is not None:
        loc, own = extractor_localizer(extractor, model), False
    return measure(model, image_size=image_size, device=device, num_classes=num_classes, localize=loc,
                   own_localize=own, batch_sizes=batch_sizes, warmup=warmup, repeats=repeats)


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    lg = logging.getLogger(logger)
    level = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(level)


def extractor_localizer(name: str, model: nn.Module) -> Localize:
    """A top-down extractor on the model's backbone feature layer (as ``wsol evaluate
    --extractor NAME`` uses it)."""
    from wsol.explain import build_extractor
    from wsol.nn.backbones import FeatureBackbone

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, FeatureBackbone):
        raise WSOLError(f"extractor {name}: the model has no standard backbone to take the feature layer from")
    return build_extractor(name, model, f"backbone.{backbone.default_layer}")


def registered_complexity(*, backbone: str = "resnet18", num_classes: int = 2, image_size: int = 224,
                          device: torch.device | str = "cpu", extractors: Sequence[str] = (),
                          batch_sizes: Sequence[int] = (1, 32), warmup: int = 2, repeats: int = 5,
                          methods: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`method_complexity` of every registered method (or ``methods``), plus the CAM
    classifier seen through each of ``extractors`` (rows ``cam+<extractor>``). A method that
    cannot be built on ``backbone`` gets ``{"error": message}`` instead of numbers."""
    from wsol.bench import ensure_registered
    from wsol.methods import METHODS

    ensure_registered()
    rows: dict[str, dict[str, Any]] = {}
    names = list(methods) if methods is not None else METHODS.names()
    jobs = [(n, None) for n in names] + [("cam", e) for e in extractors]
    for name, ex in jobs:
        key = name if ex is None else f"{name}+{ex}"
        try:
            rows[key] = method_complexity(name, backbone=backbone, num_classes=num_classes, image_size=image_size,
                                          device=device, extractor=ex, batch_sizes=batch_sizes, warmup=warmup,
                                          repeats=repeats)
        except (WSOLError, RuntimeError, ValueError) as e:
            log.warning("complexity of %s on %s: %s", key, backbone, e)
            rows[key] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    return rows
