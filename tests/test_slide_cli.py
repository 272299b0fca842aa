"""`wsol slide` end to end with a trained run: a CAM run trained for one epoch on a tiny
synthetic-glas set (32² inputs), applied to a small synthetic slide through the command
line (`wsol slide`). The run is too small to localise anything: this checks the plumbing
(run loading, outputs, summary), test_slide.py checks where the heatmap lands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from wsol.cli import main
from wsol.config import load_config
from wsol.data import synthesize
from wsol.engine.trainer import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("slide-cli")
    synthesize("synthetic-glas", d / "data", n=8, size=32, seed=2)
    cfg = load_config(None, ["data.name=synthetic-glas", f"data.root={d / 'data'}", "data.image_size=32",
                             f"run_dir={d / 'run'}", "optim.epochs=1", "optim.batch_size=8", "device=cpu"])
    Trainer(cfg).fit()
    return d / "run"


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "s.tif"
    rng = np.random.default_rng(0)
    img = np.full((700, 900, 3), 240, np.uint8)
    img[100:650, 150:850] = (200, 120, 180)
    img = (img + rng.integers(0, 6, img.shape)).clip(0, 255).astype(np.uint8)
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", subifds=1, metadata=None)
        tw.write(img[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1, metadata=None)
    return path


def test_slide_command_with_a_trained_run(trained, small_slide, tmp_path):
    out = tmp_path / "hm.tif"
    code = main(["slide", str(trained), str(small_slide), "--out", str(out), "--tile", "128", "--stride", "96",
                 "--batch", "8", "--workers", "0", "--checkpoint", "best_loc"])
    assert code == 0
    hm = tifffile.imread(out)
    assert hm.shape == (700, 900) and hm.dtype == np.uint8
    # tissue starts at x = 150: the tiles at x = 0 (0..128) are glass only and skipped, the
    # next ones (x = 96..224) hold 58 % tissue
    assert hm[:, :96].max() == 0 and hm[:, 150:].max() > 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["target"] == "malignant" and summary["model"]["checkpoint"] == "best_loc"
    assert 0 <= summary["score"]["mean"] <= summary["score"]["max"] <= 1
    assert summary["tissue_tiles"] < summary["tiles"]
    assert out.with_suffix(".png").is_file()


def test_slide_command_reports_errors(trained, tmp_path, capsys):
    assert main(["slide", str(trained), str(tmp_path / "missing.tif"), "--out", str(tmp_path / "x.tif")]) == 2
    assert "slide file not found" in capsys.readouterr().err
    assert main(["slide", str(tmp_path), str(tmp_path / "missing.tif")]) == 2
    assert "not a run folder" in capsys.readouterr().err
