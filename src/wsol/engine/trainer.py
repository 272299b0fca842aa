"""One engine trains every method.

SGD (Nesterov, momentum, weight decay) with a classifier-head LR multiplier and step LR
decay; seeded (same seed -> same metrics on CPU); per-epoch validation (accuracy on
``valcl``, localisation on ``valpx``); keeps ``best_loc`` (B-LOC), ``best_cls`` (B-CL) and
``last`` checkpoints; resumable from ``last``; logs every loss term and metric per epoch
to CSV and TensorBoard. Human-facing progress goes through :class:`Callbacks` (the CLI
draws rich progress bars); the library itself only logs.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from wsol.config import RunConfig, dump_config
from wsol.data.registry import build_dataset, get_dataset
from wsol.data.sample import collate
from wsol.engine.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from wsol.engine.evaluate import evaluate_split, selection_score
from wsol.errors import CheckpointError, WSOLError
from wsol.fileio import atomic_write_text
from wsol.methods.base import Method, TrainState, build_method

log = logging.getLogger(__name__)


class Callbacks:
    """Progress hooks; the CLI subclasses this to draw progress bars. All no-ops here."""

    def on_stage(self, name: str, total: int) -> None:
        """A stage (``train epoch k`` / ``valcl`` / ``valpx`` / ``test``) of ``total`` images starts."""

    def on_advance(self, n: int) -> None:
        """``n`` more images of the current stage are done."""

    def on_epoch_end(self, row: dict[str, float]) -> None:
        """An epoch's row of history (loss terms, lr, validation metrics)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise WSOLError("device: 'cuda' requested but CUDA is not available; use device: auto or cpu")
    return torch.device(name)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


def make_loader(cfg: RunConfig, split: str, train: bool, seed: int = 0, keep_original: bool = False) -> DataLoader:
    ds = build_dataset(cfg.data, split, train=train, keep_original=keep_original)
    if len(ds) == 0:
        raise WSOLError(f"split {split!r} of {cfg.data.name} at {cfg.data.root} is empty")
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(
        ds,
        batch_size=cfg.optim.batch_size if train else cfg.eval.batch_size,
        shuffle=train,
        drop_last=train and len(ds) > cfg.optim.batch_size,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        generator=g,
        worker_init_fn=_worker_init,
    )


def build_model(cfg: RunConfig) -> tuple[Method, list[str], str]:
    """The method for this config, the class names and the localisation label kind."""
    spec = get_dataset(cfg.data.name)
    class_names = spec.class_names(Path(cfg.data.root), dict(cfg.data.options))
    method = build_method(cfg.model.method, cfg.model.backbone, len(class_names))
    return method, class_names, spec.loc


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, float]]
    best: dict[str, dict[str, float]] = field(default_factory=dict)


HISTORY = "history.csv"


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path | str | None = None, callbacks: Callbacks | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.run_dir)
        self.cb = callbacks or Callbacks()
        self.device = resolve_device(cfg.device)

    # ---------------------------------------------------------------------------------
    def _optimizer(self, method: Method) -> tuple[torch.optim.Optimizer, Any]:
        o = self.cfg.optim
        groups = method.param_groups(o.lr, o.head_lr_mult)
        opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                              weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, o.step_size, o.gamma) if o.step_size > 0 else None
        return opt, sched

    def _write_history(self, history: list[dict[str, float]]) -> None:
        keys: list[str] = []
        for row in history:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
        atomic_write_text(self.run_dir / HISTORY, buf.getvalue())

    def fit(self, resume: bool = False) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.seed)
        method, class_names, loc_kind = build_model(cfg)
        method.to(self.device)
        opt, sched = self._optimizer(method)
        train_loader = make_loader(cfg, "train", train=True, seed=cfg.seed)
        valcl_loader = make_loader(cfg, "valcl", train=False)
        valpx_loader = make_loader(cfg, "valpx", train=False)

        history: list[dict[str, float]] = []
        best = {"best_loc": -math.inf, "best_cls": -math.inf}
        start_epoch = 0
        if resume:
            ck = load_checkpoint(self.run_dir, "last", map_location=self.device)
            if _resume_key(ck.get("config", "")) != _resume_key(dump_config(cfg)):
                raise CheckpointError(
                    f"{checkpoint_path(self.run_dir, 'last')}: the run was trained with another config; "
                    "resume with the run's own config.yaml (only optim.epochs may change), "
                    "or train into a new run_dir"
                )
            method.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            history, best, start_epoch = ck["history"], ck["best"], ck["epoch"] + 1
            torch.set_rng_state(ck["rng"]["torch"])
            np.random.set_state(ck["rng"]["numpy"])
            random.setstate(ck["rng"]["python"])
            train_loader.generator.set_state(ck["rng"]["loader"])
            log.info("resumed %s at epoch %d", self.run_dir, start_epoch)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
        writer = _tensorboard(self.run_dir / "tb")
        try:
            for epoch in range(start_epoch, cfg.optim.epochs):
                row = self._train_epoch(method, opt, train_loader, epoch)
                if sched is not None:
                    sched.step()
                if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs:
                    row.update(self._validate(method, valcl_loader, valpx_loader, loc_kind, epoch, best))
                history.append(row)
                for k, v in row.items():
                    if k != "epoch" and writer is not None:
                        writer.add_scalar(k, v, epoch)
                self._write_history(history)
                save_checkpoint(checkpoint_path(self.run_dir, "last"), {
                    "model": method.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "epoch": epoch, "history": history, "best": best, "config": dump_config(cfg),
                    "class_names": class_names,
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                            "python": random.getstate(), "loader": train_loader.generator.get_state()},
                })
                self.cb.on_epoch_end(row)
        finally:
            if writer is not None:
                writer.close()
        return TrainResult(self.run_dir, history, best)

    def _train_epoch(self, method: Method, opt: torch.optim.Optimizer, loader: DataLoader, epoch: int) -> dict:
        method.train()
        method.on_epoch_start(epoch)
        state = TrainState(epoch=epoch, step=epoch * len(loader), num_epochs=self.cfg.optim.epochs)
        sums: dict[str, float] = {}
        n = 0
        self.cb.on_stage(f"epoch {epoch + 1}/{self.cfg.optim.epochs}", len(loader.dataset))
        for batch in loader:
            batch = _to_device(batch, self.device)
            terms = method.training_step(batch, state)
            total = terms["total"]
            if not torch.isfinite(total.detach()):
                raise WSOLError(
                    f"epoch {epoch + 1}: loss became {float(total.detach())} (terms: "
                    + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                    + "); lower optim.lr or check the data"
                )
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            bs = len(batch["labels"])
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * bs
            n += bs
            state.step += 1
            self.cb.on_advance(bs)
        row: dict[str, float] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        row.update({f"train/{k}": v / max(n, 1) for k, v in sums.items()})
        return row

    def _validate(self, method: Method, valcl: DataLoader, valpx: DataLoader, loc_kind: str, epoch: int,
                  best: dict[str, float]) -> dict[str, float]:
        method.eval()
        self.cb.on_stage("valcl", len(valcl.dataset))
        cl = evaluate_split(method, valcl, loc_kind=loc_kind, device=self.device, localize=False,
                            progress=self.cb.on_advance).metrics
        self.cb.on_stage("valpx", len(valpx.dataset))
        px = evaluate_split(method, valpx, loc_kind=loc_kind, device=self.device,
                            progress=self.cb.on_advance).metrics
        scores = {"best_cls": float(cl["top1_acc"]), "best_loc": float(selection_score(px, loc_kind))}
        # B-LOC keeps the first epoch reaching its best score; B-CL keeps the latest among
        # ties (on small valcl sets accuracy saturates early while training continues).
        for name, score in scores.items():
            better = score > best[name] if name == "best_loc" else score >= best[name]
            if better:
                best[name] = score
                save_checkpoint(checkpoint_path(self.run_dir, name), {
                    "model": method.state_dict(), "epoch": epoch, "score": score,
                    "config": dump_config(self.cfg),
                })
        row = {f"valcl/{k}": float(v) for k, v in cl.items() if _is_number(v)}
        row.update({f"valpx/{k}": float(v) for k, v in px.items() if _is_number(v)})
        return row


def _resume_key(config_yaml: str) -> dict:
    """A config as compared on --resume: everything but optim.epochs (a run may be extended)."""
    data = yaml.safe_load(config_yaml) or {}
    data.get("optim", {}).pop("epochs", None)
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _to_device(batch: dict, device: torch.device) -> dict:
    out = dict(batch)
    out["images"] = batch["images"].to(device, non_blocking=True)
    out["labels"] = batch["labels"].to(device, non_blocking=True)
    if isinstance(batch.get("masks"), torch.Tensor):
        out["masks"] = batch["masks"].to(device, non_blocking=True)
    return out


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; stay usable without it
        log.warning("tensorboard not installed; logging to CSV only")
        return None
    return SummaryWriter(str(path))
