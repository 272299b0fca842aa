"""Progress hooks of the engine (light: no torch). The CLI subclasses :class:`Callbacks`
to draw progress bars on a terminal and uses :class:`LogCallbacks` when there is none
(SLURM, CI, notebooks); the Python API takes any subclass."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("wsol.progress")


class Callbacks:
    """Progress hooks; the CLI subclasses this to draw progress bars. All no-ops here."""

    def on_stage(self, name: str, total: int) -> None:
        """A stage (``train epoch k`` / ``valcl`` / ``valpx`` / ``test``) of ``total`` images starts."""

    def on_advance(self, n: int) -> None:
        """``n`` more images of the current stage are done."""

    def on_epoch_end(self, row: dict[str, float]) -> None:
        """An epoch's row of history (loss terms, lr, validation metrics)."""


def _hms(seconds: float) -> str:
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


#: history keys shown on an epoch's line (those present)
EPOCH_KEYS = ("train/total", "valcl/top1_acc", "valpx/pxap", "valpx/max_box_acc_v2")


class LogCallbacks(Callbacks):
    """Plain log lines for logs without a terminal: one line per epoch (elapsed time and the
    ETA of the remaining epochs) and one per evaluation stage (images, duration), plus a
    heartbeat line inside a stage that runs longer than ``heartbeat`` seconds (with the
    stage's own ETA). ``epochs``: the run's total number of epochs (the ETA needs it).
    ``emit``: where lines go (default: the ``wsol.progress`` logger at INFO level);
    ``clock``: seconds (monotonic), injectable for tests."""

    def __init__(self, epochs: int | None = None, emit: Callable[[str], None] | None = None,
                 heartbeat: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.epochs = epochs
        self.emit = emit or log.info
        self.heartbeat = heartbeat
        self.clock = clock
        self.t0 = clock()
        self.stage: str | None = None
        self.total = self.done = 0
        self.stage_t0 = self.last_beat = self.t0
        self.train_time = 0.0  # seconds spent in epochs (training + validation) so far
        self.epochs_seen = 0
        self.epoch_t0: float | None = None

    def _elapsed(self) -> str:
        return _hms(self.clock() - self.t0)

    def _close_stage(self) -> None:
        """The line of a finished evaluation stage (training epochs get theirs at epoch end)."""
        if self.stage is None or self.stage.startswith("epoch "):
            return
        took = self.clock() - self.stage_t0
        self.emit(f"[{self._elapsed()}] {self.stage}: {self.done}/{self.total} images in {took:.1f} s")
        self.stage = None

    def on_stage(self, name: str, total: int) -> None:
        self._close_stage()
        now = self.clock()
        if name.startswith("epoch ") and self.epoch_t0 is None:
            self.epoch_t0 = now
        self.stage, self.total, self.done = name, int(total), 0
        self.stage_t0 = self.last_beat = now

    def on_advance(self, n: int) -> None:
        self.done += int(n)
        now = self.clock()
        if self.done >= self.total > 0 and self.stage is not None and not self.stage.startswith("epoch "):
            self._close_stage()
            return
        if self.heartbeat > 0 and now - self.last_beat >= self.heartbeat and self.done > 0:
            self.last_beat = now
            rate = (now - self.stage_t0) / self.done
            eta = rate * max(self.total - self.done, 0)
            self.emit(f"[{self._elapsed()}] {self.stage}: {self.done}/{self.total} images, stage ETA {_hms(eta)}")

    def on_epoch_end(self, row: dict[str, float]) -> None:
        self._close_stage()
        now = self.clock()
        if self.epoch_t0 is not None:
            self.train_time += now - self.epoch_t0
        self.epoch_t0 = None
        self.epochs_seen += 1
        epoch = int(row.get("epoch", self.epochs_seen))
        txt = "  ".join(f"{k}={row[k]:.4g}" for k in EPOCH_KEYS if k in row)
        of = f"/{self.epochs}" if self.epochs else ""
        eta = ""
        if self.epochs:
            per_epoch = self.train_time / self.epochs_seen
            eta = f"  ETA {_hms(per_epoch * max(self.epochs - epoch, 0))}"
        self.emit(f"[{self._elapsed()}] epoch {epoch}{of}  {txt}{eta}".rstrip())
