"""Embedded synthetic datasets: seeded, class difference confined to the ROIs, written in the
wsolevaluation layout and read back to the Sample contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from wsol.config import DataConfig
from wsol.data import available_datasets, build_dataset, ensure_dataset, get_dataset, synthesize
from wsol.data.embedded.synthetic import CUB, render_camelyon, render_cub, render_glas
from wsol.errors import ConfigError, DataError


def near(mask: np.ndarray, px: int = 2) -> np.ndarray:
    return ndimage.binary_dilation(mask.astype(bool), iterations=px)


@pytest.mark.parametrize("render", [render_glas, render_camelyon])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histology_classes_share_every_pixel_outside_the_rois(render, seed):
    rgb0, m0 = render((seed, 0, 7), 0, 64)
    rgb1, m1 = render((seed, 0, 7), 1, 64)
    assert rgb0.shape == (64, 64, 3) and rgb0.dtype == np.uint8
    assert m0.dtype == np.uint8 and set(np.unique(m0)) <= {0, 1} and set(np.unique(m1)) <= {0, 1}
    outside = ~near(m0 | m1)
    assert outside.sum() > 0.2 * 64 * 64 or render is render_camelyon
    assert np.array_equal(rgb0[outside], rgb1[outside])
    # ... and the ROI itself differs between the classes
    roi = (m0 | m1).astype(bool)
    if roi.any():
        assert np.abs(rgb0[roi].astype(int) - rgb1[roi].astype(int)).mean() > 10


def test_glas_has_several_rois_of_varying_size():
    counts, areas = [], []
    for i in range(12):
        _, m = render_glas((0, 0, i), i % 2, 96)
        lab, n = ndimage.label(m)
        counts.append(n)
        areas += np.bincount(lab.ravel())[1:].tolist()
    assert max(counts) >= 3 and min(counts) >= 1
    assert max(areas) > 3 * min(areas)
    fg = np.mean([render_glas((0, 0, i), 0, 96)[1].mean() for i in range(8)])
    assert 0.08 < fg < 0.5


def test_glas_background_statistics_match_between_classes():
    """Per-class mean colour and colour spread of background pixels, over images drawn as
    in the dataset (each image its own seed), agree within a small tolerance."""
    stats = {}
    for label in (0, 1):
        px = []
        for i in range(10):
            rgb, m = render_glas((5, label, i), label, 64)
            px.append(rgb[~near(m)].reshape(-1, 3).astype(float))
        px = np.concatenate(px)
        stats[label] = (px.mean(0), px.std(0))
    assert np.abs(stats[0][0] - stats[1][0]).max() < 6.0
    assert np.abs(stats[0][1] - stats[1][1]).max() < 6.0


def test_renderers_are_deterministic():
    for render in (render_glas, render_camelyon, render_cub):
        a = render((3, 1, 4), 1, 48)
        b = render((3, 1, 4), 1, 48)
        c = render((4, 1, 4), 1, 48)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert not np.array_equal(a[0], c[0])


def test_camelyon_normal_is_empty_and_metastatic_fraction_spans_the_range():
    fr = [render_camelyon((0, 0, i), 1, 48)[1].mean() for i in range(30)]
    assert min(fr) < 0.2 and max(fr) > 0.85
    assert all(f > 0.0 for f in fr)
    for f in (0.05, 0.5):
        got = render_camelyon((1, 0, 0), 1, 64, fraction=f)[1].mean()
        assert abs(got - f) < 0.03
    assert render_camelyon((0, 0, 0), 0, 48)[1].sum() == 0


def test_cub_object_and_background():
    for label in range(len(CUB.classes)):
        rgb, m = render_cub((0, 0, label), label, 64)
        assert 0.01 < m.mean() < 0.6
        other, m2 = render_cub((0, 0, label), (label + 1) % 10, 64)
        outside = ~near(m | m2)
        assert np.array_equal(rgb[outside], other[outside])  # clutter does not depend on the class


@pytest.fixture(scope="module")
def glas_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sg")
    synthesize("synthetic-glas", root, n=8, size=32, seed=3)
    return root


def test_synthesized_set_reads_back_to_the_sample_contract(glas_root: Path):
    info = json.loads((glas_root / "dataset.json").read_text())
    assert info["counts"] == {"train": 8, "valcl": 8, "valpx": 6, "test": 4}
    cfg = DataConfig(name="synthetic-glas", root=str(glas_root), image_size=32)
    for split, count in info["counts"].items():
        ds = build_dataset(cfg, split)
        assert len(ds) == count and ds.class_names == ["benign", "malignant"]
        labels = [r.label for r in ds.records]
        assert sorted(set(labels)) == [0, 1] and abs(labels.count(0) - labels.count(1)) <= 1
        s = ds[0]
        assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
        assert s["mask"].shape == (32, 32) and set(s["mask"].unique().tolist()) <= {0, 1}
    valcl = {r.image_id for r in build_dataset(cfg, "valcl").records}
    valpx = build_dataset(cfg, "valpx").records
    assert {r.image_id for r in valpx} <= valcl  # valpx: 3 pixel-labelled images per class from valcl
    assert sorted(r.label for r in valpx) == [0, 0, 0, 1, 1, 1]
    train = {r.image_id for r in build_dataset(cfg, "train").records}
    test = {r.image_id for r in build_dataset(cfg, "test").records}
    assert not (train & test) and not (train & valcl) and not (valcl & test)


def test_synthesize_is_deterministic_from_seed(glas_root: Path, tmp_path: Path):
    again = synthesize("synthetic-glas", tmp_path / "again", n=8, size=32, seed=3)
    other = synthesize("synthetic-glas", tmp_path / "other", n=8, size=32, seed=4)
    files = sorted(p.relative_to(glas_root) for p in glas_root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((glas_root / f).read_bytes() == (again / f).read_bytes() for f in files)
    img = "images/train/train_00000.png"
    assert (glas_root / img).read_bytes() != (other / img).read_bytes()
    assert not [p for p in again.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_camelyon_and_cub_sets(tmp_path: Path):
    cam = synthesize("synthetic-camelyon", tmp_path / "cam", n=8, size=32, seed=0)
    ds = build_dataset(DataConfig(name="synthetic-camelyon", root=str(cam), image_size=32), "test")
    for i in range(len(ds)):
        s = ds[i]
        assert (s["mask"].sum() == 0) == (s["label"] == 0)
    cub = synthesize("synthetic-cub", tmp_path / "cub", n=10, size=32, seed=0)
    assert get_dataset("synthetic-cub").loc == "box"
    ds = build_dataset(DataConfig(name="synthetic-cub", root=str(cub), image_size=64), "valpx")
    assert len(ds) == 30 and len(ds.class_names) == 10
    s = ds[0]
    ys, xs = torch.nonzero(s["mask"], as_tuple=True)
    # the box is the mask's bounding box (×2 after the resize to 64)
    assert torch.allclose(s["boxes"][0], torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float(),
                          atol=2.0)


def test_ensure_dataset_generates_once(tmp_path: Path, monkeypatch):
    calls = []
    spec = get_dataset("synthetic-glas")
    monkeypatch.setattr(spec, "synthesize", lambda out: calls.append(out) or synthesize("synthetic-glas", out, n=4,
                                                                                          size=16))
    root = tmp_path / "d"
    assert ensure_dataset("synthetic-glas", root) == root
    assert ensure_dataset("synthetic-glas", root) == root
    assert calls == [root]
    with pytest.raises(DataError, match="cannot be synthesised"):
        ensure_dataset("wsoleval-mask", tmp_path / "empty")


def test_errors_and_registry(tmp_path: Path):
    assert {"synthetic-glas", "synthetic-camelyon", "synthetic-cub", "ihc-dab"} <= set(available_datasets())
    with pytest.raises(ConfigError, match=r"unknown dataset .nope.; embedded datasets \(valid\): ihc-dab, synthetic-"):
        synthesize("nope", tmp_path)
    with pytest.raises(ConfigError, match="n=1"):
        synthesize("synthetic-glas", tmp_path, n=1)
    with pytest.raises(DataError, match="wsol data synth synthetic-glas"):
        build_dataset(DataConfig(name="synthetic-glas", root=str(tmp_path / "missing")), "train")


def test_synthesize_dispatches_to_registered_builders(tmp_path: Path):
    root = synthesize("ihc-dab", tmp_path / "ihc", size=64)
    assert json.loads((root / "dataset.json").read_text())["name"] == "ihc-dab"
    with pytest.raises(ConfigError, match="cannot be synthesised"):
        synthesize("wsoleval-box", tmp_path / "x")
