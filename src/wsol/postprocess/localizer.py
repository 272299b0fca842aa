"""Dense-CRF refinement of any localiser's CAMs at evaluation time (min-max-entropy
App. B.3.3, Table 6: "over all the methods"), as a localiser wrapper."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from wsol.postprocess.crf import DenseCRFMethod, DenseCRFParams, dense_crf, resolve_params

#: ``(images, targets) -> CAM`` (B×3×H×W in [0, 1], B class ids -> B×H×W in [0, 1])
LocalizerFn = Callable[..., Tensor]

#: short names of the overridable fields in a column tag (``crf-glas-it5``)
_TAG_KEYS = {"iterations": "it", "theta_alpha": "ta", "theta_beta": "tb", "theta_gamma": "tg",
             "w_appearance": "wa", "w_smoothness": "ws", "eps": "eps"}


class CRFLocalizer:
    """A localiser whose CAMs are refined by :func:`wsol.postprocess.dense_crf` on the same
    images: ``CRFLocalizer(localizer, "glas")(images, targets)`` → B×H×W in [0, 1] (Q(fg) of
    the CRF, min-max normalised per image: the CAM contract).

    ``localizer``: any ``(images, targets) -> CAM`` — a method's own ``localize`` or an
    extractor. ``images`` are what the Evaluator gives every localiser, the model's input
    images B×3×H×W in [0, 1]: exactly what ``dense_crf`` expects (colours are put on the
    0..255 scale of the θβ presets inside it). ``params``: ``"glas"`` (θα = 13, θβ = 3,
    θγ = 3, 2 iterations), ``"natural"`` (19, 11, 5, 5 iterations) or a
    :class:`~wsol.postprocess.crf.DenseCRFParams`; keyword ``overrides`` replace fields
    (``iterations=10``, ``theta_beta=5``). ``no_grad``: run ``localizer`` without a graph;
    default: yes when it is a bound method of an ``nn.Module`` (a method's ``localize``),
    no otherwise (an extractor manages its own gradients).

    With the Evaluator (the CRF output is a probability, so F1± use τ = 0.5, as for any
    localiser other than the method's own maps)::

        from wsol.engine.evaluate import Evaluator
        from wsol.postprocess import CRFLocalizer

        ev = Evaluator(method, loc_kind="mask", device=device,
                       localizer=CRFLocalizer(method.localize, "glas"))
        result = ev.run(test_loader)            # result.metrics["pxap"], ["f1_fg_mean"], ...

        # an extractor's CAMs, refined with 5 iterations:
        ev = Evaluator(method, loc_kind="mask", device=device,
                       localizer=CRFLocalizer(build_extractor("gradcam", method, "backbone.layer4"),
                                              "glas", iterations=5))

    On a run folder: ``wsol evaluate RUN --crf glas`` (column ``best_loc+crf-glas``), or
    :func:`with_crf` to wrap a ``localizer_factory`` of
    :func:`wsol.engine.pipeline.evaluate_run`.
    """

    def __init__(self, localizer: LocalizerFn, params: str | DenseCRFParams = "natural", *,
                 method: DenseCRFMethod = "lattice", no_grad: bool | None = None, **overrides: Any) -> None:
        self.localizer = localizer
        self.params = resolve_params(params, **overrides)  # a bad preset / field fails here, before any work
        self.method: DenseCRFMethod = method
        if no_grad is None:
            no_grad = isinstance(getattr(localizer, "__self__", None), torch.nn.Module)
        self.no_grad = no_grad

    def __call__(self, images: Tensor, targets: Tensor | None = None, /) -> Tensor:
        with torch.no_grad() if self.no_grad else contextlib.nullcontext():
            cams = self.localizer(images, targets)
        return dense_crf(images, cams.detach().float(), self.params, method=self.method)


def crf_tag(preset: str, **overrides: Any) -> str:
    """Column tag of a CRF evaluation: ``crf-<preset>`` then each override, e.g.
    ``crf-glas-it5`` (so that different settings never share a column)."""
    resolve_params(preset, **overrides)  # validates
    parts = [f"crf-{preset}"] + [f"{_TAG_KEYS.get(k, k)}{v:g}" for k, v in sorted(overrides.items())]
    return "-".join(parts)


def with_crf(factory: Callable[[Any], LocalizerFn] | None, tag: str | None, preset: str,
             **overrides: Any) -> tuple[Callable[[Any], CRFLocalizer], str]:
    """Wrap a ``localizer_factory`` (``method -> localizer``; ``None``: the method's own
    ``localize``) so that its CAMs are CRF-refined; returns the new factory and the column
    tag (``crf-glas``, or ``<tag>+crf-glas`` after an extractor's tag)."""
    ctag = crf_tag(preset, **overrides)

    def crf_factory(model: Any) -> CRFLocalizer:
        inner = factory(model) if factory is not None else model.localize
        return CRFLocalizer(inner, preset, **overrides)

    return crf_factory, f"{tag}+{ctag}" if tag else ctag
