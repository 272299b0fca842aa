"""TensorBoard helpers for the trainer (which owns the ``SummaryWriter``): a few CAM
overlays per validation, the run's hyper-parameters, and the history keys worth a scalar
plot (pixel / image counters are not)."""

from __future__ import annotations

from typing import Any

import numpy as np

from wsol.report.overlay import mask_rgb, overlay

#: history / metric keys that count things rather than measure them (kept out of TensorBoard)
COUNTER_PREFIXES = ("n_", "f1_fg_images", "f1_bg_images")


def is_counter(key: str) -> bool:
    """``valpx/n_pixels_fg``, ``valcl/n_images``, ... (the part after the split prefix)."""
    leaf = key.rsplit("/", 1)[-1]
    return leaf.startswith(COUNTER_PREFIXES)


def scalar_items(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a history row to plot: ``epoch`` and counters left out."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and not is_counter(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def tb_images(writer: Any, gallery_items: list[dict[str, Any]], step: int, tag: str = "cams",
              max_images: int = 4) -> int:
    """Log up to ``max_images`` CAM overlays (``tag/<i>_<image_id>``: the image | its CAM over
    it | the ground-truth mask when there is one, side by side) at ``step``. Items as the
    Evaluator's gallery: ``image`` H×W×3 uint8, ``cam`` H×W in [0, 1], optional ``mask``.
    Returns the number of images logged."""
    n = 0
    for it in gallery_items[:max_images]:
        if it.get("cam") is None:
            continue
        image = np.asarray(it["image"], dtype=np.uint8)
        panels = [image, overlay(image, np.asarray(it["cam"], dtype=np.float32))]
        if it.get("mask") is not None:
            panels.append(mask_rgb(it["mask"]))
        writer.add_image(f"{tag}/{n}_{it.get('image_id', '')}", np.concatenate(panels, axis=1), step,
                         dataformats="HWC")
        n += 1
    return n


def flat_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict flattened to ``a.b.c`` keys with values TensorBoard's HParams
    accepts (bool, int, float, str; lists and None as their text)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_hparams(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def tb_hparams(writer: Any, config: Any, metrics: dict[str, Any], step: int = 0) -> None:
    """The run's hyper-parameters (its config, a RunConfig or a dict, flattened) with its final
    numeric metrics (``hparam/<name>``; counters left out) for TensorBoard's HParams tab,
    written through ``writer``'s own event file — ``SummaryWriter.add_hparams`` would open a
    second writer (a second event file, or a sub-run)."""
    from torch.utils.tensorboard.summary import hparams

    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
    values = {f"hparam/{k}": float(v) for k, v in metrics.items()
              if not is_counter(k) and isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    experiment, session_start, session_end = hparams(flat_hparams(data), values)
    file_writer = writer._get_file_writer()
    for summary in (experiment, session_start, session_end):
        file_writer.add_summary(summary, step)
    for k, v in values.items():
        writer.add_scalar(k, v, step)
