"""Whole-slide inference (wsol.slide): a synthetic pyramidal slide written here whose
tumour region is known (red disks in pink tissue on white glass), and a constructed
"method" (no training) whose CAM is the tile's redness R - max(G, B) scaled by 2 into [0, 1]
and whose tumour posterior is ~1 on tiles holding red pixels, ~0 elsewhere. The stitched
heatmap thresholded at 0.5 must land on the disks.

The test CAM is a fixed scaling, not a per-tile min-max: a tile lying wholly inside a disk
would otherwise be min-max normalised noise (a property of per-image normalised CAMs that
no stitching can undo), and the bound below would measure the noise, not the stitching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
import torch.nn as nn

from wsol.errors import CheckpointError, ConfigError
from wsol.methods.base import Output
from wsol.slide import BAND, blend_window, infer_slide, pyramid_sizes, tile_starts

W, H = 2000, 1700  # not a multiple of any tile: border tiles are moved back onto the slide
DISKS = [(1200, 800, 300), (1900, 1620, 160)]  # (cx, cy, r); the second one crosses the corner
TISSUE = (600, 150)  # tissue = x >= 600 and y >= 150 (touches the right and bottom borders)
CLASSES = ["normal", "tumour"]


def region(w: int = W, h: int = H, ds: int = 1) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    xx, yy = (xx + 0.5) * ds, (yy + 0.5) * ds
    m = np.zeros((h, w), bool)
    for cx, cy, r in DISKS:
        m |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return m


def slide_rgb(w: int = W, h: int = H, ds: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    xx, yy = (xx + 0.5) * ds, (yy + 0.5) * ds
    img = np.empty((h, w, 3), np.float32)
    img[:] = (242, 241, 243)  # glass
    tissue = (xx >= TISSUE[0]) & (yy >= TISSUE[1])
    img[tissue] = (225, 150, 200)  # pink tissue
    img[region(w, h, ds)] = (215, 40, 55)  # red tumour
    img += rng.normal(0, 3, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def write_slide(path, levels=(1, 2, 4), tile=256) -> None:
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, ds in enumerate(levels):
            img = slide_rgb(-(-W // ds), -(-H // ds), ds)
            extra = {"subifds": len(levels) - 1} if k == 0 else {"subfiletype": 1}
            tw.write(img, tile=(tile, tile), photometric="rgb", compression="zlib", metadata=None, **extra)


class RedMethod(nn.Module):
    """localize = redness scaled into [0, 1]; logits: tumour ~ +10 on a tile with red pixels,
    ~ -12 without. ``forward_in_localize=False`` computes the CAM without calling forward
    (exercises the separate-forward fallback)."""

    def __init__(self, forward_in_localize: bool = True):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.forward_in_localize = forward_in_localize
        self.forwards = 0

    @staticmethod
    def redness(x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] - x[:, 1:].max(1).values).clamp_min(0)

    def forward(self, x: torch.Tensor) -> Output:
        self.forwards += 1
        m = self.redness(x).flatten(1).max(1).values
        return Output(torch.stack([torch.zeros_like(m), 40 * (m - 0.4)], 1) + self.bias)

    def localize(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        if self.forward_in_localize:
            self(x)
        return (2 * self.redness(x)).clamp(0, 1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("wsi") / "slide.tif"
    write_slide(path)
    return path


def run(slide, out, **kw):
    kw.setdefault("tile", 256)
    kw.setdefault("batch", 8)
    return infer_slide(RedMethod(kw.pop("forward_in_localize", True)), slide, out, image_size=kw.pop("image_size", 64),
                       class_names=CLASSES, model_id="red", **kw)


@pytest.fixture(scope="module")
def level0(slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "heatmap.tif"
    return run(slide, out), out


# IoU bound: the CAM is computed at 64² per 256² tile and upsampled back, which blurs the disk
# edges by a few level-0 pixels; the disks' areas are ~3.4·10^5 px, their perimeters ~2.4·10^3
# px, so a 2-3 px band of error costs < 3 % IoU (measured: 0.991; 1.0 at 256², no resizing).
# One misplaced or missing 256² tile (~20 % of the region) fails the bound.
IOU_BOUND = 0.95


def test_heatmap_lands_on_the_tumour(level0):
    result, out = level0
    hm = tifffile.imread(out)  # level 0 of the pyramid
    assert hm.shape == (H, W) and hm.dtype == np.uint8
    assert iou(hm >= 128, region()) > IOU_BOUND
    # tiles of tissue without tumour stay ~0 (posterior ~1e-5 there): the tile column at
    # x = 512..768 is pink tissue (redness 0.1 -> CAM 0.2) but holds no red pixel
    assert hm[:, 512:768].max() <= 1
    # pink pixels of tiles holding red: CAM 0.2 · posterior 1 -> ~50, under the threshold
    assert 30 < np.median(hm[(hm > 0) & ~region()]) < 70
    assert result.size == (W, H) and result.level == 0


def test_border_tiles_cover_the_slide(level0):
    result, out = level0
    xs, ys = tile_starts(W, 256, 256), tile_starts(H, 256, 256)
    assert xs[-1] == W - 256 and ys[-1] == H - 256  # last tiles end on the border
    assert result.tiles == len(xs) * len(ys)
    hm = tifffile.imread(out)
    corner = region()[H - 200 :, W - 200 :]  # the disk crossing the bottom-right corner
    assert corner.any() and iou(hm[H - 200 :, W - 200 :] >= 128, corner) > IOU_BOUND


def test_background_tiles_are_skipped(level0):
    result, out = level0
    # tissue starts at x = 600: the tile columns at x = 0 and 256 (ending at 512) are glass
    # only and are skipped; the column at 512 holds (768 - 600) / 256 = 66 % tissue
    ys = tile_starts(H, 256, 256)
    assert result.tissue_tiles == result.tiles - 2 * len(ys)
    hm = tifffile.imread(out)
    assert hm[:, :512].max() == 0


def test_pyramid_is_readable_by_tiffslide(level0):
    tiffslide = pytest.importorskip("tiffslide")
    _, out = level0
    s = tiffslide.TiffSlide(str(out))
    sizes = pyramid_sizes(W, H)
    assert [tuple(d) for d in s.level_dimensions] == sizes
    assert len(sizes) > 2 and sizes[-1][0] <= BAND
    full = tifffile.imread(out)
    lv0 = s.read_region((0, 0), 0, (W, H), as_array=True)
    assert np.array_equal(lv0.reshape(H, W), full)
    lv1 = s.read_region((0, 0), 1, sizes[1], as_array=True).reshape(sizes[1][1], sizes[1][0])
    # level 1 is the rounded 2×2 mean of level 0
    f = full.astype(np.int32)
    expect = (f[0::2, 0::2] + f[1::2, 0::2] + f[0::2, 1::2] + f[1::2, 1::2] + 2) // 4
    assert np.array_equal(lv1, expect)
    s.close()


def test_summary_json_and_thumbnail(level0):
    result, out = level0
    data = json.loads(result.summary.read_text())
    assert result.summary == out.with_suffix(".json") and result.thumbnail.is_file()
    assert data["target"] == "tumour" and data["tiles"] == result.tiles
    score = data["score"]
    assert score["max"] > 0.99  # tiles on the disks
    # mean posterior = fraction of tissue tiles holding red pixels (posteriors are ~0 or ~1)
    assert 0.1 < score["mean"] < 0.6
    assert score["per_class"]["normal"]["mean"] == pytest.approx(1 - score["mean"], abs=1e-6)
    x, y = score["max_tile"]["x"], score["max_tile"]["y"]
    assert region()[y : y + 256, x : x + 256].any()
    assert not out.with_name(out.name + ".work").exists()  # work folder removed


def test_overlap_blending_and_level(slide, tmp_path):
    # overlapping tiles (stride = tile / 2) are blended: still on the region, no seams
    r = run(slide, tmp_path / "ov.tif", stride=128)
    hm = tifffile.imread(tmp_path / "ov.tif")
    assert iou(hm >= 128, region()) > IOU_BOUND
    assert r.tiles == len(tile_starts(W, 256, 128)) * len(tile_starts(H, 256, 128))
    # level 1 (half resolution): the heatmap has the level's size
    r1 = run(slide, tmp_path / "l1.tif", level=1, tile=128)
    hm1 = tifffile.imread(tmp_path / "l1.tif")
    assert hm1.shape == (H // 2, W // 2) and r1.size == (W // 2, H // 2)
    assert iou(hm1 >= 128, region(W // 2, H // 2, 2)) > IOU_BOUND


def test_blend_window_partition_of_unity():
    w = blend_window(8, 8)
    assert w.min() > 0 and w.max() <= 1
    tri = blend_window(1, 8)[0]
    # stride = n/2: the two overlapping halves sum to a constant
    assert torch.allclose(tri[:4] + tri[4:], torch.full((4,), float(tri[:4][0] + tri[4:][0])))


def test_separate_forward_fallback_gives_same_heatmap(slide, tmp_path, level0):
    run(slide, tmp_path / "fb.tif", forward_in_localize=False)
    assert np.array_equal(tifffile.imread(tmp_path / "fb.tif"), tifffile.imread(level0[1]))


def test_dataloader_workers_same_heatmap(slide, tmp_path, level0):
    run(slide, tmp_path / "w.tif", workers=1)
    assert np.array_equal(tifffile.imread(tmp_path / "w.tif"), tifffile.imread(level0[1]))


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes(slide, tmp_path, level0):
    out = tmp_path / "resume.tif"
    total = level0[0].tissue_tiles

    def stop(done, todo, rate):
        if done >= total // 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(slide, out, stride=256, progress=stop)
    work = out.with_name(out.name + ".work")
    bands = sorted(work.glob("band-*.npy"))
    assert bands and not out.exists()
    r = run(slide, out)
    assert 0 < r.resumed_from_band <= len(bands)
    assert 0 < r.computed_tiles < total  # only the rest was computed
    assert np.array_equal(tifffile.imread(out), tifffile.imread(level0[1]))
    assert json.loads(r.summary.read_text())["score"] == json.loads(level0[0].summary.read_text())["score"]
    assert not work.exists()


def test_work_folder_of_another_job_is_refused(slide, tmp_path):
    out = tmp_path / "h.tif"

    def stop(done, todo, rate):
        raise Interrupt

    with pytest.raises(Interrupt):
        run(slide, out, progress=stop)
    with pytest.raises(CheckpointError, match="another job"):
        run(slide, out, tile=128)


def test_bad_arguments(slide, tmp_path):
    with pytest.raises(ConfigError, match="level"):
        run(slide, tmp_path / "a.tif", level=5)
    with pytest.raises(ConfigError, match="stride"):
        run(slide, tmp_path / "a.tif", stride=512)
    with pytest.raises(ConfigError, match="target"):
        run(slide, tmp_path / "a.tif", target="cancer")


def test_blank_slide_gives_an_empty_heatmap(tmp_path):
    path = tmp_path / "blank.tif"
    tifffile.imwrite(path, np.full((300, 500, 3), 240, np.uint8), tile=(256, 256), photometric="rgb", metadata=None)
    r = infer_slide(RedMethod(), path, tmp_path / "b.tif", image_size=32, class_names=CLASSES, tile=128)
    assert r.tissue_tiles == 0 and r.score["max"] is None
    assert tifffile.imread(tmp_path / "b.tif").max() == 0
