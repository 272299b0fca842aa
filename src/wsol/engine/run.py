"""Evaluate a trained run folder by the protocol: τ* (the threshold maximising mean IoU)
is chosen on ``valpx`` and used for the split's thresholded metrics (Dice); threshold-free
metrics (PxAP, confusion*, MaxBoxAcc) do not depend on it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wsol.config import RunConfig
from wsol.data.registry import check_split
from wsol.engine.checkpoint import load_checkpoint, load_run_config
from wsol.engine.evaluate import EvalResult, evaluate_split
from wsol.engine.trainer import Callbacks, build_model, make_loader, resolve_device
from wsol.fileio import atomic_write_bytes, write_json
from wsol.methods.base import Method

Localizer = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class RunEvaluation:
    checkpoint: str
    split: str
    result: EvalResult
    tau_star: float | None
    out_dir: Path


def load_method(run_dir: Path, checkpoint: str, device: torch.device | None = None
                ) -> tuple[RunConfig, Method, list[str], str, int]:
    """The run's config, its method with ``checkpoint`` loaded (eval mode), class names,
    localisation label kind and the checkpoint's epoch (0-based)."""
    cfg = load_run_config(run_dir)
    device = device or resolve_device(cfg.device)
    method, class_names, loc_kind = build_model(cfg)
    ck = load_checkpoint(run_dir, checkpoint, map_location=device)
    method.load_state_dict(ck["model"])
    method.to(device).eval()
    return cfg, method, class_names, loc_kind, int(ck.get("epoch", -1))


def evaluate_run(
    run_dir: Path | str,
    checkpoint: str = "best_loc",
    split: str = "test",
    *,
    localizer_factory: Callable[[Method], Localizer] | None = None,
    eval_size: str = "input",
    callbacks: Callbacks | None = None,
    tag: str | None = None,
) -> RunEvaluation:
    """Evaluate ``checkpoint`` of a run on ``split``; writes
    ``RUN/eval/<tag or checkpoint>/<split>/{metrics,curves}.json`` atomically.

    ``localizer_factory(method)`` replaces the method's own ``localize`` (e.g. a Grad-CAM
    extractor on its backbone)."""
    run_dir = Path(run_dir)
    cb = callbacks or Callbacks()
    check_split(split)
    cfg, method, _, loc_kind, epoch = load_method(run_dir, checkpoint)
    device = next(method.parameters()).device
    localizer = localizer_factory(method) if localizer_factory is not None else None
    tau_star = None
    if split != "valpx":
        loader = make_loader(cfg, "valpx", train=False)
        cb.on_stage(f"{checkpoint}: valpx (τ*)", len(loader.dataset))
        sel = evaluate_split(method, loader, loc_kind=loc_kind, device=device, localizer=localizer,
                             progress=cb.on_advance)
        tau_star = sel.metrics.get("tau")
    loader = make_loader(cfg, split, train=False, keep_original=eval_size == "original")
    cb.on_stage(f"{checkpoint}: {split}", len(loader.dataset))
    res = evaluate_split(method, loader, loc_kind=loc_kind, device=device, localizer=localizer, tau=tau_star,
                         eval_size=eval_size, progress=cb.on_advance, gallery=cfg.eval.gallery)
    res.metrics["epoch"] = epoch + 1
    out = run_dir / "eval" / (tag or checkpoint) / split
    write_json(out / "metrics.json", res.metrics)
    write_json(out / "curves.json", res.curves)
    save_gallery(out / "gallery.npz", res.gallery)
    return RunEvaluation(checkpoint, split, res, tau_star, out)


def save_gallery(path: Path, items: list[dict]) -> None:
    """Gallery samples as one compressed .npz (read back by the report), written atomically."""
    arrays: dict[str, np.ndarray] = {"n": np.array(len(items))}
    for i, it in enumerate(items):
        arrays[f"image_{i}"] = np.asarray(it["image"], np.uint8)
        arrays[f"cam_{i}"] = np.asarray(it["cam"], np.float16)
        arrays[f"label_{i}"] = np.array(int(it["label"]))
        arrays[f"id_{i}"] = np.array(str(it["image_id"]))
        if it.get("mask") is not None:
            arrays[f"mask_{i}"] = np.asarray(it["mask"], np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
