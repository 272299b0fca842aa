"""Score a model on one split with every metric of the protocol (wsol.metrics).

:func:`evaluate_split` runs the classifier and the localiser over a loader of
``wsol.data.sample.collate`` batches and feeds the streaming accumulators:
classification always, pixel metrics (``loc_kind="mask"``) or box metrics
(``loc_kind="box"``) when ``localize``. Localisation follows the GT-known protocol: the
CAM of the ground-truth class. The model's forward and its own ``localize`` run under
``torch.no_grad``; an extractor given as ``localizer`` does not (it manages gradients).

``eval_size``:

- ``"input"`` (default): CAMs at the model input size against the batch's ``masks`` /
  ``boxes`` (in the resized image's pixels).
- ``"original"``: each CAM is upsampled bilinearly to the image's original size and
  re-normalised to [0, 1] (``wsol.cams.to_cam``), and compared with the original-size
  labels. The batch must then carry ``orig_sizes`` (list of (H, W)) and ``orig_masks``
  (list of H×W uint8 masks or None; mask sets, at original resolution — resize with
  nearest if needed) or ``orig_boxes`` (list of K×4 boxes in original pixels; box sets).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from wsol.cams import to_cam
from wsol.errors import MetricError
from wsol.metrics import BoxAccumulator, ClassificationAccumulator, PixelAccumulator
from wsol.metrics.pixel import validate_cams

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """``metrics``: flat JSON-able numbers (classification + localisation, incl. the τ used);
    ``curves``: per-τ curves of the localisation metrics; ``gallery``: the first samples
    (``image_id``, ``image`` H×W×3 uint8, ``mask`` H×W uint8 or None, ``cam`` H×W float32
    (None with ``localize=False``), ``label``, ``pred``, and ``boxes`` K×4 for box sets), all
    at the input resolution."""

    metrics: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    gallery: list[dict[str, Any]] = field(default_factory=list)


def _logits(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


def _original_labels(batch: dict[str, Any], key: str, n: int) -> list[Any]:
    if "orig_sizes" not in batch or key not in batch:
        raise MetricError(
            f"eval_size='original' needs the batch keys 'orig_sizes' (list of (H, W)) and {key!r} (labels at the "
            "original resolution); this loader's batches lack them. Use eval_size='input' or a dataset that "
            "returns original-size labels"
        )
    vals = batch[key]
    if len(vals) != n or len(batch["orig_sizes"]) != n:
        raise MetricError(f"eval_size='original': batch of {n} images but {len(vals)} entries in {key!r}")
    return list(vals)


def _to_original(cams: Tensor, sizes: list[Any]) -> list[Tensor]:
    """Each CAM upsampled bilinearly to its original (H, W) and min-max re-normalised."""
    return [to_cam(c[None], (int(s[0]), int(s[1])))[0] for c, s in zip(cams, sizes)]


def evaluate_split(
    model: torch.nn.Module,
    loader: Iterable[dict[str, Any]],
    *,
    loc_kind: Literal["mask", "box"],
    device: torch.device,
    localizer: Callable[[Tensor, Tensor | None], Tensor] | None = None,
    tau: float | None = None,
    eval_size: Literal["input", "original"] = "input",
    localize: bool = True,
    progress: Callable[[int], None] | None = None,
    gallery: int = 0,
) -> EvalResult:
    """Evaluate ``model`` on every batch of ``loader``.

    ``localizer(images, targets) -> CAM`` defaults to ``model.localize`` (run under
    ``no_grad``); a given localizer (an extractor) runs outside ``no_grad`` as it manages
    gradients itself; either is called with the ground-truth labels (GT-known protocol); ``tau`` is the
    threshold of the pooled Dice / region sizes of mask sets (e.g. τ* chosen on valpx;
    ``None``: this split's τ*; box metrics sweep their own thresholds); ``localize=False``
    computes classification metrics only. Images without a mask (mask sets) or without a
    GT box (box sets) count for classification only. ``progress`` is
    called with the batch size after each batch; ``gallery`` keeps the first samples."""
    if loc_kind not in ("mask", "box"):
        raise MetricError(f"evaluate_split: loc_kind must be 'mask' or 'box', got {loc_kind!r}")
    if eval_size not in ("input", "original"):
        raise MetricError(f"evaluate_split: eval_size must be 'input' or 'original', got {eval_size!r}")
    loc_fn = localizer if localizer is not None else getattr(model, "localize", None)
    if localize and loc_fn is None:
        raise MetricError("evaluate_split: the model has no localize(images, targets); pass a localizer")
    cls_acc = ClassificationAccumulator()
    # F1± at 0.5, or at the threshold that makes a method's own binary mask (MAXMIN: σ)
    f1_tau = float(getattr(model, "binary_threshold", 0.5)) if localizer is None else 0.5
    pix = PixelAccumulator(region_tau=tau, f1_tau=f1_tau) if localize and loc_kind == "mask" else None
    box = BoxAccumulator() if localize and loc_kind == "box" else None
    items: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            images = batch["images"].to(device, non_blocking=True)
            labels = batch["labels"].to(device)
            n = images.shape[0]
            with torch.no_grad():
                logits = _logits(model(images)).detach()
            cls_acc.update(logits, labels)
            cams = None
            if localize:
                # a method's own localize needs no graph; an extractor manages its gradients
                with torch.no_grad() if localizer is None else contextlib.nullcontext():
                    cams = validate_cams(loc_fn(images, labels).detach(), "localizer output")
                if tuple(cams.shape) != (n, *images.shape[-2:]):
                    raise MetricError(
                        f"localizer returned CAMs of shape {tuple(cams.shape)}, expected {(n, *images.shape[-2:])} "
                        "(B×H×W at the input resolution, CAM contract)"
                    )
                if pix is not None:
                    _update_pixels(pix, cams, batch, n, eval_size)
                else:
                    _update_boxes(box, cams, batch, n, eval_size, logits, labels)
            if len(items) < gallery:
                items += _gallery_items(batch, cams, logits, gallery - len(items), loc_kind)
            if progress is not None:
                progress(n)
    finally:
        model.train(was_training)
    metrics: dict[str, Any] = dict(cls_acc.compute())
    curves: dict[str, Any] = {}
    if pix is not None:
        metrics.update(pix.compute(tau=tau))
        curves = pix.curves(tau=metrics["tau"])
    if box is not None:
        metrics.update(box.compute())
        curves = box.curves()
    log.debug("evaluated %d images (%s, localize=%s): %s", metrics["n_images"], loc_kind, localize, metrics)
    return EvalResult(metrics=metrics, curves=curves, gallery=items)


def _update_pixels(pix: PixelAccumulator, cams: Tensor, batch: dict[str, Any], n: int, eval_size: str) -> None:
    if eval_size == "original":
        masks = _original_labels(batch, "orig_masks", n)
        keep = [i for i, m in enumerate(masks) if m is not None]
        sizes = [batch["orig_sizes"][i] for i in keep]
        pix.update(_to_original(cams[keep], sizes), [torch.as_tensor(masks[i]) for i in keep])
        return
    masks = batch.get("masks")
    if masks is None:
        return
    if isinstance(masks, Tensor):
        pix.update(cams, masks.to(cams.device))
    else:
        pix.update(list(cams), list(masks))


def _update_boxes(
    box: BoxAccumulator, cams: Tensor, batch: dict[str, Any], n: int, eval_size: str, logits: Tensor, labels: Tensor
) -> None:
    if eval_size == "original":
        boxes = _original_labels(batch, "orig_boxes", n)
    else:
        boxes = list(batch["boxes"])
    keep = [i for i, b in enumerate(boxes) if b is not None and len(b) > 0]  # images without a GT box are skipped
    if not keep:
        return
    sel = cams[keep]
    if eval_size == "original":
        resized = _to_original(sel, [batch["orig_sizes"][i] for i in keep])
        if len({tuple(c.shape) for c in resized}) > 1:  # sizes differ: one image at a time
            for i, c in zip(keep, resized):
                box.update(c[None], [boxes[i]], logits[i : i + 1], labels[i : i + 1])
            return
        sel = torch.stack(resized)
    box.update(sel, [boxes[i] for i in keep], logits[keep], labels[keep])


def _gallery_items(
    batch: dict[str, Any], cams: Tensor | None, logits: Tensor, k: int, loc_kind: str
) -> list[dict[str, Any]]:
    out = []
    masks = batch.get("masks")
    preds = logits.argmax(1).cpu()
    for i in range(min(k, batch["images"].shape[0])):
        img = (batch["images"][i].detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        mask = masks[i] if masks is not None else None
        item = {
            "image_id": str(batch["image_ids"][i]),
            "image": img.permute(1, 2, 0).cpu().numpy(),
            "mask": None if mask is None else torch.as_tensor(mask).to(torch.uint8).cpu().numpy(),
            "cam": None if cams is None else cams[i].float().cpu().numpy().astype(np.float32),
            "label": int(batch["labels"][i]),
            "pred": int(preds[i]),
        }
        if loc_kind == "box":
            item["boxes"] = torch.as_tensor(batch["boxes"][i]).float().cpu().numpy()
        out.append(item)
    return out


def selection_score(metrics: dict[str, Any], loc_kind: str) -> float:
    """B-LOC model-selection score: PxAP for mask datasets, MaxBoxAccV2 for box datasets."""
    key = {"mask": "pxap", "box": "max_box_acc_v2"}.get(loc_kind)
    if key is None:
        raise MetricError(f"selection_score: loc_kind must be 'mask' or 'box', got {loc_kind!r}")
    if key not in metrics:
        raise MetricError(f"selection_score: metrics lack {key!r} (was the split evaluated with localize=True?)")
    return float(metrics[key])
