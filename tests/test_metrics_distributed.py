"""all_reduce_accumulator: two gloo ranks, each with half of the split, end with the
metrics of the whole split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wsol.metrics import BoxAccumulator, ClassificationAccumulator, PixelAccumulator, all_reduce_accumulator


def _data():
    g = torch.Generator().manual_seed(0)
    cams = torch.rand(6, 8, 8, generator=g)
    masks = (torch.rand(6, 8, 8, generator=g) > 0.5).to(torch.uint8)
    boxes = [np.array([[1, 1, 5, 6]])] * 6
    logits = torch.randn(6, 4, generator=g)
    labels = torch.randint(0, 4, (6,), generator=g)
    return cams, masks, boxes, logits, labels


def _fill(sl):
    cams, masks, boxes, logits, labels = _data()
    p, b, c = PixelAccumulator(track_regions=False), BoxAccumulator(), ClassificationAccumulator()
    p.update(cams[sl], masks[sl])
    b.update(cams[sl], boxes[sl], logits[sl], labels[sl])
    c.update(logits[sl], labels[sl])
    return p, b, c


def _worker(rank, world, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        accs = _fill(slice(rank * 3, rank * 3 + 3))
        for a in accs:
            all_reduce_accumulator(a)
        torch.save([a.compute() for a in accs], f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_metrics_all_reduce_over_two_ranks(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(2, init, out), nprocs=2, join=True)
    expected = [a.compute() for a in _fill(slice(0, 6))]
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=False)
        for g, e in zip(got, expected):
            assert g == pytest.approx(e)


def test_metrics_all_reduce_is_a_noop_without_process_group():
    p = _fill(slice(0, 6))[0]
    before = p.compute()
    assert all_reduce_accumulator(p) is p and p.compute() == before
