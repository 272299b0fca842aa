"""Run folders and checkpoints.

A run folder holds everything needed to reproduce and re-evaluate a run::

    RUN/config.yaml               the resolved, validated config
    RUN/history.csv               one row per epoch: loss terms, lr, validation metrics
    RUN/tb/                       TensorBoard events (same numbers)
    RUN/checkpoints/{best_loc,best_cls,last}.pt
    RUN/eval/<checkpoint>/<split>/metrics.json, curves.json
    RUN/metrics.json              test metrics of both selected checkpoints side by side
    RUN/report.html

All files are written atomically (temp file + rename): an interrupted run never leaves a
half-written checkpoint or metrics file behind.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from wsol.config import RunConfig, load_config
from wsol.errors import CheckpointError
from wsol.fileio import atomic_write_bytes

CHECKPOINTS = ("best_loc", "best_cls", "last")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` of ``state``, written atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_path(run_dir: Path, name: str) -> Path:
    if name not in CHECKPOINTS:
        raise CheckpointError(f"unknown checkpoint {name!r}; valid: {', '.join(CHECKPOINTS)}")
    return Path(run_dir) / "checkpoints" / f"{name}.pt"


def load_checkpoint(run_dir: Path, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = checkpoint_path(run_dir, name)
    if not path.is_file():
        have = sorted(p.stem for p in (Path(run_dir) / "checkpoints").glob("*.pt"))
        hint = f" (found: {', '.join(have)})" if have else " — has this run been trained?"
        raise CheckpointError(f"{path}: checkpoint not found{hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e}); it may be corrupt — retrain or use another") from None


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run folder (no config.yaml); pass the folder `wsol train` wrote")
    return load_config(path)
