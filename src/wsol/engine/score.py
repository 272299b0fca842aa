"""Score CAMs made by any other code (``wsol score``): the job wsolevaluation's
``evaluation.py`` does, with the exact protocol of :mod:`wsol.metrics`.

Convention (wsolevaluation's): one ``.npy`` per image of the split, ``CAMS_DIR/<image_id>.npy``
(a 2-D float array; ``image_id`` as the dataset lists it, e.g. ``test/017/img.png`` ->
``CAMS_DIR/test/017/img.png.npy``; ``CAMS_DIR/test/017/img.npy``, without the image's
suffix, is accepted too). A CAM of another size than its image is resized bilinearly
(``align_corners=False``) to the image's size and min-max normalised, as wsolevaluation's
``inference.py`` does before scoring; a CAM of the image's size is scored as it is and must
lie in [0, 1] (``normalize=True`` min-max normalises every CAM first).

Labels are compared at each image's original size (``image_size=None``) or, like
wsolevaluation (224), with every image resized to ``image_size``² (masks nearest, boxes
scaled). Mask sets give PxAP, the confusion*, τ* and Dice (τ* of this split: no validation
CAMs are given); box sets MaxBoxAcc, MaxBoxAccV2 and the weight-map rule (no top-k loc: no
class scores are given).

``cam_curve_interval``: the threshold step (wsolevaluation's option). 0.001 (default) is the
protocol's 1000 thresholds. A coarser step k/1000 (k dividing 1000, e.g. 0.01) scores PxAP
and MaxBoxAcc(V2) on the thresholds {0, k/1000, ...}: the fine per-τ curves sampled every
k-th threshold, which for boxes is exactly wsolevaluation's threshold list (same integer
levels ``int(τ·max)`` for every τ and max) and for pixels its histogram bins merged (up to
CAM values within float rounding of a threshold). Other metrics stay on the fine grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsol.cams import minmax_normalize, to_cam
from wsol.data.records import Record, load_mask
from wsol.data.registry import check_split, get_dataset
from wsol.engine.callbacks import Callbacks
from wsol.errors import ConfigError, DataError, MetricError
from wsol.metrics import BoxAccumulator, PixelAccumulator


@dataclass
class ScoreResult:
    """``metrics`` flat numbers (percentages), ``curves`` per-τ curves, ``loc_kind``,
    ``n_images`` scored (images with a localisation label)."""

    metrics: dict[str, Any]
    curves: dict[str, Any] = field(default_factory=dict)
    loc_kind: str = "mask"
    n_images: int = 0


def curve_step(interval: float) -> int:
    """``cam_curve_interval`` as a step k on the 1000-threshold grid (k/1000, k divides 1000)."""
    k = round(interval * 1000)
    if not (interval > 0 and k >= 1 and abs(k / 1000 - interval) < 1e-9 and 1000 % k == 0):
        raise ConfigError(f"--cam-curve-interval {interval}: expected a multiple of 0.001 that divides 1 "
                          "(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, ...)")
    return k


def cam_file(cams_dir: Path, image_id: str) -> Path | None:
    """The CAM of ``image_id``: ``<image_id>.npy``, else ``<image_id without suffix>.npy``."""
    full = cams_dir / f"{image_id}.npy"
    if full.is_file():
        return full
    short = cams_dir / Path(image_id).with_suffix(".npy")
    return short if short.is_file() else None


def load_cam(path: Path) -> torch.Tensor:
    """A CAM file: a finite 2-D numeric array (1×H×W accepted), as float32."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable .npy array ({e}); write CAMs with numpy.save(path, cam)") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
        what = type(arr).__name__ if not isinstance(arr, np.ndarray) else f"dtype {arr.dtype}"
        raise DataError(f"{path}: expected a numeric array (H×W float), got {what}")
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"{path}: expected a 2-D CAM (H×W), got shape {arr.shape}")
    cam = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(cam).all():
        raise DataError(f"{path}: {int((~torch.isfinite(cam)).sum())} NaN/inf values; CAMs must be finite")
    return cam


def _image_size(rec: Record) -> tuple[int, int]:
    """(H, W) of the record's image, from the metadata or the file's header (not decoded)."""
    if rec.size is not None:
        return int(rec.size[1]), int(rec.size[0])
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(rec.image_path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{rec.image_path}: cannot read the image's size ({e})") from None
    return h, w


def _fit(cam: torch.Tensor, size: tuple[int, int], path: Path, normalize: bool) -> torch.Tensor:
    """The CAM at ``size`` (H, W) in [0, 1]: resized + min-max when its size differs."""
    if tuple(cam.shape) != tuple(size):
        return to_cam(cam[None], size)[0]
    if normalize:
        return minmax_normalize(cam[None])[0]
    lo, hi = float(cam.min()), float(cam.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{path}: values in [{lo:.4g}, {hi:.4g}], expected [0, 1]; min-max normalise the CAMs "
                        "or pass --normalize")
    return cam


def score_cams(cams_dir: Path | str, dataset: str, root: Path | str, split: str = "test",
               options: dict[str, Any] | None = None, *, cam_curve_interval: float = 0.001,
               image_size: int | None = None, normalize: bool = False,
               callbacks: Callbacks | None = None) -> ScoreResult:
    """Score ``CAMS_DIR/<image_id>.npy`` of every localisation-labelled image of ``split`` of
    ``dataset`` at ``root`` (reader ``options`` as ``data.options``); see the module doc."""
    cams_dir = Path(cams_dir)
    if not cams_dir.is_dir():
        raise DataError(f"{cams_dir}: no such folder of CAMs")
    k = curve_step(cam_curve_interval)
    if image_size is not None and image_size <= 0:
        raise ConfigError(f"--image-size must be positive, got {image_size}")
    spec = get_dataset(dataset)
    records = spec.list_records(Path(root), check_split(split), options or {})
    if spec.loc == "mask":
        labelled = [r for r in records if r.mask is not None]
    else:
        labelled = [r for r in records if r.boxes is not None and len(r.boxes) > 0]
    if not labelled:
        raise DataError(f"{root}: split {split!r} of {dataset} has no image with a {spec.loc} label to score against")
    files = [cam_file(cams_dir, r.image_id) for r in labelled]
    missing = [r.image_id for r, f in zip(labelled, files) if f is None]
    if missing:
        shown = ", ".join(str(cams_dir / f"{i}.npy") for i in missing[:3])
        raise DataError(f"{cams_dir}: no CAM for {len(missing)} of the {len(labelled)} {split} images with a "
                        f"{spec.loc} label, e.g. {shown}; write one <image_id>.npy per image (wsolevaluation's layout)")

    cb = callbacks or Callbacks()
    cb.on_stage(f"scoring {split}", len(labelled))
    pix = PixelAccumulator(track_regions=False) if spec.loc == "mask" else None
    box = BoxAccumulator() if spec.loc == "box" else None
    for rec, path in zip(labelled, files):
        assert path is not None
        h, w = _image_size(rec)
        size = (h, w) if image_size is None else (image_size, image_size)
        cam = _fit(load_cam(path), size, path, normalize)
        try:
            if pix is not None:
                mask = torch.from_numpy(np.ascontiguousarray(load_mask(rec, (h, w))))
                if size != (h, w):  # nearest, as the evaluation transform (wsol.data.transforms.Resize)
                    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(torch.uint8)
                pix.update(cam[None], mask[None])
            elif box is not None:
                boxes = torch.as_tensor(np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4))
                boxes = boxes * torch.tensor([size[1] / w, size[0] / h] * 2)
                box.update(cam[None], [boxes])
        except MetricError as e:
            raise DataError(f"{path}: {e}") from None
        cb.on_advance(1)

    metrics: dict[str, Any]
    if pix is not None:
        metrics = dict(pix.compute())
        curves = pix.curves()
        if k > 1:
            metrics["pxap"] = pxap_at_step(curves, k)
    else:
        assert box is not None
        metrics = dict(box.compute())
        curves = box.curves()
        if k > 1:
            metrics.update(box_acc_at_step(curves, k))
    metrics.update({"split": split, "cam_curve_interval": k / 1000, "n_images": len(labelled),
                    "eval_size": "original" if image_size is None else image_size})
    return ScoreResult(metrics, curves, spec.loc, len(labelled))


def pxap_at_step(curves: dict[str, Any], k: int) -> float:
    """PxAP (survey Eq. 16) on the thresholds τ = 0, k/1000, ..., 1 only: the pooled
    precision/recall curves sampled every k-th threshold (wsolevaluation's MaskEvaluator
    with ``cam_curve_interval = k/1000``: its bins [τ_j, τ_j+1) merge k of ours, and its
    [1, 2) bin is our τ = 1). Walking τ down, Σ P(τ_j)·(R(τ_j) − R(τ_j+1)), τ with no
    positive pixel skipped."""
    prec = np.asarray(curves["precision"], dtype=np.float64)[::k]
    rec = np.asarray(curves["recall"], dtype=np.float64)[::k]
    rec_next = np.append(rec[1:], 0.0)
    ok = np.isfinite(prec)
    return float(100.0 * np.sum(prec[ok] * (rec[ok] - rec_next[ok])))


def box_acc_at_step(curves: dict[str, Any], k: int) -> dict[str, float]:
    """MaxBoxAcc (V1) and MaxBoxAccV2 on τ ∈ {0, k/1000, ...}: the per-τ accuracy curves
    (τ = 0, 0.001, ..., 0.999) sampled every k-th threshold; V2 = mean over δ of the per-δ
    maxima (f-cam.txt §4.1; Choe et al. 2020)."""
    taus = np.asarray(curves["tau"])[::k]
    out: dict[str, float] = {}
    v1 = np.asarray(curves["box_acc"])[::k]
    out["max_box_acc"] = out["gt_known_loc"] = float(v1.max())
    out["max_box_acc_tau"] = float(taus[int(v1.argmax())])
    per_delta = []
    for key in sorted(c for c in curves if c.startswith("box_acc_v2_iou")):
        row = np.asarray(curves[key])[::k]
        name = key.replace("box_acc_v2", "max_box_acc_v2")
        out[name], out[f"{name}_tau"] = float(row.max()), float(taus[int(row.argmax())])
        per_delta.append(float(row.max()))
    out["max_box_acc_v2"] = float(np.mean(per_delta)) if per_delta else math.nan
    return out
