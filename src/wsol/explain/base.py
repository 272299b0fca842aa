"""Model-agnostic top-down CAM extractors (DESIGN.md "Extractor" contract).

``Extractor(model, target_layer)(images, targets) -> CAM`` (B×H×W in [0, 1] at the input
resolution, :func:`wsol.cams.to_cam`). An extractor hooks its target layer(s) with forward
hooks only; it can be used as a context manager (hooks live for the ``with`` block and are
removed on exit, exceptions included) or called directly (hooks are added for the call and
removed after it). Gradients are taken with ``torch.autograd.grad`` on the hooked
activations (no backward hooks, no ``.grad`` left on parameters).

``model(images)`` may return a logits tensor B×C or an object with a ``logits`` attribute
(wsol's :class:`~wsol.methods.base.Output`). The target layer is a module or a dotted name
("layer4", "backbone.layer4"; a unique suffix of a module name is accepted). Its output
may be a CNN feature map B×K×h×w or a ViT token sequence B×(P+N)×K: the ``prefix_tokens``
first tokens (class / distillation tokens, default 1) are dropped and the N patch tokens
are laid out on the patch grid (``grid=(h, w)``, default a square sqrt(N)×sqrt(N)).

Extractors never switch the model between train/eval mode: call ``model.eval()`` first
(batch-norm in train mode mixes the images of a batch, so per-image maps would depend on
the batch).

Input units: wsol models normalise inside their backbone, so an extractor sees images in
[0, 1]. Where a method's constant is stated in the normalised units the papers and the
peers (torchcam, pytorch-grad-cam, F-CAM) feed their models — Smooth-Grad-CAM++'s noise σ,
the Score-CAM family's masking baseline (the mean colour, 0 in normalised units) — the
extractor converts it through the model's normalisation (``normalization``: ``"auto"``:
the mean/std of the model's :class:`wsol.nn.backbones.Normalize` module, ImageNet's when it
has none; ``"imagenet"``; ``"none"`` for a model that takes already normalised images; or
``(mean, std)`` per colour channel).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.cams import minmax_normalize, model_logits, to_cam
from wsol.errors import ConfigError
from wsol.nn.backbones import IMAGENET_MEAN, IMAGENET_STD, Normalize

LayerSpec = nn.Module | str


def resolve_layer(model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``layer`` inside ``model``: a module of the model, an exact
    dotted name, or a dotted suffix that matches exactly one module name."""
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, mod in named.items():
            if mod is layer:
                return name, mod
        raise ConfigError(
            f"target layer {layer.__class__.__name__} is not a submodule of {model.__class__.__name__}; "
            "pass a module of this model or its dotted name (e.g. 'layer4')"
        )
    if not isinstance(layer, str) or not layer:
        raise ConfigError(f"target layer: expected a module or a dotted name like 'layer4', got {layer!r}")
    if layer in named:
        return layer, named[layer]
    matches = [n for n in named if n.endswith("." + layer)]
    if len(matches) == 1:
        return matches[0], named[matches[0]]
    if len(matches) > 1:
        raise ConfigError(
            f"target layer {layer!r} is ambiguous in {model.__class__.__name__}: matches {matches[:8]}; "
            "give the full dotted name"
        )
    top = [n for n in named if n and n.count(".") <= 1][:30]
    raise ConfigError(
        f"target layer {layer!r} not found in {model.__class__.__name__}; some valid names: {', '.join(top)}"
    )


def target_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """s_c per sample: ``logits[b, targets[b]]``."""
    return logits.gather(1, targets[:, None])[:, 0]


class Extractor(ABC):
    """Base of all extractors. Subclasses implement :meth:`_maps` (raw B×h×w maps).

    Parameters common to every extractor:
      ``prefix_tokens``: tokens before the patch tokens in a ViT sequence (default 1);
      ``grid``: (h, w) patch grid of a token sequence (default: square);
      ``reshape``: a callable mapping the layer output to B×K×h×w (overrides the two above);
      ``channels_last``: feed the model channels-last images (same numbers up to float
      rounding, faster convolutions on CPU; set False for a model whose forward calls
      ``.view`` on a non-contiguous tensor);
      ``normalization``: the input normalisation of the model (see the module docstring).
    """

    #: whether several target layers may be given (LayerCAM fuses them)
    multi_layer: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: LayerSpec | Sequence[LayerSpec],
        *,
        prefix_tokens: int = 1,
        grid: tuple[int, int] | None = None,
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
        channels_last: bool = True,
        normalization: str | tuple[Sequence[float], Sequence[float]] = "auto",
    ):
        layers: list[LayerSpec] = (
            list(target_layer) if isinstance(target_layer, (list, tuple)) else [target_layer]  # type: ignore[list-item]
        )
        if not layers:
            raise ConfigError(f"{type(self).__name__}: no target layer given")
        if len(layers) > 1 and not self.multi_layer:
            raise ConfigError(
                f"{type(self).__name__} takes one target layer, got {len(layers)}; only LayerCAM fuses several layers"
            )
        if prefix_tokens < 0:
            raise ConfigError(f"{type(self).__name__}: prefix_tokens must be >= 0, got {prefix_tokens}")
        self.model = model
        resolved = [resolve_layer(model, layer) for layer in layers]
        self.layer_names = [n for n, _ in resolved]
        self.layers = [m for _, m in resolved]
        self.prefix_tokens = prefix_tokens
        self.grid = grid
        self.reshape = reshape
        self.channels_last = channels_last
        self.normalization = _check_normalization(normalization, type(self).__name__)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._fired: list[int] = []  # target layers in the order the last forward ran them
        self._acts: list[torch.Tensor | None] = [None] * len(self.layers)
        self._entered = False
        self._leaf_grad = False  # make a constant layer output a grad leaf (frozen model)
        self._override: Callable[[torch.Tensor], torch.Tensor] | None = None

    # --- hooks -------------------------------------------------------------------------
    def _hook(self, idx: int) -> Callable:
        def fn(module: nn.Module, inputs: Any, output: Any) -> Any:
            is_seq = isinstance(output, (tuple, list))
            t = output[0] if is_seq else output
            if not isinstance(t, torch.Tensor):
                name = self.layer_names[idx]
                raise ConfigError(f"target layer {name!r} returns {type(t).__name__}, expected a tensor")
            new = t
            self._fired.append(idx)
            if self._override is not None:
                new = self._override(t)
                self._acts[idx] = new
            elif self._leaf_grad and not t.requires_grad:
                # No graph reaches this layer (a forward run under no_grad up to here, a
                # frozen model, ...): make the activation a leaf we can differentiate to and
                # record the graph from here on only. The model continues on a clone so
                # that an in-place op after the layer cannot touch the leaf.
                torch.set_grad_enabled(True)  # undone when the caller's grad-mode context exits
                leaf = t.detach().requires_grad_(True)
                self._acts[idx] = leaf
                new = leaf.clone()
            else:
                self._acts[idx] = t
            if new is t:
                return None
            return (new, *output[1:]) if is_seq else new

        return fn

    def _attach(self) -> None:
        if not self._handles:
            self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._acts = [None] * len(self.layers)
        self._override = None
        self._leaf_grad = False

    def __enter__(self) -> Extractor:
        self._attach()
        self._entered = True
        return self

    def __exit__(self, *exc: Any) -> None:  # exceptions propagate
        self._entered = False
        self._detach()

    def remove_hooks(self) -> None:
        """Remove the hooks now (also done on ``with`` exit and after a plain call)."""
        self._entered = False
        self._detach()

    # --- running the model ---------------------------------------------------------------
    def _run(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``model(images)`` (channels-last input when enabled)."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            return model_logits(self.model(images))
        except RuntimeError as e:
            if self.channels_last and "view size is not compatible" in str(e):
                raise ConfigError(
                    f"{type(self).__name__}: model.forward calls .view on a channels-last tensor ({e}); "
                    "build the extractor with channels_last=False"
                ) from e
            raise

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the hooked (raw-layout) activations of each target layer."""
        self._acts = [None] * len(self.layers)
        self._fired = []
        logits = self._run(images)
        missing = [n for n, a in zip(self.layer_names, self._acts) if a is None]
        if missing:
            raise ConfigError(
                f"target layer(s) {missing} were not run by model.forward; choose a layer on the path to the logits"
            )
        return logits, list(self._acts)  # type: ignore[arg-type]

    def to_maps(self, t: torch.Tensor) -> torch.Tensor:
        """Layer output (or its gradient) as B×K×h×w: CNN maps as they are, ViT tokens
        B×(P+N)×K without the P prefix tokens, on the h×w patch grid."""
        if self.reshape is not None:
            return self.reshape(t)
        if t.dim() == 4:
            return t
        if t.dim() != 3:
            raise ConfigError(
                f"target layer output of shape {tuple(t.shape)}: expected B×K×h×w maps or B×T×K tokens"
            )
        tokens = t[:, self.prefix_tokens :]
        n = tokens.shape[1]
        if self.grid is not None:
            h, w = self.grid
        else:
            h = w = math.isqrt(n)
        if h * w != n:
            raise ConfigError(
                f"{n} patch tokens (after dropping {self.prefix_tokens} prefix tokens) do not fill a "
                f"{h}×{w} grid; set prefix_tokens / grid=(h, w)"
            )
        return tokens.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    def input_stats(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the model's input normalisation, each 1×C×1×1 float32 in the units
        of the images the extractor is given (see ``normalization``)."""
        norm = self.normalization
        mean: Sequence[float]
        std: Sequence[float]
        if not isinstance(norm, str):
            mean, std = norm
        elif norm == "auto":
            found = {(tuple(m.mean.flatten().tolist()), tuple(m.std.flatten().tolist()))
                     for m in self.model.modules() if isinstance(m, Normalize)}
            if len(found) > 1:
                raise ConfigError(
                    f"{type(self).__name__}: the model normalises its input in {len(found)} different ways "
                    f"({sorted(found)}); give normalization=(mean, std) explicitly"
                )
            mean, std = found.pop() if found else (IMAGENET_MEAN, IMAGENET_STD)
        elif norm == "imagenet":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:  # "none"
            mean, std = (0.0,), (1.0,)
        as_t = lambda v: torch.tensor([float(a) for a in v], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return as_t(mean), as_t(std)

    def _channel_dim(self, t: torch.Tensor) -> int:
        """Feature dimension of the raw layer output (1 for maps, last for tokens)."""
        return 1 if t.dim() == 4 else t.dim() - 1

    # --- the contract --------------------------------------------------------------------
    def __call__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | Sequence[int] | int | None = None,
        *,
        raw: bool = False,
        differentiable: bool = False,
    ) -> torch.Tensor:
        """CAMs B×H×W in [0, 1] at the images' resolution for ``targets`` (default: the
        predicted class). ``raw=True``: the un-normalised low-resolution maps B×h×w.
        ``differentiable=True``: keep the autograd graph (create_graph for gradients)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            got = getattr(images, "shape", type(images))
            raise ConfigError(f"{type(self).__name__}: expected images B×3×H×W, got {got}")
        self._attach()
        try:
            maps = self._maps(images, targets, differentiable)
        finally:
            if not self._entered:
                self._detach()
            else:
                self._acts = [None] * len(self.layers)
                self._override = None
                self._leaf_grad = False
        if not differentiable:
            maps = maps.detach()
        if raw:
            return maps
        return to_cam(maps, (int(images.shape[-2]), int(images.shape[-1])))

    @abstractmethod
    def _maps(self, images: torch.Tensor, targets: Any, differentiable: bool) -> torch.Tensor:
        """Raw maps B×h×w (after the method's ReLU)."""


def _check_normalization(norm: Any, who: str) -> str | tuple[tuple[float, ...], tuple[float, ...]]:
    if isinstance(norm, str):
        if norm not in ("auto", "imagenet", "none"):
            raise ConfigError(f"{who}: normalization must be 'auto', 'imagenet', 'none' or (mean, std), got {norm!r}")
        return norm
    try:
        mean, std = (tuple(float(v) for v in part) for part in norm)
    except (TypeError, ValueError):
        raise ConfigError(f"{who}: normalization must be 'auto', 'imagenet', 'none' or (mean, std), got {norm!r}") from None
    if len(mean) != len(std) or not mean or any(v <= 0 for v in std):
        raise ConfigError(f"{who}: normalization (mean, std) needs one positive std per mean, got {norm!r}")
    return mean, std


def fuse_layer_maps(maps: list[torch.Tensor], fuse: str, gamma: float | None,
                    shallow: Sequence[bool] | None = None) -> torch.Tensor:
    """Fuse per-layer maps (each B×h_l×w_l): upsample to the finest grid, min-max
    normalise each, scale the maps of the shallow layers (``shallow[l]``, default: all but
    the last) by ``tanh(gamma·M)`` (LayerCAM §III-C; ``gamma=None``: no scaling), then
    element-wise ``max`` (LayerCAM) or ``sum``."""
    if len(maps) == 1:
        return maps[0]
    if shallow is None:
        shallow = [True] * (len(maps) - 1) + [False]
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
    ups = []
    for m, is_shallow in zip(maps, shallow):
        if tuple(m.shape[-2:]) != tuple(size):
            m = F.interpolate(m[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        m = minmax_normalize(m)
        if gamma is not None and is_shallow:
            m = torch.tanh(gamma * m)  # Jiang et al. (LayerCAM), §III-C: M̂ = tanh(γ·M/max M) on shallow layers
        ups.append(m)
    stacked = torch.stack(ups, dim=0)
    return stacked.amax(dim=0) if fuse == "max" else stacked.sum(dim=0)
