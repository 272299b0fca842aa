"""Evaluate trained runs by the protocol, and the whole job (train, evaluate, report).

τ* (the threshold maximising mean IoU) is chosen on ``valpx`` and used for the split's
thresholded metrics (Dice); threshold-free metrics (PxAP, confusion*, MaxBoxAcc) do not
depend on it. Results go to ``RUN/eval/<column>/<split>/`` where a column is a checkpoint
(``best_loc``), or a checkpoint seen through an extractor (``best_loc+gradcam``), and are
merged into the split's summary (``RUN/metrics.json`` for test) — never overwriting
another column's numbers.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsol.config import RunConfig
from wsol.data.registry import check_split
from wsol.engine.callbacks import Callbacks
from wsol.engine.evaluate import EvalResult, Evaluator, Localizer
from wsol.engine.loader import split_size
from wsol.engine.trainer import Trainer, TrainResult, make_loader
from wsol.fileio import atomic_write_bytes, write_json
from wsol.methods.base import Method
from wsol.runs import LoadedRun, eval_dir, load_run, update_summary

#: builds a localiser for a loaded method (e.g. an extractor on its backbone)
LocalizerFactory = Callable[[Method], Localizer]


@dataclass
class RunEvaluation:
    checkpoint: str
    column: str
    split: str
    result: EvalResult
    tau_star: float | None
    out_dir: Path


def evaluate_run(
    run_dir: Path | str,
    checkpoint: str = "best_loc",
    split: str = "test",
    *,
    localizer_factory: LocalizerFactory | None = None,
    tag: str | None = None,
    eval_size: str = "input",
    callbacks: Callbacks | None = None,
    loaded: LoadedRun | None = None,
) -> RunEvaluation:
    """Evaluate ``checkpoint`` of a run on ``split``; writes
    ``RUN/eval/<column>/<split>/{metrics,curves}.json`` + ``gallery.npz`` atomically, with
    ``column = checkpoint`` or ``checkpoint+tag`` (``tag``: the extractor's name).

    ``localizer_factory(method)`` replaces the method's own ``localize`` (e.g. a Grad-CAM
    extractor on its backbone)."""
    run_dir = Path(run_dir)
    cb = callbacks or Callbacks()
    check_split(split)
    run = loaded or load_run(run_dir, checkpoint)
    cfg, method = run.data_config, run.method
    localizer = localizer_factory(method) if localizer_factory is not None else None
    from wsol.engine.selection import SELECTION

    label_free_s = any(SELECTION.get(c).label_free_s for c in run.info.selection if c in SELECTION)
    ev = Evaluator(method, loc_kind=run.loc_kind, device=run.device, localizer=localizer, label_free_s=label_free_s,
                   cam_curve_interval=run.config.eval.cam_curve_interval)
    tau_star = None
    if split != "valpx" and split_size(cfg, "valpx") > 0:  # no pixel-labelled valpx: the split's own τ*
        loader = make_loader(cfg, "valpx", train=False)
        cb.on_stage(f"{checkpoint}: valpx (τ*)", len(loader.dataset))  # type: ignore[arg-type]
        tau_star = ev.run(loader, progress=cb.on_advance).metrics.get("tau")
    loader = make_loader(cfg, split, train=False, keep_original=eval_size == "original")
    cb.on_stage(f"{checkpoint}: {split}", len(loader.dataset))  # type: ignore[arg-type]
    res = ev.run(loader, tau=tau_star, eval_size=eval_size, progress=cb.on_advance,  # type: ignore[arg-type]
                 gallery=cfg.eval.gallery)
    res.metrics["epoch"] = run.epoch + 1
    column = f"{checkpoint}+{tag}" if tag else checkpoint
    out = eval_dir(run_dir, column, split)
    write_json(out / "metrics.json", res.metrics)
    write_json(out / "curves.json", res.curves)
    save_gallery(out / "gallery.npz", res.gallery)
    return RunEvaluation(checkpoint, column, split, res, tau_star, out)


def evaluate_selected(run_dir: Path | str, split: str = "test", callbacks: Callbacks | None = None,
                      checkpoints: tuple[str, ...] | None = None, **kw) -> dict[str, RunEvaluation]:
    """Evaluate several checkpoints of a run (default: every selection criterion the run
    kept) and merge their metrics into the split's summary (``RUN/metrics.json`` for test,
    ``RUN/metrics-<split>.json`` otherwise), keyed by column."""
    run_dir = Path(run_dir)
    if checkpoints is None:
        from wsol.runs import load_run_config, read_run_info

        info = read_run_info(run_dir)
        checkpoints = tuple(info.selection) if info else ("best_loc", "best_cls")
        load_run_config(run_dir)  # a clear error before any work when this is not a run folder
    evals = {name: evaluate_run(run_dir, name, split, callbacks=callbacks, **kw) for name in checkpoints}
    update_summary(run_dir, split, {e.column: e.result.metrics for e in evals.values()})
    return evals


def train_and_evaluate(cfg: RunConfig, callbacks: Callbacks | None = None, resume: bool = False,
                       report: bool = True, overwrite: bool = False) -> tuple[TrainResult, dict[str, RunEvaluation]]:
    """Train, evaluate every kept checkpoint on test, write the report. ``overwrite``
    replaces a previous run in ``cfg.run_dir`` (its own files only)."""
    result = Trainer(cfg, callbacks=callbacks, overwrite=overwrite).fit(resume=resume)
    from wsol.engine.distributed import is_main

    if not is_main():  # under torchrun, rank 0 alone evaluates and writes the report
        return result, {}
    evals = evaluate_selected(result.run_dir, "test", callbacks)
    if report:
        from wsol.report.html import write_report

        write_report(result.run_dir)
    return result, evals


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
        if it.get("boxes") is not None:
            arrays[f"boxes_{i}"] = np.asarray(it["boxes"], np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())
