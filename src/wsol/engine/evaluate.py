"""The one Evaluator: score a model on one split with every metric of the protocol
(wsol.metrics).

:class:`Evaluator` is built from a model and a localiser — the model's own ``localize``
(default) or any ``(images, targets) -> CAM`` callable such as an extractor — and runs
over a loader of :class:`~wsol.data.sample.Batch` es, feeding the streaming accumulators:
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

Overlap (``overlap=True``, default): while the model computes the logits and CAMs of batch
k + 1, a helper thread feeds batch k to the accumulators (on CUDA their host copies and
OpenCV contours no longer stall the GPU; the DataLoader's workers load batch k + 2 meanwhile).
Batches reach the accumulators in order, one at a time: the numbers are those of the serial
loop. A split whose images carry no pixel / box label at all is scored for classification
only (one log line says so); images without a label count for classification only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from wsol.cams import model_logits, to_cam
from wsol.data.sample import Batch
from wsol.engine.selection import selection_score  # noqa: F401  (re-exported: B-LOC score)
from wsol.errors import MetricError
from wsol.metrics import BoxAccumulator, ClassificationAccumulator, PixelAccumulator, weight_map_scores
from wsol.metrics.pixel import validate_cams
from wsol.metrics.pr import PRAccumulator  # per-image PR curves (min-max-entropy Fig. 6)
from wsol.report.gallery import GalleryPool, item_iou

log = logging.getLogger(__name__)


class Localizer(Protocol):
    """Anything that turns images and per-sample class ids into CAMs (B×H×W in [0, 1]):
    a method's ``localize``, an extractor, a post-processed localiser."""

    def __call__(self, images: Tensor, targets: Tensor | None = None, /) -> Tensor: ...


class Progress(Protocol):
    def __call__(self, n: int, /) -> None: ...


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


def _original_labels(batch: Batch, key: str, n: int) -> list[Any]:
    vals = getattr(batch, key)
    if batch.orig_sizes is None or vals is None:
        raise MetricError(
            f"eval_size='original' needs the batch keys 'orig_sizes' (list of (H, W)) and {key!r} (labels at the "
            "original resolution); this loader's batches lack them. Use eval_size='input' or a dataset that "
            "returns original-size labels"
        )
    if len(vals) != n or len(batch.orig_sizes) != n:
        raise MetricError(f"eval_size='original': batch of {n} images but {len(vals)} entries in {key!r}")
    return list(vals)


def _to_original(cams: Tensor, sizes: list[Any]) -> list[Tensor]:
    """Each CAM upsampled bilinearly to its original (H, W) and min-max re-normalised."""
    return [to_cam(c[None], (int(s[0]), int(s[1])))[0] for c, s in zip(cams, sizes)]


class Evaluator:
    """Scores ``model`` on loaders of batches.

    ``localizer(images, targets) -> CAM`` defaults to ``model.localize`` (run under
    ``no_grad``); a given localizer (an extractor) runs outside ``no_grad`` as it manages
    gradients itself; either is called with the ground-truth labels (GT-known protocol).
    ``localize=False`` computes classification metrics only. F1± use the method's own
    ``binary_threshold`` (MAXMIN: σ) when it localises with its own maps, else 0.5.
    ``overlap``: accumulate batch k in a helper thread while batch k + 1 is computed (module
    doc; same numbers). ``distributed`` (DDP): each rank runs its shard of the split and the
    accumulators are summed across ranks before ``compute`` (wsol.engine.distributed)."""

    def __init__(self, model: torch.nn.Module, *, loc_kind: Literal["mask", "box"], device: torch.device,
                 localizer: Localizer | None = None, localize: bool = True, label_free_s: bool = False,
                 overlap: bool = True, cam_curve_interval: float = 0.001, distributed: bool = False):
        if loc_kind not in ("mask", "box"):
            raise MetricError(f"Evaluator: loc_kind must be 'mask' or 'box', got {loc_kind!r}")
        own = getattr(model, "localize", None)
        self.localizer = localizer if localizer is not None else own
        if localize and self.localizer is None:
            raise MetricError("Evaluator: the model has no localize(images, targets); pass a localizer")
        self.model, self.loc_kind, self.device, self.localize = model, loc_kind, device, localize
        # the weight map's label-free score S (weight-map-wsol Eqs. 5-6) over every localised
        # image, labelled or not (the box accumulator's S covers images with a GT box only)
        self.label_free_s = label_free_s and localize
        self.own_maps = localizer is None
        threshold = getattr(model, "binary_threshold", None) if self.own_maps else None
        self.f1_tau = 0.5 if threshold is None else float(threshold)
        self.overlap = overlap
        self.cam_curve_interval = cam_curve_interval
        self.distributed = distributed

    def run(self, loader: Iterable[Batch], *, tau: float | None = None,
            eval_size: Literal["input", "original"] = "input", progress: Progress | None = None,
            gallery: int = 0) -> EvalResult:
        """Evaluate every batch of ``loader``. ``tau``: the threshold of the pooled Dice /
        region sizes of mask sets (e.g. τ* chosen on valpx; ``None``: this split's τ*; box
        metrics sweep their own thresholds). Images without a mask (mask sets) or without a
        GT box (box sets) count for classification only. ``progress`` is called with the
        batch size after each batch; ``gallery`` > 0 keeps images for the report: with ``tau``
        given, the best, median and worst of the split by per-image IoU at ``tau``
        (:class:`wsol.report.gallery.GalleryPool`), otherwise the first ``gallery`` samples."""
        if eval_size not in ("input", "original"):
            raise MetricError(f"Evaluator: eval_size must be 'input' or 'original', got {eval_size!r}")
        model, localize = self.model, self.localize
        cls_acc = ClassificationAccumulator()
        pix = (PixelAccumulator(region_tau=tau, f1_tau=self.f1_tau, cam_curve_interval=self.cam_curve_interval)
               if localize and self.loc_kind == "mask" else None)
        # per-image averaged PR curves of fg / bg (min-max-entropy Fig. 6), mask sets
        pr = PRAccumulator(cam_curve_interval=self.cam_curve_interval) if pix is not None else None
        box = (BoxAccumulator(cam_curve_interval=self.cam_curve_interval)
               if localize and self.loc_kind == "box" else None)
        s_acc = [0.0, 0]  # label-free S: sum, count
        items: list[dict[str, Any]] = []
        # the report's gallery: with a known τ (mask sets, τ* from valpx) the best, median and
        # worst images of the whole split by per-image IoU; otherwise the first samples
        best_worst = GalleryPool() if gallery > 0 and localize and tau is not None else None

        def accumulate(batch: Batch, logits: Tensor, labels: Tensor, cams: Tensor | None, n: int) -> None:
            with torch.no_grad():
                cls_acc.update(logits, labels)
                if self.label_free_s and cams is not None:
                    s = weight_map_scores(cams)
                    s_acc[0], s_acc[1] = s_acc[0] + float(s.sum()), s_acc[1] + len(s)
                if pix is not None and cams is not None:
                    _update_pixels(pix, cams, batch, n, eval_size)
                    if pr is not None:  # Fig. 6 PR curves
                        _update_pixels(pr, cams, batch, n, eval_size)
                elif box is not None and cams is not None:
                    _update_boxes(box, cams, batch, n, eval_size, logits, labels)
                if best_worst is not None and cams is not None:
                    for it in _gallery_items(batch, cams, logits, len(batch), self.loc_kind):
                        best_worst.add(it, item_iou(it, tau))
                elif len(items) < gallery:
                    items.extend(_gallery_items(batch, cams, logits, gallery - len(items), self.loc_kind))

        was_training = model.training
        model.eval()
        pool = ThreadPoolExecutor(1, thread_name_prefix="wsol-eval") if self.overlap else None
        pending: tuple[Future[None], int] | None = None

        def finish() -> None:  # wait for the batch in flight (re-raises its error), then report it
            nonlocal pending
            if pending is not None:
                fut, n_done = pending
                pending = None
                fut.result()
                if progress is not None:
                    progress(n_done)

        try:
            for batch in loader:
                images = batch.images.to(self.device, non_blocking=True)
                labels = batch.labels.to(self.device, non_blocking=True)
                n = images.shape[0]
                with torch.no_grad():
                    logits = model_logits(model(images)).detach()
                cams = self.cams(images, labels) if localize else None
                finish()
                if pool is None:
                    accumulate(batch, logits, labels, cams, n)
                    if progress is not None:
                        progress(n)
                else:
                    pending = (pool.submit(accumulate, batch, logits, labels, cams, n), n)
            finish()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            model.train(was_training)
        if self.distributed:  # DDP: every rank scored its shard; sum them (wsol.engine.distributed)
            from wsol.engine.distributed import reduce_evaluation

            pix = reduce_evaluation(cls_acc, pix, box, s_acc)
            if pr is not None:  # Fig. 6 PR curves: summable state, summed across ranks
                from wsol.metrics import all_reduce_accumulator

                all_reduce_accumulator(pr)
        metrics: dict[str, Any] = dict(cls_acc.compute())
        curves: dict[str, Any] = {}
        if pix is not None and pix.n_images == 0:
            log.info("no image of this split has a pixel mask: classification metrics only")
        elif pix is not None:
            metrics.update(pix.compute(tau=tau))
            curves = pix.curves(tau=metrics["tau"])
            if pr is not None and pr.n_images:  # Fig. 6 PR curves: pr_auc_fg/bg, curves["pr"]
                metrics.update(pr.compute())
                curves["pr"] = pr.curves()
        if box is not None and int(box.counts[0]) == 0:
            log.info("no image of this split has a ground-truth box: classification metrics only")
        elif box is not None:
            metrics.update(box.compute())
            curves = box.curves()
        if s_acc[1]:
            metrics["weight_map_score_s"] = s_acc[0] / s_acc[1]
        log.debug("evaluated %d images (%s, localize=%s): %s", metrics["n_images"], self.loc_kind, localize, metrics)
        if best_worst is not None:
            items = best_worst.items() or items
        return EvalResult(metrics=metrics, curves=curves, gallery=items)

    def cams(self, images: Tensor, targets: Tensor) -> Tensor:
        """Contract-checked CAMs of ``targets`` (B×H×W at the input resolution)."""
        assert self.localizer is not None
        # a method's own localize needs no graph; an extractor manages its gradients
        with torch.no_grad() if self.own_maps else contextlib.nullcontext():
            cams = validate_cams(self.localizer(images, targets).detach(), "localizer output")
        n = images.shape[0]
        if tuple(cams.shape) != (n, *images.shape[-2:]):
            raise MetricError(
                f"localizer returned CAMs of shape {tuple(cams.shape)}, expected {(n, *images.shape[-2:])} "
                "(B×H×W at the input resolution, CAM contract)"
            )
        return cams


def evaluate_split(
    model: torch.nn.Module,
    loader: Iterable[Batch],
    *,
    loc_kind: Literal["mask", "box"],
    device: torch.device,
    localizer: Localizer | None = None,
    tau: float | None = None,
    eval_size: Literal["input", "original"] = "input",
    localize: bool = True,
    progress: Progress | None = None,
    gallery: int = 0,
) -> EvalResult:
    """One call: ``Evaluator(model, ...).run(loader, ...)`` (see both)."""
    ev = Evaluator(model, loc_kind=loc_kind, device=device, localizer=localizer, localize=localize)
    return ev.run(loader, tau=tau, eval_size=eval_size, progress=progress, gallery=gallery)


def _update_pixels(pix: PixelAccumulator | PRAccumulator, cams: Tensor, batch: Batch, n: int, eval_size: str) -> None:
    if eval_size == "original":
        masks = _original_labels(batch, "orig_masks", n)
        keep = [i for i, m in enumerate(masks) if m is not None]
        assert batch.orig_sizes is not None
        sizes = [batch.orig_sizes[i] for i in keep]
        pix.update(_to_original(cams[keep], sizes), [torch.as_tensor(masks[i]) for i in keep])
        return
    if batch.masks is None or batch.has_mask is None:
        return
    if bool(batch.has_mask.all()):
        pix.update(cams, batch.masks.to(cams.device))
    else:
        pix.update(list(cams), batch.mask_list())


def _update_boxes(
    box: BoxAccumulator, cams: Tensor, batch: Batch, n: int, eval_size: str, logits: Tensor, labels: Tensor
) -> None:
    if eval_size == "original":
        boxes = _original_labels(batch, "orig_boxes", n)
    else:
        boxes = list(batch.boxes)
    keep = [i for i, b in enumerate(boxes) if b is not None and len(b) > 0]  # images without a GT box are skipped
    if not keep:
        return
    sel = cams[keep]
    if eval_size == "original":
        assert batch.orig_sizes is not None
        resized = _to_original(sel, [batch.orig_sizes[i] for i in keep])
        if len({tuple(c.shape) for c in resized}) > 1:  # sizes differ: one image at a time
            for i, c in zip(keep, resized):
                box.update(c[None], [boxes[i]], logits[i : i + 1], labels[i : i + 1])
            return
        sel = torch.stack(resized)
    box.update(sel, [boxes[i] for i in keep], logits[keep], labels[keep])


def _gallery_items(
    batch: Batch, cams: Tensor | None, logits: Tensor, k: int, loc_kind: str
) -> list[dict[str, Any]]:
    out = []
    masks = batch.mask_list()
    preds = logits.argmax(1).cpu()
    for i in range(min(k, len(batch))):
        img = (batch.images[i].detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        mask = masks[i]
        item = {
            "image_id": str(batch.image_ids[i]),
            "image": img.permute(1, 2, 0).cpu().numpy(),
            "mask": None if mask is None else torch.as_tensor(mask).to(torch.uint8).cpu().numpy(),
            "cam": None if cams is None else cams[i].float().cpu().numpy().astype(np.float32),
            "label": int(batch.labels[i]),
            "pred": int(preds[i]),
        }
        if loc_kind == "box":
            item["boxes"] = torch.as_tensor(batch.boxes[i]).float().cpu().numpy()
        out.append(item)
    return out
