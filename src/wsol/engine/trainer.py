"""One engine trains every method.

Optimiser and LR schedule from the config (:func:`build_optimizer`, :func:`build_scheduler`;
default SGD with Nesterov momentum, a classifier-head LR multiplier); seeded (same seed ->
same metrics on CPU); per-epoch validation (accuracy on ``valcl``, localisation on
``valpx``); keeps one checkpoint per selection criterion (``best_loc`` = B-LOC, ``best_cls``
= B-CL, and any the method adds, see :mod:`wsol.engine.selection`) plus ``last``; resumable
from ``last``; logs every loss term and metric per epoch to CSV and TensorBoard; writes
``run.json`` so the run can be used without its dataset (:func:`wsol.runs.load_run`).
Human-facing progress goes through :class:`Callbacks` (the CLI draws progress bars); the
library itself only logs.

Throughput (issue 19): data loading is described in :mod:`wsol.engine.loader` (workers
never change a run). The training step never waits for the device: loss terms are summed
on the device and read once per epoch (and every :data:`READ_EVERY` steps), and a
non-finite ``total`` is recorded there and raised at the next read, naming its epoch, step
and terms. ``optim.amp`` (``bf16``: autocast; ``fp16``: autocast + GradScaler),
``optim.channels_last`` and ``optim.compile`` are opt-in. A method that backpropagates
inside ``training_step`` (min-max entropy) cannot use ``fp16``: its inner backward would
bypass the GradScaler, so the engine refuses it at the first step (use ``bf16``). Each
epoch logs the share of its time spent in validation.

A split without pixel-labelled validation images (``valpx`` empty, e.g. the ``folder``
reader without masks) skips the criteria that read it (B-LOC) with one log line; B-CL
selects, and ``run.json`` lists only the criteria kept.

Distributed training (issue 17): under ``torchrun`` (``WORLD_SIZE > 1``) the trainer joins the
process group, trains the method wrapped in DDP on its shard of each epoch, sums the
validation metrics and epoch losses across ranks, and writes files from rank 0 only; see
:mod:`wsol.engine.distributed` (the marked ``# DDP`` lines below are its hooks).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from wsol.config import RunConfig, dump_config
from wsol.data.registry import get_dataset
from wsol.data.sample import Batch
from wsol.engine.callbacks import Callbacks
from wsol.engine.distributed import DistContext, DistributedStep, convert_sync_bn, reduce_loss_means
from wsol.engine.distributed import setup as setup_distributed
from wsol.engine.evaluate import Evaluator
from wsol.engine.loader import make_loader, set_epoch, split_size
from wsol.engine.selection import DEFAULT_CRITERIA, SELECTION, Criterion
from wsol.errors import CheckpointError, ConfigError, DataError, WSOLError
from wsol.fileio import atomic_write_text
from wsol.methods.base import Method, TrainState, build_method
from wsol.nn.backbones import IMAGENET_MEAN, IMAGENET_STD
from wsol.report.tb import scalar_items, tb_hparams, tb_images
from wsol.runs import (
    HISTORY,
    LAST,
    RunInfo,
    RunLock,
    checkpoint_path,
    load_checkpoint,
    prepare_run_folder,
    resolve_device,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_run_info,
)

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


__all__ = ["Trainer", "TrainResult", "build_model", "build_optimizer", "build_scheduler", "lr_factor", "make_loader",
           "seed_everything"]

#: the loss sums and the non-finite check are read from the device every this many steps
#: (and at the end of each epoch)
READ_EVERY = 50


def build_model(cfg: RunConfig) -> tuple[Method, RunInfo]:
    """The method for this config and the run's description (class names from the dataset)."""
    spec = get_dataset(cfg.data.name)
    class_names = spec.class_names(Path(cfg.data.root), dict(cfg.data.options))
    method = build_method(cfg.model.method, cfg.model.backbone, len(class_names))
    criteria = [*DEFAULT_CRITERIA, *method.selection_criteria]
    info = RunInfo(method=cfg.model.method.name, class_names=list(class_names), loc_kind=spec.loc,
                   image_size=cfg.data.image_size, data_root=str(Path(cfg.data.root).resolve()), dataset=cfg.data.name,
                   normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, selection=criteria,
                   versions=RunInfo.versions_now())
    return method, info


def build_optimizer(cfg: RunConfig, method: Method) -> torch.optim.Optimizer:
    """``optim.name``: SGD (momentum, Nesterov), Adam or AdamW over the method's parameter
    groups (backbone at ``lr``, new layers at ``lr · head_lr_mult``)."""
    o = cfg.optim
    groups = method.param_groups(o.lr, o.head_lr_mult)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]), weight_decay=o.weight_decay)


def lr_factor(cfg: RunConfig, epoch: int) -> float:
    """The LR multiplier after ``epoch`` completed epochs (``sched.*``), before the floor."""
    s, n = cfg.sched, cfg.optim.epochs
    if s.warmup_epochs and epoch < s.warmup_epochs:
        return (epoch + 1) / (s.warmup_epochs + 1)
    e = epoch - s.warmup_epochs
    span = max(n - s.warmup_epochs, 1)
    if s.name == "step":
        return s.gamma ** (e // s.step_size)
    if s.name == "multistep":
        return s.gamma ** sum(epoch >= m for m in s.milestones)
    if s.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(e, span) / span))
    if s.name == "poly":
        return max(1 - e / span, 0.0) ** s.power
    return 1.0


def build_scheduler(cfg: RunConfig, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch schedule of ``sched.name`` with warm-up and the ``min_lr`` floor; None when
    the LR is constant."""
    s = cfg.sched
    if s.name == "none" and not s.warmup_epochs:
        return None
    def factor(floor: float) -> Callable[[int], float]:
        return lambda epoch: max(lr_factor(cfg, epoch), floor)

    floors = [s.min_lr / g["lr"] if g["lr"] > 0 else 0.0 for g in opt.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(opt, [factor(f) for f in floors])


@dataclass
class TrainResult:
    """``history``: one row per epoch (as ``history.csv``); ``timings``: per epoch, the
    seconds spent training (``train_s``) and validating (``val_s``) — not in the history,
    which stays identical run to run."""

    run_dir: Path
    history: list[dict[str, float]]
    best: dict[str, float] = field(default_factory=dict)
    timings: list[dict[str, float]] = field(default_factory=list)


class NonFiniteLoss(WSOLError):
    """The training loss became NaN or infinite."""


class LossMeter:
    """Loss terms of an epoch summed on the device (no host sync per step) and the first
    step whose ``total`` is not finite, with its terms, remembered on the device; both are
    read by :meth:`read` / :meth:`check`.

    Sums are ``Σ float(term)·batch size`` in float64, term by term in step order — exactly
    what the former per-step host reads gave (float32 on MPS, which has no float64)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.names: list[str] = []
        self.sums = torch.zeros(0, dtype=self.dtype, device=device)
        #: per tuple of term names (a method may return other terms on some steps): where
        #: they sit in ``sums``, the first step with a non-finite total and its terms
        self.groups: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}
        self.n = 0

    def add(self, terms: dict[str, torch.Tensor], bs: int, step: int) -> None:
        names = tuple(terms)
        vals = torch.stack([v.detach().reshape(()).to(self.dtype) for v in terms.values()])
        g = self.groups.get(names)
        if g is None:
            new = [k for k in names if k not in self.names]
            if new:
                self.names += new
                self.sums = torch.cat([self.sums.to(vals.device), vals.new_zeros(len(new))])
            g = self.groups[names] = {
                "index": torch.tensor([self.names.index(k) for k in names], device=vals.device),
                "bad_step": torch.full((), -1, dtype=torch.int64, device=vals.device),
                "bad_vals": vals.new_zeros(len(names)),
            }
        self.sums.index_add_(0, g["index"], vals * bs)
        total = vals[names.index("total")]
        newly = ~torch.isfinite(total) & (g["bad_step"] < 0)
        g["bad_step"] = torch.where(newly, torch.full_like(g["bad_step"], step), g["bad_step"])
        g["bad_vals"] = torch.where(newly, vals, g["bad_vals"])
        self.n += bs

    def check(self, epoch: int, steps_per_epoch: int) -> None:
        """Raise :class:`NonFiniteLoss` if a step recorded a non-finite ``total`` (a host read)."""
        bad: list[tuple[int, tuple[str, ...], torch.Tensor]] = []
        for names, g in self.groups.items():
            step = int(g["bad_step"])
            if step >= 0:
                bad.append((step, names, g["bad_vals"]))
        if not bad:
            return
        step, names, vals = min(bad, key=lambda b: b[0])
        values = dict(zip(names, vals.tolist()))
        raise NonFiniteLoss(
            f"epoch {epoch + 1}, step {step - epoch * steps_per_epoch + 1}/{steps_per_epoch} (global step {step}): "
            f"loss became {values['total']} (terms: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            + "); lower optim.lr or check the data"
        )

    def read(self) -> dict[str, float]:
        """Mean of every term over the samples of the epoch (one host read)."""
        return {k: v / max(self.n, 1) for k, v in zip(self.names, self.sums.tolist())}


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _compile_probe(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


def try_compile(method: Method, device: torch.device) -> bool:
    """``optim.compile``: compile the method's forward in place (``nn.Module.compile``; the
    method's ``training_step`` / ``localize`` call it through ``self(...)``), after checking on
    a tiny function that torch.compile works here (it needs a C compiler on CPU and a
    supported Python). False, with a warning, when it does not: training goes on eagerly."""
    try:
        torch.compile(_compile_probe)(torch.ones(2, device=device))
    except Exception as e:  # any failure of the compiler stack means "not supported here"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        log.warning("optim.compile: torch.compile does not work here (%s: %s); training without it",
                    type(e).__name__, first[:200])
        return False
    method.compile()
    return True


def uncompile(method: Method) -> None:
    """Undo :func:`try_compile` (``nn.Module.compile`` keeps the compiled call here)."""
    method._compiled_call_impl = None


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path | str | None = None, callbacks: Callbacks | None = None,
                 overwrite: bool = False):
        self.cfg = cfg
        self.run_dir = Path(run_dir or cfg.run_dir)
        self.cb = callbacks or Callbacks()
        self.overwrite = overwrite
        self.device = resolve_device(cfg.device)
        self.amp_dtype = AMP_DTYPES[cfg.optim.amp]
        self.scaler: torch.amp.GradScaler | None = None
        self.compiled = self.compile_unproven = False
        self.dist = DistContext(device=self.device)  # DDP: set by fit (wsol.engine.distributed)
        self.dstep: DistributedStep | None = None

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
        """Train (or continue, ``resume``) into the run folder, which is locked meanwhile;
        a folder holding another run is refused unless the trainer was built with
        ``overwrite=True`` (see :func:`wsol.runs.prepare_run_folder`)."""
        # DDP: join torchrun's process group; rank 0 alone prepares and locks the folder (its
        # errors are raised on every rank), the others get no progress callbacks
        self.dist = setup_distributed(self.cfg.device)
        try:
            self.device = self.dist.device
            if not self.dist.is_main:
                self.cb = Callbacks()
            with contextlib.ExitStack() as lock:
                def prepare() -> None:
                    prepare_run_folder(self.run_dir, resume=resume, overwrite=self.overwrite)
                    lock.enter_context(RunLock(self.run_dir))

                self.dist.run_on_main(prepare)
                result = self._fit(resume)
            self.dist.barrier()  # DDP: rank 0's files are complete when fit returns on any rank
            return result
        finally:
            self.dist.close()
            self.dstep = None

    def _criteria(self, info: RunInfo) -> list[Criterion]:
        """The run's selection criteria whose validation split has images; a criterion on an
        empty split (B-LOC without pixel-labelled ``valpx`` images) is skipped, with one log
        line, and dropped from ``info.selection``."""
        cfg = self.cfg
        criteria = [SELECTION.get(name) for name in info.selection]
        sizes = {split: split_size(cfg, split) for split in sorted({c.split for c in criteria})}
        kept = [c for c in criteria if sizes[c.split] > 0]
        for split in sorted(s for s, n in sizes.items() if n == 0):
            skipped = ", ".join(c.name for c in criteria if c.split == split)
            if split == "valpx":
                log.warning("%s of %s has no image (no pixel-labelled validation images): %s skipped; %s selects",
                            split, cfg.data.name, skipped, ", ".join(c.name for c in kept) or "nothing")
            else:
                log.warning("%s of %s has no image: %s skipped", split, cfg.data.name, skipped)
        if not kept:
            raise DataError(
                f"{cfg.data.name} at {cfg.data.root}: the validation splits ({', '.join(sizes)}) are empty, so no "
                "checkpoint can be selected; give the dataset a valcl split (e.g. data.options val_fraction > 0)"
            )
        info.selection = [c.name for c in kept]
        return kept

    def _fit(self, resume: bool) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.seed)
        method, info = build_model(cfg)
        method.to(self.device)
        if cfg.optim.channels_last:
            method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if cfg.optim.sync_bn:  # DDP: BatchNorm over the global batch (CUDA); no-op in one process
            convert_sync_bn(method, self.dist)
        opt = build_optimizer(cfg, method)
        sched = build_scheduler(cfg, opt)
        if self.amp_dtype is torch.float16:
            self.scaler = torch.amp.GradScaler(self.device.type)
        criteria = self._criteria(info)
        rank, world = self.dist.rank, self.dist.world_size  # DDP: this rank's shard
        train_loader = make_loader(cfg, method.train_split, train=True, seed=cfg.seed, rank=rank, world_size=world)
        val_loaders = {split: make_loader(cfg, split, train=False, rank=rank, world_size=world)
                       for split in ("valcl", "valpx") if any(c.split == split for c in criteria)}

        history: list[dict[str, float]] = []
        best = {c.name: -math.inf for c in criteria}
        start_epoch = 0
        if resume:
            # DDP: rank 0 reads the checkpoint and broadcasts it (other nodes need no run folder)
            ck = self.dist.run_on_main(lambda: load_checkpoint(
                self.run_dir, LAST, map_location="cpu" if self.dist.active else self.device))
            if _resume_key(ck.get("config", "")) != _resume_key(dump_config(cfg)):
                raise CheckpointError(
                    f"{checkpoint_path(self.run_dir, LAST)}: the run was trained with another config; "
                    "resume with the run's own config.yaml (only optim.epochs may change), "
                    "or train into a new run_dir"
                )
            if cfg.optim.epochs < int(ck["epoch"]) + 1:
                raise CheckpointError(
                    f"{self.run_dir}: already trained {int(ck['epoch']) + 1} epochs; --resume can only extend a run "
                    f"(optim.epochs={cfg.optim.epochs} is fewer)"
                )
            method.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            if self.scaler is not None and ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            history, best, start_epoch = list(ck["history"]), dict(ck["best"]), int(ck["epoch"]) + 1
            best = {c.name: best.get(c.name, -math.inf) for c in criteria}
            set_rng_state(ck["rng"], train_loader.generator)
            log.info("resumed %s at epoch %d", self.run_dir, start_epoch)
        if cfg.optim.compile:
            # a compiled forward that fails at its first real step falls back to eager
            self.compiled = self.compile_unproven = try_compile(method, self.device)
        if self.dist.active:  # DDP: gradients averaged across ranks (broadcasts rank 0's weights)
            self.dstep = DistributedStep(method, self.dist, cfg.model.method.name)

        main = self.dist.is_main  # DDP: rank 0 writes every file
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", dump_config(cfg))
            write_run_info(self.run_dir, info)
        writer = _tensorboard(self.run_dir / "tb") if main else None
        timings: list[dict[str, float]] = []
        try:
            for epoch in range(start_epoch, cfg.optim.epochs):
                t0 = time.perf_counter()
                row = self._train_epoch(method, opt, train_loader, epoch)
                if sched is not None:
                    sched.step()
                t1 = time.perf_counter()
                gallery: list[dict[str, Any]] = []  # a few valpx CAMs for TensorBoard
                if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.optim.epochs:
                    row.update(self._validate(method, val_loaders, criteria, info, epoch, best,
                                              gallery if writer is not None else None))
                t2 = time.perf_counter()
                timings.append({"epoch": epoch + 1, "train_s": t1 - t0, "val_s": t2 - t1})
                log.info("epoch %d/%d: training %.1f s, validation %.1f s (%.0f%% of the epoch)", epoch + 1,
                         cfg.optim.epochs, t1 - t0, t2 - t1, 100.0 * (t2 - t1) / max(t2 - t0, 1e-9))
                history.append(row)
                if writer is not None:
                    for k, v in scalar_items(row).items():  # pixel / image counters left out
                        writer.add_scalar(k, v, epoch)
                    tb_images(writer, gallery, epoch)
                    writer.add_scalar("time/train_s", t1 - t0, epoch)
                    writer.add_scalar("time/val_s", t2 - t1, epoch)
                if main:
                    self._write_history(history)
                    save_checkpoint(checkpoint_path(self.run_dir, LAST), {
                        "model": _state_dict(method), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict() if sched is not None else None,
                        "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                        "epoch": epoch, "history": history, "best": best, "config": dump_config(cfg),
                        "class_names": info.class_names, "rng": rng_state(train_loader.generator),
                    })
                self.cb.on_epoch_end(row)
            if writer is not None:
                tb_hparams(writer, cfg, {**(history[-1] if history else {}),
                                         **{f"best/{k}": v for k, v in best.items()}}, step=max(len(history) - 1, 0))
        finally:
            if writer is not None:
                writer.close()
        return TrainResult(self.run_dir, history, best, timings)

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.amp_dtype is None:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            yield

    def _step(self, method: Method, opt: torch.optim.Optimizer, batch: Batch,
              state: TrainState) -> dict[str, torch.Tensor]:
        """One optimisation step; nothing here waits for the device (fp16's GradScaler
        excepted: it reads its inf check once per step)."""
        # zero first: a method may backpropagate part of its loss inside training_step
        # (min-max entropy's recursion does, one step at a time) before ``total``
        opt.zero_grad(set_to_none=True)
        dstep = self.dstep  # DDP: the step through DistributedDataParallel, gradients averaged
        with dstep.step() if dstep is not None else contextlib.nullcontext():
            with self._autocast():
                terms = dstep.training_step(batch, state) if dstep is not None else method.training_step(batch, state)
            total = terms["total"]
            if self.scaler is not None:
                if any(p.grad is not None for p in method.parameters()):
                    raise ConfigError(
                        f"optim.amp=fp16: method {self.cfg.model.method.name!r} backpropagates inside training_step, "
                        "where the engine's GradScaler cannot scale its loss (its fp16 gradients would underflow); "
                        "use optim.amp=bf16 (no scaler needed) or none"
                    )
                if total.requires_grad:
                    self.scaler.scale(total).backward()
            elif total.requires_grad:
                total.backward()
        if dstep is not None:
            dstep.sync_gradients()
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        return terms

    def _train_epoch(self, method: Method, opt: torch.optim.Optimizer, loader: DataLoader, epoch: int) -> dict:
        method.train()
        method.on_epoch_start(epoch)
        set_epoch(loader, epoch)
        steps = len(loader)
        state = TrainState(epoch=epoch, step=epoch * steps, num_epochs=self.cfg.optim.epochs)
        meter = LossMeter(self.device)
        self.cb.on_stage(f"epoch {epoch + 1}/{self.cfg.optim.epochs}", len(loader.sampler))  # type: ignore[arg-type]
        try:
            for i, batch in enumerate(loader):
                batch = batch.to(self.device, non_blocking=True)
                if self.cfg.optim.channels_last:
                    batch = dataclasses.replace(batch, images=batch.images.contiguous(memory_format=torch.channels_last))
                try:
                    terms = self._step(method, opt, batch, state)
                except Exception as e:
                    if not self.compile_unproven or isinstance(e, WSOLError):  # wsol's own errors are not the compiler's
                        raise
                    # torch.compile failed on the real model: fall back to eager (this one step is redone)
                    log.warning("optim.compile: compiling the model failed (%s: %s); training without it",
                                type(e).__name__, str(e).strip().splitlines()[0][:200] if str(e).strip() else "")
                    uncompile(method)
                    self.compiled = self.compile_unproven = False
                    terms = self._step(method, opt, batch, state)
                self.compile_unproven = False
                meter.add(terms, len(batch), state.step)
                state.step += 1
                self.cb.on_advance(len(batch))
                if (i + 1) % READ_EVERY == 0:
                    meter.check(epoch, steps)
        except NonFiniteLoss:
            raise
        except Exception:
            meter.check(epoch, steps)  # a non-finite loss earlier is the cause to report
            raise
        meter.check(epoch, steps)
        row: dict[str, float] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"]}
        # DDP: the means over every rank's samples
        means = reduce_loss_means(meter.names, meter.sums, meter.n) if self.dist.active else meter.read()
        row.update({f"train/{k}": v for k, v in means.items()})
        return row

    def _validate(self, method: Method, loaders: dict[str, DataLoader], criteria: list[Criterion], info: RunInfo,
                  epoch: int, best: dict[str, float], gallery: list[dict[str, Any]] | None = None) -> dict[str, float]:
        """Validate on each selection split, save the checkpoints whose criterion improved,
        return the history row; ``gallery`` (a list) receives a few valpx samples with their
        CAMs (for TensorBoard)."""
        method.eval()
        metrics: dict[str, dict[str, Any]] = {}
        for split, loader in loaders.items():
            self.cb.on_stage(split, len(loader.sampler))  # type: ignore[arg-type]
            ev = Evaluator(method, loc_kind=info.loc_kind, device=self.device, localize=split == "valpx",
                           label_free_s=any(c.label_free_s and c.split == split for c in criteria),
                           cam_curve_interval=self.cfg.eval.cam_curve_interval,
                           distributed=self.dist.active)  # DDP: metrics summed over the ranks' shards
            res = ev.run(loader, progress=self.cb.on_advance,
                         gallery=TB_IMAGES if gallery is not None and split == "valpx" else 0)
            metrics[split] = res.metrics
            if gallery is not None:
                gallery.extend(res.gallery)
        for c in criteria:
            score = float(c.score(metrics[c.split], info.loc_kind, self.cfg.eval.selection_metric))
            if c.better(score, best[c.name]):
                best[c.name] = score
                if self.dist.is_main:  # DDP: every rank has the same metrics; rank 0 writes
                    save_checkpoint(checkpoint_path(self.run_dir, c.name), {
                        "model": _state_dict(method), "epoch": epoch, "score": score,
                        "config": dump_config(self.cfg), "class_names": info.class_names,
                    })
        row: dict[str, float] = {}
        for split, m in metrics.items():
            row.update({f"{split}/{k}": float(v) for k, v in m.items() if _is_number(v)})
        return row


#: valpx images whose CAM overlays go to TensorBoard at each validation
TB_IMAGES = 4


def _state_dict(method: Method) -> dict[str, torch.Tensor]:
    """The method's weights in the default (contiguous) memory format, whatever
    ``channels_last`` did, so checkpoints load the same everywhere."""
    return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in method.state_dict().items()}


def _resume_key(config_yaml: str) -> dict:
    """A config as compared on --resume: everything but optim.epochs (a run may be
    extended), the run folder and the data root (a run folder or its data may move), and how
    the data is loaded (``data.num_workers``, ``data.cache``: they never change a run)."""
    data = yaml.safe_load(config_yaml) or {}
    data.get("optim", {}).pop("epochs", None)
    data.pop("run_dir", None)
    for key in ("root", "num_workers", "cache"):  # where the data is and how it is loaded: same numbers
        data.get("data", {}).pop(key, None)
    if not data.get("optim", {}).get("sync_bn", True):  # DDP option added later: runs from before resume
        data["optim"].pop("sync_bn", None)
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; stay usable without it
        log.warning("tensorboard not installed (pip install 'wsol[tb]'); logging to CSV only")
        return None
    return SummaryWriter(str(path))
