"""Soak test (slow, not in CI): 200 epochs on a tiny set with validation every epoch; the
process's resident memory must stay flat (no leak from hooks, figures, logs or the
TensorBoard writer). ``WSOL_SOAK_CURVE=path.csv`` writes the per-epoch RSS curve."""

from __future__ import annotations

import os
import resource

import pytest

from wsol.config import load_config
from wsol.data import synthesize
from wsol.engine.callbacks import Callbacks
from wsol.engine.trainer import Trainer


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class _Rss(Callbacks):
    def __init__(self) -> None:
        self.curve: list[float] = []

    def on_epoch_end(self, row: dict[str, float]) -> None:
        self.curve.append(_rss_mb())


@pytest.mark.slow
def test_soak_200_epochs_memory_is_flat(tmp_path):
    root = synthesize("synthetic-glas", tmp_path / "data", n=8, size=32, seed=0)
    cfg = load_config(None, [
        "data.name=synthetic-glas", f"data.root={root}", "data.image_size=32", f"run_dir={tmp_path / 'run'}",
        "model.method.name=cam", "optim.epochs=200", "optim.batch_size=8", "eval.batch_size=16",
    ])
    cb = _Rss()
    Trainer(cfg, callbacks=cb).fit()
    if os.environ.get("WSOL_SOAK_CURVE"):
        with open(os.environ["WSOL_SOAK_CURVE"], "w") as f:
            f.write("epoch,rss_mb\n" + "".join(f"{i + 1},{v:.1f}\n" for i, v in enumerate(cb.curve)))
    assert len(cb.curve) == 200
    warm = cb.curve[19]  # after warm-up (allocator pools, lazy imports)
    assert max(cb.curve[20:]) - warm < 50, f"RSS grew from {warm:.0f} MB to {max(cb.curve[20:]):.0f} MB"
