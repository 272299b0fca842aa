"""Issue 19: the data pipeline (workers never change a run, per-sample seeds, single-threaded
per-sample work, cache), the sync-free training step (device-side loss sums, deferred NaN
check), amp / channels-last / compile options, overlapped evaluation; issue 11: a dataset
without pixel-labelled validation images trains with B-CL only."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from wsol.config import load_config
from wsol.data import synthesize
from wsol.data.records import Record, RecordDataset
from wsol.data.sample import Batch, collate
from wsol.data.transforms import Compose, RandomHFlip, RandomRot90
from wsol.engine import loader as loader_mod
from wsol.engine import trainer as trainer_mod
from wsol.engine.evaluate import Evaluator
from wsol.engine.loader import EpochSampler, LoaderDataset, resolve_workers, sample_seed
from wsol.engine.trainer import LossMeter, NonFiniteLoss, Trainer
from wsol.errors import ConfigError, WSOLError
from wsol.methods.base import Output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp") / "synthetic-glas"
    synthesize("synthetic-glas", root, n=16, size=32, seed=2)
    return root


@pytest.fixture(scope="module")
def eager(tiny, tmp_path_factory):
    """One epoch with the defaults in the main process: the reference of the option tests."""
    return Trainer(_cfg(tiny, tmp_path_factory.mktemp("eager") / "run", "optim.epochs=1", "data.num_workers=0")).fit()


def _cfg(root, run_dir, *sets):
    return load_config(None, [
        "data.name=synthetic-glas", f"data.root={root}", "data.image_size=32", f"run_dir={run_dir}",
        "data.crop_size=28", "data.augment.color_jitter=0.2", "model.backbone.name=resnet18",
        "model.method.name=cam", "optim.epochs=2", "optim.batch_size=4", "optim.lr=0.01", "eval.batch_size=8",
        "eval.gallery=0", *sets,
    ])


# --- workers never change a run ------------------------------------------------------------


def test_zero_and_two_workers_give_the_same_history(tiny, tmp_path):
    h0 = Trainer(_cfg(tiny, tmp_path / "w0", "data.num_workers=0")).fit().history
    h2 = Trainer(_cfg(tiny, tmp_path / "w2", "data.num_workers=2")).fit().history
    assert len(h0) == 2 and all(math.isfinite(r["train/total"]) for r in h0)
    assert h0 == h2  # (with data.cache and workers: test_resume_may_change_how_data_is_loaded)


def test_sampler_order_depends_on_seed_and_epoch_only():
    a = EpochSampler(10, seed=3)
    a.set_epoch(0)
    e0 = list(a)
    a.set_epoch(1)
    e1 = list(a)
    fresh = EpochSampler(10, seed=3)
    fresh.set_epoch(1)  # a resumed run starts here without having iterated epoch 0
    assert list(fresh) == e1
    assert sorted(i for i, _ in e0) == list(range(10)) and [i for i, _ in e0] != [i for i, _ in e1]
    # every (epoch, index) has its own seed; the seed is a function of (seed, epoch, index)
    seeds = [s for _, s in e0 + e1]
    assert len(set(seeds)) == 20
    assert dict(e1)[4] == sample_seed(3, 1, 4) != sample_seed(4, 1, 4)
    ordered = EpochSampler(5, seed=0, shuffle=False)
    assert [i for i, _ in ordered] == [0, 1, 2, 3, 4]


def _records(tmp_path: Path, n: int = 6) -> list[Record]:
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(p)
        recs.append(Record(image_id=f"img{i}", image_path=p, label=i % 2,
                           boxes=np.array([[2.0, 1.0, 9.0, 7.0]], np.float32)))
    return recs


def test_loader_dataset_seeds_each_sample_and_caches_exactly(tmp_path):
    recs = _records(tmp_path)
    t = Compose([RandomHFlip(), RandomRot90()])
    plain = LoaderDataset(RecordDataset(recs, t))
    cached = LoaderDataset(RecordDataset(recs, t), cache=True)
    assert cached.cache is not None and cached.cache[0]["image"].dtype == torch.uint8
    rng_before = torch.get_rng_state()
    outs = set()
    for seed in range(40):
        a, b = plain[(2, seed)], cached[(2, seed)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])  # cache: same bits
        assert torch.equal(a["image"], plain[(2, seed)]["image"])  # same key, same sample
        outs.add(tuple(a["boxes"][0].tolist()))
    assert len(outs) == 8  # the seeds reach the augmentation: all flips × rotations occur
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is never touched
    # a plain index (evaluation) is the record's own decoded image
    assert torch.equal(LoaderDataset(RecordDataset(recs))[3]["image"], RecordDataset(recs)[3]["image"])


def test_per_sample_work_runs_single_threaded_in_the_main_process(tmp_path):
    seen = []

    def spy(sample):
        seen.append(torch.get_num_threads())
        return sample

    ds = LoaderDataset(RecordDataset(_records(tmp_path, 2), spy))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ds.__getitems__([0, 1])
        ds[0]
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2  # restored after
    finally:
        torch.set_num_threads(before)


def test_auto_workers_from_the_available_cores(monkeypatch):
    monkeypatch.setattr(loader_mod, "available_cores", lambda: 16)
    assert resolve_workers("auto") == loader_mod.AUTO_WORKERS_CAP == 8
    assert resolve_workers("auto", n_batches=3) == 3  # no idle workers on a small split
    monkeypatch.setattr(loader_mod, "available_cores", lambda: 1)
    assert resolve_workers("auto") == 1  # never 0 unless asked
    assert resolve_workers(0) == 0 and resolve_workers(5) == 5
    assert load_config(None, []).data.num_workers == "auto"
    assert load_config(None, ["data.num_workers=0"]).data.num_workers == 0
    for bad in ("data.num_workers=-1", "data.num_workers=many"):
        with pytest.raises(ConfigError, match="num_workers"):
            load_config(None, [bad])


def test_auto_workers_fall_back_to_the_main_process_when_the_dataset_cannot_be_sent(tmp_path, monkeypatch,
                                                                                     caplog):
    recs = _records(tmp_path, 2)
    monkeypatch.setattr(loader_mod.mp, "get_start_method", lambda: "spawn")
    assert loader_mod._can_start_workers(RecordDataset(recs, Compose([RandomHFlip()])))
    with caplog.at_level(logging.WARNING, logger="wsol.engine.loader"):
        assert not loader_mod._can_start_workers(RecordDataset(recs, lambda s: s))
    assert "cannot be sent to spawn workers" in caplog.text
    monkeypatch.setattr(loader_mod.mp, "get_start_method", lambda: "fork")
    assert loader_mod._can_start_workers(RecordDataset(recs, lambda s: s))


def test_resume_may_change_how_data_is_loaded(tiny, tmp_path):
    full = Trainer(_cfg(tiny, tmp_path / "full", "data.num_workers=0")).fit().history
    part = tmp_path / "part"
    Trainer(_cfg(tiny, part, "optim.epochs=1", "data.num_workers=0")).fit()
    resumed = Trainer(_cfg(tiny, part, "data.num_workers=2", "data.cache=true")).fit(resume=True).history
    assert resumed == full


# --- the training step: device-side sums, deferred NaN check -------------------------------


def test_loss_meter_sums_exactly_as_per_step_host_reads():
    g = torch.Generator().manual_seed(0)
    meter = LossMeter(torch.device("cpu"))
    sums: dict[str, float] = {}
    n = 0
    for step in range(7):
        terms = {"ce": torch.rand((), generator=g) * 3, "total": torch.rand((), generator=g)}
        if step % 3 == 0:  # a term some steps only
            terms["extra"] = torch.rand((), generator=g)
        bs = 4 if step < 6 else 3
        meter.add(terms, bs, step)
        for k, v in terms.items():  # the former engine: float(v) * bs per step
            sums[k] = sums.get(k, 0.0) + float(v) * bs
        n += bs
    meter.check(0, 7)
    assert meter.read() == {k: v / n for k, v in sums.items()}


def test_non_finite_loss_is_raised_at_the_read_naming_step_and_terms():
    meter = LossMeter(torch.device("cpu"))
    for step in range(5):
        bad = step in (2, 3)
        meter.add({"ce": torch.tensor(1.0), "total": torch.tensor(math.nan if bad else 0.5)}, 2, 10 + step)
    with pytest.raises(NonFiniteLoss, match=r"epoch 3, step 3/5 \(global step 12\): loss became nan "
                                            r"\(terms: ce=1, total=nan\); lower optim.lr"):
        meter.check(2, 5)


def test_nan_training_names_the_step(tiny, tmp_path):
    with pytest.raises(WSOLError, match=r"epoch 1, step \d+/\d+ .*lower optim.lr"):
        Trainer(_cfg(tiny, tmp_path / "nan", "optim.epochs=1", "optim.lr=1e30")).fit()


# --- amp, channels-last, compile -----------------------------------------------------------


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains(tiny, tmp_path, amp):
    # small images: CPU float16 kernels are slow
    res = Trainer(_cfg(tiny, tmp_path / amp, "optim.epochs=1", f"optim.amp={amp}", "data.num_workers=0",
                       "data.image_size=16", "data.crop_size=null")).fit()
    assert math.isfinite(res.history[0]["train/total"])
    if amp == "fp16":  # the scaler's state is checkpointed for --resume
        from wsol.runs import load_checkpoint

        assert load_checkpoint(tmp_path / amp, "last")["scaler"]["scale"] > 0


def _minmax(tiny, run, amp):
    return _cfg(tiny, run, "model.method.name=minmax_entropy", "model.method.params.u=1", "optim.epochs=1",
                f"optim.amp={amp}", "data.num_workers=0", "data.image_size=16", "data.crop_size=null")


def test_fp16_is_refused_for_methods_that_backpropagate_in_training_step(tiny, tmp_path):
    with pytest.raises(ConfigError, match="backpropagates inside training_step.*optim.amp=bf16"):
        Trainer(_minmax(tiny, tmp_path / "mm16", "fp16")).fit()
    res = Trainer(_minmax(tiny, tmp_path / "mmbf", "bf16")).fit()  # bf16 needs no scaler
    assert math.isfinite(res.history[0]["train/loc_ce"])


def test_channels_last_trains_and_saves_contiguous_weights(tiny, tmp_path, eager):
    from wsol.runs import load_checkpoint

    ref = eager.history[0]
    res = Trainer(_cfg(tiny, tmp_path / "cl", "optim.epochs=1", "optim.channels_last=true",
                       "data.num_workers=0")).fit().history[0]
    # same initialisation and batches; only the convolution kernels' summation order differs
    assert res["train/total"] == pytest.approx(ref["train/total"], rel=1e-3)
    w = load_checkpoint(tmp_path / "cl", "last")["model"]
    assert all(v.is_contiguous() for v in w.values())


def test_compile_falls_back_to_eager_when_unsupported(tiny, tmp_path, monkeypatch, caplog, eager):
    ref = eager.history

    def broken(*a, **k):
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="wsol.engine.trainer"):
        res = Trainer(_cfg(tiny, tmp_path / "c1", "optim.epochs=1", "optim.compile=true",
                           "data.num_workers=0")).fit()
    assert res.history == ref
    assert "optim.compile: torch.compile does not work here (RuntimeError: no C compiler found)" in caplog.text


def test_compile_failing_at_the_first_step_falls_back(tiny, tmp_path, monkeypatch, caplog, eager):
    ref = eager.history

    def fake_compile(method, device):  # compiles, but the compiled call fails on the real model
        def fail(*a, **k):
            raise RuntimeError("inductor: unsupported op")

        method._compiled_call_impl = fail
        return True

    monkeypatch.setattr(trainer_mod, "try_compile", fake_compile)
    with caplog.at_level(logging.WARNING, logger="wsol.engine.trainer"):
        res = Trainer(_cfg(tiny, tmp_path / "c2", "optim.epochs=1", "optim.compile=true",
                           "data.num_workers=0")).fit()
    assert res.history == ref
    assert "compiling the model failed (RuntimeError: inductor: unsupported op)" in caplog.text


@pytest.mark.slow
def test_compile_really_compiles_and_trains_alike(tiny, tmp_path, eager):
    """torch.compile for real (needs a C compiler on CPU; minutes on 2 cores): the compiled
    forward runs, and the epoch's loss matches eager up to kernel rounding."""
    trainer = Trainer(_cfg(tiny, tmp_path / "c3", "optim.epochs=1", "optim.compile=true", "data.num_workers=0"))
    res = trainer.fit()
    if not trainer.compiled:
        pytest.skip("torch.compile is not supported on this machine (the fallback ran)")
    assert res.history[0]["train/total"] == pytest.approx(eager.history[0]["train/total"], rel=1e-3)


# --- evaluation: overlap gives the serial numbers ------------------------------------------


class _Toy(torch.nn.Module):
    """Logits from the mean colour, CAM = the red channel (a known, varied map)."""

    def forward(self, images):
        return Output(logits=images.mean((2, 3))[:, :2] * 10)

    def localize(self, images, targets=None):
        return images[:, 0]


def _batches(kind: str, n_batches: int = 4, b: int = 3) -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    out = []
    for k in range(n_batches):
        samples = []
        for i in range(b):
            s = {"image": torch.rand(3, 16, 16, generator=g), "label": (k + i) % 2, "image_id": f"{k}-{i}"}
            if kind == "mask" and (k, i) != (0, 1):  # one image without a mask
                s["mask"] = (torch.rand(16, 16, generator=g) > 0.6).to(torch.uint8)
            if kind == "box":
                x, y = int(torch.randint(0, 8, (), generator=g)), int(torch.randint(0, 8, (), generator=g))
                s["boxes"] = torch.tensor([[x, y, x + 7, y + 6]], dtype=torch.float32)
            samples.append(s)
        out.append(collate(samples))
    return out


@pytest.mark.parametrize("kind", ["mask", "box"])
def test_overlapped_evaluation_gives_the_serial_numbers(kind):
    batches = _batches(kind)
    runs = []
    for overlap in (False, True):
        seen: list[int] = []
        ev = Evaluator(_Toy(), loc_kind=kind, device=torch.device("cpu"), overlap=overlap)  # type: ignore[arg-type]
        runs.append((ev.run(batches, progress=seen.append, gallery=5), seen))
    (serial, p0), (overlapped, p1) = runs
    assert json.dumps(serial.metrics) == json.dumps(overlapped.metrics)  # NaN-aware, exact
    assert json.dumps(serial.curves) == json.dumps(overlapped.curves)
    assert p0 == p1 == [3, 3, 3, 3]
    assert [g["image_id"] for g in serial.gallery] == [g["image_id"] for g in overlapped.gallery]
    assert ("pxap" if kind == "mask" else "max_box_acc_v2") in serial.metrics


def test_evaluation_of_a_split_without_labels_is_classification_only():
    batches = _batches("none")
    res = Evaluator(_Toy(), loc_kind="mask", device=torch.device("cpu")).run(batches, gallery=2)  # type: ignore[arg-type]
    assert res.metrics["n_images"] == 12 and "pxap" not in res.metrics
    assert len(res.gallery) == 2 and res.gallery[0]["mask"] is None and res.gallery[0]["cam"] is not None


def test_evaluation_errors_in_the_helper_thread_reach_the_caller():
    class Bad(_Toy):
        def localize(self, images, targets=None):
            return images[:, 0] * 2  # values above 1: the CAM contract is violated

    from wsol.errors import MetricError

    with pytest.raises(MetricError):
        Evaluator(Bad(), loc_kind="mask", device=torch.device("cpu")).run(_batches("mask"))  # type: ignore[arg-type]


# --- issue 11: no pixel-labelled validation images -----------------------------------------


def _folder_without_masks(root: Path, n: int = 10) -> None:
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for k in range(n):
            img = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
            img[..., c] += 150  # a learnable class cue
            Image.fromarray(img).save(root / cls / f"{k}.png")


def test_folder_dataset_without_masks_trains_with_b_cl_only(tmp_path, caplog):
    from wsol.engine.pipeline import train_and_evaluate

    root = tmp_path / "mine"
    _folder_without_masks(root)
    cfg = load_config(None, [
        "data.name=folder", f"data.root={root}", "data.image_size=24", f"run_dir={tmp_path / 'run'}",
        "model.method.name=cam", "optim.epochs=2", "optim.batch_size=4", "eval.batch_size=8", "eval.gallery=3",
    ])
    with caplog.at_level(logging.WARNING):
        result, evals = train_and_evaluate(cfg, report=False)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("wsol.engine") and "valpx" in r.getMessage()]
    assert lines == ["valpx of folder has no image (no pixel-labelled validation images): best_loc skipped; "
                     "best_cls selects"]
    run = tmp_path / "run"
    assert json.loads((run / "run.json").read_text())["selection"] == ["best_cls"]
    assert (run / "checkpoints" / "best_cls.pt").is_file() and not (run / "checkpoints" / "best_loc.pt").exists()
    assert set(evals) == {"best_cls"}
    m = json.loads((run / "metrics.json").read_text())["best_cls"]
    assert 0 <= m["top1_acc"] <= 100 and "pxap" not in m  # classification; no localisation label exists
    assert all("valpx/" not in k for k in result.history[-1])
