"""ihc-dab: real IHC tiles with a stain-derived ROI, CAMELYON-like selection, disjoint splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from wsol.config import DataConfig
from wsol.data import build_dataset, get_dataset
from wsol.data.embedded.ihc import NEG_MAX, P0, dab_mask, select_tiles, source_image, tile_fractions
from wsol.errors import ConfigError, DataError


def test_tile_fractions_by_hand():
    m = np.zeros((4, 6), bool)
    m[0, 0] = True
    m[2:4, 4:6] = True
    assert tile_fractions(m, 2).tolist() == [[0.25, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_select_tiles_balanced_disjoint_and_labelled_by_fraction():
    rng = np.random.default_rng(0)
    frac = rng.choice([0.0, 0.1, 0.5, 1.0], size=(12, 12))
    tiles = select_tiles(frac, seed=1)
    main = [t for s in ("train", "valcl", "test") for t in tiles[s]]
    cells = [(r, c) for r, c, _ in main]
    assert len(cells) == len(set(cells))  # no tile in two splits
    for r, c, label in main:
        assert (frac[r, c] >= P0) if label == 1 else (frac[r, c] <= NEG_MAX)
    labels = [lab for _, _, lab in main]
    assert labels.count(0) == labels.count(1) == min((frac <= NEG_MAX).sum(), (frac >= P0).sum())
    assert set(tiles["valpx"]) <= set(tiles["valcl"])
    assert sorted(lab for *_, lab in tiles["valpx"]) == [0, 0, 0, 1, 1, 1]
    assert tiles == select_tiles(frac, seed=1)
    with pytest.raises(DataError, match="smaller patch"):
        select_tiles(np.ones((3, 3)), seed=0)


def test_dab_mask_is_a_plausible_stain_region():
    roi = dab_mask(source_image())
    assert roi.shape == (512, 512) and roi.dtype == bool
    assert 0.3 < roi.mean() < 0.8  # the brown epithelium covers about half of the image


def test_built_set_reads_back(tmp_path: Path):
    root = get_dataset("ihc-dab").synthesize(tmp_path / "ihc", size=64)
    info = json.loads((root / "dataset.json").read_text())
    assert info["patch"] == 64 and "not a pathologist" in info["roi"]
    cfg = DataConfig(name="ihc-dab", root=str(root), image_size=32)
    ids = {}
    for split in ("train", "valcl", "valpx", "test"):
        ds = build_dataset(cfg, split)
        assert len(ds) == info["counts"][split] and ds.class_names == ["negative", "positive"]
        ids[split] = {r.image_id.split("/")[-1] for r in ds.records}
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].shape == (3, 32, 32)
            frac = s["mask"].float().mean().item()
            assert frac == 0.0 if s["label"] == 0 else frac >= P0 - 0.05
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["valcl"]) and not (ids["valcl"] & ids["test"])
    assert ids["valpx"] <= ids["valcl"]
    s = build_dataset(cfg, "test")[0]
    assert s["image"].dtype == torch.float32


def test_bad_patch_size(tmp_path: Path):
    with pytest.raises(ConfigError, match="patch size"):
        get_dataset("ihc-dab").synthesize(tmp_path, size=8)
