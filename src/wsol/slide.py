"""Whole-slide inference (``wsol slide``): a slide-level heatmap from a trained run.

The slide is cut into ``tile × tile`` tiles at pyramid ``level`` (level-``level`` pixels),
``stride`` apart (default: ``tile``, no overlap); the last tile of a row or column is moved
back to end on the slide's border, so tiles never read outside the slide (a slide smaller
than a tile gives one tile of the slide's size). Background tiles are skipped: Otsu's
threshold on the HSV saturation of a low-resolution copy of the slide
(:mod:`wsol.data.wsi.tissue`, survey appendix B) marks the tissue, and a tile is kept when at
least ``min_tissue`` of it is tissue.

Kept tiles stream through a ``DataLoader`` (slide reads and decoding in worker processes,
overlapping the model), are resized to the run's input size, and go through the method's
``localize`` for the ``target`` class in batches. One forward gives both the CAM and the
tile's posterior ``p(target | tile)``: the logits of the first forward the method runs
inside ``localize`` are captured with a forward hook (a separate forward is run only for a
method whose ``localize`` does not call it). By default the heatmap value of a tile is its
CAM times that posterior (``posterior_weight``): CAMs are min-max normalised per tile (the
CAM contract), so without the weight every tissue tile would have a peak of 1. The same
normalisation means that a tile lying wholly inside a large region shows the CAM's relative
pattern there (its weakest part reads 0, not "tumour"); the posterior still marks the whole
tile, and overlapping tiles (``stride < tile``) soften the pattern. The heatmap is stored as
uint8, 255 · value.

Stitching: every tile's map is upsampled back to the tile's size and blended into the
slide with a separable triangular weight (1 at the tile centre, falling to ~0 at its
edges): where tiles overlap, the heatmap is their weighted average, so seams vanish; where
one tile covers a pixel, it is that tile's value; pixels no kept tile covers are 0.

Memory is bounded by one row of tiles, not by the slide: tiles arrive in row-major order;
the accumulator holds ``tile`` rows of the slide (on the model's device), and the rows no
later tile touches are turned into uint8 and written to the work folder as bands of 256
rows (``OUT.work/band-*.npy``, with ``rows-*.npy`` holding each tile row's posteriors).
Those files make the run resumable: run the same command again after an interruption and it
starts at the first missing band (recomputing only the tile rows that touch it). Finally the
bands are written tile by tile into a pyramidal TIFF (tifffile; 256² tiles, zlib, uint8,
2× sub-resolutions down to one tile, readable by tiffslide/openslide-style viewers), the
work folder is removed, and two files are written next to it:

- ``OUT.png``: a thumbnail of the slide with the heatmap overlaid (jet colours, blended in
  proportion to the heatmap value);
- ``OUT.json``: the slide-level class score — max and mean tile posterior of the target
  class over the tissue tiles (and of every class), the tile with the highest posterior,
  the geometry, tile counts and the throughput (tiles/s).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from wsol.cams import model_logits
from wsol.data.wsi.slide import Slide
from wsol.data.wsi.tissue import cell_fractions, otsu_threshold, saturation
from wsol.errors import CheckpointError, ConfigError, DataError
from wsol.fileio import TMP_SUFFIX, _umask, atomic_write_bytes, write_json

log = logging.getLogger(__name__)

#: heatmap TIFF tile side = height of a band (the unit of resumption)
BAND = 256
#: tissue mask resolution: a tile spans this many mask pixels per side
MASK_CELLS = 8
THUMBNAIL_SIDE = 1024
JOB = "job.json"

#: ``progress(done, total, tiles_per_s)`` after each batch (tiles of this session)
Progress = Callable[[int, int, float], None]


# --- geometry ---------------------------------------------------------------------------
def tile_starts(size: int, tile: int, stride: int) -> np.ndarray:
    """Start offsets of tiles of side ``tile`` covering ``[0, size)``: ``0, stride, ...``,
    the last one moved back to end on the border (``size - tile``); one tile at 0 when the
    slide is smaller than a tile."""
    if size <= tile:
        return np.zeros(1, np.int64)
    starts = np.arange(0, size - tile, stride, dtype=np.int64)
    return np.unique(np.append(starts, size - tile))


def blend_window(h: int, w: int) -> torch.Tensor:
    """Separable triangular blending weight of an h×w tile: ``min(u, n - u) / (n / 2)`` at
    pixel centres ``u = i + 0.5`` — 1 at the centre, 1/n at the edges (never 0). With
    ``stride = tile / 2`` the overlapping weights of a row sum to a constant (a plain
    cross-fade); with no overlap they divide out (the heatmap is the tile's map)."""
    def tri(n: int) -> torch.Tensor:
        u = torch.arange(n, dtype=torch.float32) + 0.5
        return torch.minimum(u, n - u) / (n / 2)

    return tri(h)[:, None] * tri(w)[None, :]


def read_downsampled(slide: Slide, downsample: float, max_pixels: int = 8_000_000) -> tuple[np.ndarray, float]:
    """The slide as one RGB image at about ``downsample`` (relative to level 0): the
    coarsest pyramid level at or below it, reduced further by an integer factor (area
    average) read in row bands of at most ``max_pixels`` — memory stays bounded even for a
    slide without low levels. Returns the image and its actual downsample."""
    import cv2

    ds = slide.level_downsamples
    level = max((i for i, d in enumerate(ds) if d <= max(downsample, 1.0)), key=lambda i: ds[i], default=0)
    f = max(1, int(math.floor(max(downsample, 1.0) / ds[level] + 1e-9)))
    w, h = slide.level_dimensions[level]
    if f == 1 and w * h <= max_pixels * 4:
        return slide.read_level(level), ds[level]
    ow, rows = max(1, math.ceil(w / f)), f * max(1, max_pixels // max(w * f, 1))
    parts = []
    for y in range(0, h, rows):
        bh = min(rows, h - y)
        band = slide.read(0, int(round(y * ds[level])), w, bh, level)
        parts.append(cv2.resize(band, (ow, max(1, math.ceil(bh / f))), interpolation=cv2.INTER_AREA))
    return np.concatenate(parts, 0), ds[level] * w / ow


# --- tiles ------------------------------------------------------------------------------
class TileDataset(Dataset):
    """Tiles ``(x, y)`` (level-``level`` pixels) of a slide as uint8 H×W×3 tensors. The
    slide is opened lazily in each process that reads (DataLoader workers open their own)."""

    def __init__(self, path: Path, backend: str, level: int, downsample: float, xy: np.ndarray, w: int, h: int):
        self.path, self.backend, self.level, self.ds = path, backend, level, downsample
        self.xy, self.w, self.h = xy, w, h
        self._slide: Slide | None = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.xy)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        if self._slide is None or self._pid != os.getpid():
            self._slide, self._pid = Slide(self.path, self.backend), os.getpid()
        x, y = self.xy[i]
        tile = self._slide.read(int(round(x * self.ds)), int(round(y * self.ds)), self.w, self.h, self.level)
        return i, torch.from_numpy(tile)

    def close(self) -> None:
        if self._slide is not None and self._pid == os.getpid():
            self._slide.close()
        self._slide = None


# --- bands ------------------------------------------------------------------------------
def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def band_path(folder: Path, i: int) -> Path:
    return folder / f"band-{i:05d}.npy"


class BandWriter:
    """Collects finished heatmap rows (uint8, ``width`` wide) and writes them as bands of
    ``BAND`` rows to ``folder/band-<i>.npy``; the last band may be shorter."""

    def __init__(self, folder: Path, width: int, first_band: int = 0, band: int = BAND):
        self.folder, self.width, self.band = folder, width, band
        self.index = first_band
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def push(self, rows: np.ndarray) -> None:
        if len(rows):
            self.pending.append(rows)
            self.n_pending += len(rows)
        while self.n_pending >= self.band:
            self._write(self.band)

    def push_zeros(self, n: int) -> None:
        while n > 0:  # in chunks: a long run of background never becomes one big array
            k = min(n, self.band)
            self.push(np.zeros((k, self.width), np.uint8))
            n -= k

    def _write(self, n: int) -> None:
        rows = np.concatenate(self.pending, 0) if len(self.pending) > 1 else self.pending[0]
        _save_npy(band_path(self.folder, self.index), np.ascontiguousarray(rows[:n]))
        self.index += 1
        rest = rows[n:]
        self.pending, self.n_pending = ([rest] if len(rest) else []), len(rest)

    def close(self) -> int:
        if self.n_pending:
            self._write(self.n_pending)
        return self.index


def load_band(folder: Path, i: int, width: int) -> np.ndarray:
    path = band_path(folder, i)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable band ({e}); delete the work folder {folder} and run again") from None
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != width:
        raise CheckpointError(f"{path}: a band of another heatmap ({arr.shape}, {arr.dtype}); delete the work "
                              f"folder {folder} and run again")
    return arr


class Stitcher:
    """Blends tile maps into rows of the slide, row of tiles after row of tiles, on the
    model's device. ``acc[0]`` holds Σ weight·value and ``acc[1]`` Σ weight for slide rows
    ``[top, top + tile_h)``; rows above the current row of tiles are final. Only the
    columns tiles touched (``lo:hi``) are computed: background costs nothing."""

    def __init__(self, width: int, height: int, tile_h: int, tile_w: int, writer: BandWriter, top: int,
                 device: torch.device):
        self.width, self.height, self.th = width, height, tile_h
        self.acc = torch.zeros(2, tile_h, width, device=device)
        self.win = blend_window(tile_h, tile_w).to(device)
        self.writer, self.top = writer, top
        self.lo, self.hi = width, 0

    def start_row(self, y: int) -> None:
        """A row of tiles starting at slide row ``y`` begins: rows above it are final."""
        if y > self.top:
            self._emit(min(y, self.height) - self.top)

    def add(self, x: int, y: int, value: torch.Tensor) -> None:
        h, w = value.shape
        r0 = max(y, self.top)  # after a resume, rows above ``top`` are already written
        if y + h <= r0:
            return
        win = self.win[r0 - y :]
        self.acc[0, r0 - self.top : y + h - self.top, x : x + w].addcmul_(value[r0 - y :], win)
        self.acc[1, r0 - self.top : y + h - self.top, x : x + w] += win
        self.lo, self.hi = min(self.lo, x), max(self.hi, x + w)

    def finish(self) -> None:
        self.start_row(self.height)

    def _emit(self, k: int) -> None:
        n, lo, hi = min(k, self.th), self.lo, self.hi
        rows = np.zeros((n, self.width), np.uint8)
        if lo < hi:
            num, den = self.acc[0, :n, lo:hi], self.acc[1, :n, lo:hi]
            # Σ w·v / Σ w; where no tile contributed both sums are 0 and so is the quotient
            avg = num / den.clamp_min(1e-12)
            rows[:, lo:hi] = avg.mul_(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        self.writer.push(rows)
        if k > n:
            self.writer.push_zeros(k - n)
        if lo < hi:
            if n < self.th:  # overlapping tiles: the rows below carry on
                self.acc[:, : self.th - n, lo:hi] = self.acc[:, n:, lo:hi].clone()
                self.acc[:, self.th - n :, lo:hi] = 0
            else:
                self.acc[:, :, lo:hi] = 0
                self.lo, self.hi = self.width, 0
        self.top += k


# --- the job ----------------------------------------------------------------------------
@dataclass
class SlideResult:
    heatmap: Path
    thumbnail: Path
    summary: Path
    level: int
    size: tuple[int, int]
    tiles: int
    tissue_tiles: int
    computed_tiles: int
    resumed_from_band: int
    tiles_per_s: float
    score: dict[str, Any] = field(default_factory=dict)


@dataclass
class TilePlan:
    """The tiling of a slide at ``level``: tile starts ``xs`` / ``ys`` (level pixels), tile
    size ``tw × th``, which tiles hold tissue (``keep``, rows × cols) and Otsu's threshold."""

    width: int
    height: int
    downsample: float
    xs: np.ndarray
    ys: np.ndarray
    tw: int
    th: int
    keep: np.ndarray
    threshold: float | None

    @property
    def tissue_xy(self) -> np.ndarray:
        """(x, y) of the tissue tiles in row-major order."""
        rc = np.argwhere(self.keep)
        return np.stack([self.xs[rc[:, 1]], self.ys[rc[:, 0]]], 1) if len(rc) else np.zeros((0, 2), np.int64)


def plan_tiles(slide_path: str | Path, *, level: int = 0, tile: int = 512, stride: int | None = None,
               min_tissue: float = 0.05, backend: str = "auto") -> TilePlan:
    """Tile grid and tissue tiles of a slide (see the module docstring)."""
    stride = tile if stride is None else stride
    with Slide(slide_path, backend) as slide:
        if not 0 <= level < slide.level_count:
            raise ConfigError(f"--level {level}: {slide_path} has levels 0..{slide.level_count - 1}")
        width, height = slide.level_dimensions[level]
        xs, ys = tile_starts(width, tile, stride), tile_starts(height, tile, stride)
        tw, th = min(tile, width), min(tile, height)
        keep, threshold = _tissue(slide, level, xs, ys, tw, th, min_tissue)
        return TilePlan(width, height, slide.level_downsamples[level], xs, ys, tw, th, keep, threshold)


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class _LogitsHook:
    """Captures the logits of the first forward a method runs inside ``localize``."""

    def __init__(self, model: torch.nn.Module):
        self.logits: torch.Tensor | None = None
        self.handle = model.register_forward_hook(self)

    def __call__(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        if self.logits is None:
            try:
                self.logits = model_logits(out)
            except ConfigError:
                pass

    def remove(self) -> None:
        self.handle.remove()


def _localize(model: Any, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CAMs of ``target`` and posteriors (B×C) of a batch, with one forward when possible."""
    targets = torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    hook = _LogitsHook(model)
    try:
        cams = model.localize(x, targets)
    finally:
        hook.remove()
    logits = hook.logits
    if logits is None or logits.shape[0] != x.shape[0]:
        logits = model_logits(model(x))
    return cams.float(), logits.float().softmax(1)


def infer_slide(
    model: Any,
    slide_path: str | Path,
    out: str | Path,
    *,
    image_size: int,
    class_names: list[str],
    model_id: dict[str, Any] | str = "",
    level: int = 0,
    tile: int = 512,
    stride: int | None = None,
    batch: int = 16,
    workers: int = 0,
    target: str | int | None = None,
    min_tissue: float = 0.05,
    posterior_weight: bool = True,
    work: str | Path | None = None,
    keep_work: bool = False,
    backend: str = "auto",
    progress: Progress | None = None,
) -> SlideResult:
    """Heatmap of ``slide_path`` by ``model`` (a :class:`wsol.methods.base.Method` in eval
    mode, or anything with ``forward -> logits`` and ``localize(images, targets)``), written
    to ``out`` (a pyramidal TIFF) with ``out.png`` and ``out.json`` (see the module
    docstring). ``model_id`` identifies the model in the work folder's job description, so a
    resume never mixes two models. ``target``: class name or id (default: the last class,
    the positive class of the histology sets)."""
    slide_path, out = Path(slide_path), Path(out)
    stride = tile if stride is None else stride
    if tile < 8 or not 1 <= stride <= tile:
        raise ConfigError(f"tile {tile} / stride {stride}: need tile >= 8 and 1 <= stride <= tile")
    if batch < 1 or workers < 0:
        raise ConfigError(f"batch {batch} / workers {workers}: need batch >= 1 and workers >= 0")
    if not 0 <= min_tissue <= 1:
        raise ConfigError(f"min_tissue {min_tissue}: a fraction in [0, 1]")
    tid = _target_id(target, class_names)
    device = _device_of(model)
    t_start = time.perf_counter()

    plan = plan_tiles(slide_path, level=level, tile=tile, stride=stride, min_tissue=min_tissue, backend=backend)
    width, height, ds, xs, ys, tw, th = plan.width, plan.height, plan.downsample, plan.xs, plan.ys, plan.tw, plan.th
    keep, threshold = plan.keep, plan.threshold

    job = {"slide": _fingerprint(slide_path), "model": model_id, "level": level, "tile": tile, "stride": stride,
           "target": tid, "min_tissue": min_tissue, "posterior_weight": posterior_weight, "image_size": image_size,
           "band": BAND, "size": [width, height]}
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    first_band = _open_work(work, job)
    n_bands = math.ceil(height / BAND)
    n_rows = len(ys)
    # resume: the first missing band, or earlier if a finished row of tiles lost its posteriors
    band0 = first_band
    for r in range(n_rows):
        if ys[r] + th <= band0 * BAND and not (work / f"rows-{r:05d}.npy").is_file():
            band0 = int(ys[r]) // BAND
            break
    top = band0 * BAND
    rows_todo = [r for r in range(n_rows) if ys[r] + th > top] if band0 < n_bands else []
    kept_idx = np.argwhere(keep)  # (row, col) pairs, row-major
    todo = kept_idx[np.isin(kept_idx[:, 0], rows_todo)]
    xy = np.stack([xs[todo[:, 1]], ys[todo[:, 0]]], 1) if len(todo) else np.zeros((0, 2), np.int64)
    if band0 > 0:
        log.info("%s: resuming at band %d/%d (%d of %d tissue tiles to compute)", out, band0, n_bands, len(todo),
                 int(keep.sum()))

    done, rate = 0, 0.0
    if band0 < n_bands:
        writer = BandWriter(work, width, first_band=band0)
        stitch = Stitcher(width, height, th, tw, writer, top, device)
        done, rate = _compute(model, TileDataset(slide_path, backend, level, ds, xy, tw, th), todo, xy, ys,
                              rows_todo, stitch, work, len(class_names), image_size=image_size, target=tid,
                              posterior_weight=posterior_weight, batch=batch, workers=workers, progress=progress)
        writer.close()

    tile_probs = _load_row_probs(work, n_rows, len(class_names))
    score = _slide_score(tile_probs, class_names, tid)
    heatmap_levels = write_pyramid(work, out, width, height)
    thumb = out.with_suffix(".png")
    with Slide(slide_path, backend) as slide:
        _write_thumbnail(slide, out, thumb)
    elapsed = time.perf_counter() - t_start
    result = SlideResult(out, thumb, out.with_suffix(".json"), level, (width, height), int(keep.size),
                         int(keep.sum()), done, band0, rate, score)
    write_json(result.summary, {
        "slide": str(slide_path), "heatmap": str(out), "thumbnail": str(thumb), "model": model_id,
        "class_names": list(class_names), "target": class_names[tid], "level": level, "downsample": ds,
        "size": [width, height], "tile": tile, "stride": stride, "min_tissue": min_tissue,
        "otsu_threshold": threshold, "posterior_weight": posterior_weight, "heatmap_levels": heatmap_levels,
        "tiles": result.tiles, "tissue_tiles": result.tissue_tiles, "computed_tiles": done,
        "resumed_from_band": band0, "tiles_per_s": rate, "seconds": elapsed, "score": score,
    })
    if not keep_work:
        _remove_work(work)
    return result


class _TileRows:
    """Rows of tiles in order. Closing a row saves its tiles' ``(x, y, posteriors...)`` to
    ``rows-<r>.npy`` (before the stitcher finishes rows above the next row of tiles, so a
    band on disk always has the posteriors of the tiles above it) and starts the next."""

    def __init__(self, work: Path, rows: list[int], ys: np.ndarray, todo: np.ndarray, xy: np.ndarray,
                 probs: torch.Tensor, stitch: Stitcher):
        self.work, self.ys, self.xy, self.probs, self.stitch = work, ys, xy, probs, stitch
        self.order = iter(rows)
        # todo is row-major: the tiles of row r are todo[first[r]:first[r + 1]]
        self.first = np.searchsorted(todo[:, 0], np.arange(len(ys) + 1)) if len(todo) else np.zeros(len(ys) + 1, int)
        self.current = next(self.order, None)
        if self.current is not None:
            stitch.start_row(int(ys[self.current]))

    def close_until(self, r: int | None) -> None:
        while self.current is not None and (r is None or self.current < r):
            a, b = self.first[self.current], self.first[self.current + 1]
            _save_npy(self.work / f"rows-{self.current:05d}.npy",
                      np.concatenate([self.xy[a:b].astype(np.float64), self.probs[a:b].cpu().double().numpy()], 1))
            self.current = next(self.order, None)
            if self.current is not None:
                self.stitch.start_row(int(self.ys[self.current]))


def _compute(model: Any, dataset: TileDataset, todo: np.ndarray, xy: np.ndarray, ys: np.ndarray,
             rows: list[int], stitch: Stitcher, work: Path, n_classes: int, *, image_size: int, target: int,
             posterior_weight: bool, batch: int, workers: int, progress: Progress | None) -> tuple[int, float]:
    """Stream the tiles through the model into the stitcher; returns (tiles, tiles/s). Nothing
    waits for the device but the end of a row of tiles (its posteriors and finished rows)."""
    device = _device_of(model)
    th, tw = dataset.h, dataset.w
    probs_all = torch.zeros(len(todo), n_classes, device=device)
    book = _TileRows(work, rows, ys, todo, xy, probs_all, stitch)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, shuffle=False,
                        pin_memory=device.type == "cuda")
    was_training = bool(getattr(model, "training", False))
    model.eval()
    done, rate, t0 = 0, 0.0, time.perf_counter()
    try:
        for idx, tiles in loader:  # in order: idx is a contiguous range
            x = tiles.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[-2:] != (image_size, image_size):  # as wsol.data.transforms.Resize
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                                  antialias=True).clamp_(0.0, 1.0)
            with torch.no_grad():
                cams, probs = _localize(model, x, target)
                if cams.shape[-2:] != (th, tw):
                    cams = F.interpolate(cams[:, None], size=(th, tw), mode="bilinear", align_corners=False)[:, 0]
                values = cams * probs[:, target, None, None] if posterior_weight else cams
                i0 = int(idx[0])
                probs_all[i0 : i0 + len(idx)] = probs
                for j, i in enumerate(range(i0, i0 + len(idx))):
                    book.close_until(int(todo[i, 0]))
                    stitch.add(int(xy[i, 0]), int(xy[i, 1]), values[j])
            done += len(idx)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            if progress is not None:
                progress(done, len(todo), rate)
        book.close_until(None)
        stitch.finish()
    finally:
        dataset.close()
        if was_training:
            model.train()
    return done, rate


def _device_of(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if params is not None else None
    return first.device if first is not None else torch.device("cpu")


def _target_id(target: str | int | None, class_names: list[str]) -> int:
    if target is None:
        return len(class_names) - 1
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        t = int(target)
        if 0 <= t < len(class_names):
            return t
    elif target in class_names:
        return class_names.index(target)
    raise ConfigError(f"--target {target!r}: unknown class; valid: {', '.join(class_names)} (or an id)")


def _tissue(slide: Slide, level: int, xs: np.ndarray, ys: np.ndarray, tw: int, th: int,
            min_tissue: float) -> tuple[np.ndarray, float | None]:
    """Which tiles (rows × cols) hold at least ``min_tissue`` tissue, from an Otsu mask of
    the slide at about ``MASK_CELLS`` mask pixels per tile side; and the threshold."""
    if min_tissue <= 0:
        return np.ones((len(ys), len(xs)), bool), None
    ds = slide.level_downsamples[level]
    rgb, mask_ds = read_downsampled(slide, min(tw, th) * ds / MASK_CELLS)
    sat = saturation(rgb)
    threshold = otsu_threshold(sat)
    if threshold is None:
        log.warning("%s: no tissue found (flat saturation); the heatmap is empty", slide.path)
        return np.zeros((len(ys), len(xs)), bool), None
    mask = sat > threshold
    # cell_fractions takes square cells: measure each tile's bounding square, clipped to the slide
    frac = cell_fractions(mask, mask_ds, xs * ds, ys * ds, int(round(max(tw, th) * ds)))
    return frac >= min_tissue, threshold


def _open_work(work: Path, job: dict[str, Any]) -> int:
    """Create the work folder, or resume it: returns the first band still to compute. A
    folder of another job (other slide, model or geometry) is refused."""
    job = json.loads(json.dumps(job))  # as it reads back
    path = work / JOB
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = None
        if old != job:
            raise CheckpointError(f"{work}: work folder of another job (other slide, run, checkpoint or tiling); "
                                  "delete it or pass --work DIR to use another")
        i = 0
        while band_path(work, i).is_file():
            i += 1
        return i
    if work.exists() and any(work.iterdir()):
        raise CheckpointError(f"{work}: exists and is not a wsol slide work folder; pass --work DIR")
    work.mkdir(parents=True, exist_ok=True)
    write_json(path, job)
    return 0


def _remove_work(work: Path) -> None:
    """Remove the files this module wrote in ``work`` (and the folder when then empty)."""
    for pattern in ("band-*.npy", "rows-*.npy", JOB):
        for p in work.glob(pattern):
            p.unlink()
    for sub in sorted(work.glob("L*")):
        if sub.is_dir():
            for p in sub.glob("band-*.npy"):
                p.unlink()
            _rmdir_if_empty(sub)
    _rmdir_if_empty(work)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _load_row_probs(work: Path, n_rows: int, n_classes: int) -> np.ndarray:
    parts = []
    for r in range(n_rows):
        p = work / f"rows-{r:05d}.npy"
        if not p.is_file():
            raise CheckpointError(f"{p}: missing; delete the work folder {work} and run again")
        parts.append(np.load(p, allow_pickle=False).reshape(-1, 2 + n_classes))
    return np.concatenate(parts, 0) if parts else np.zeros((0, 2 + n_classes))


def _slide_score(tile_probs: np.ndarray, class_names: list[str], tid: int) -> dict[str, Any]:
    """Slide-level class score: max and mean tile posterior over the tissue tiles."""
    if not len(tile_probs):
        return {"target": class_names[tid], "max": None, "mean": None, "max_tile": None,
                "per_class": {c: {"max": None, "mean": None} for c in class_names}}
    p = tile_probs[:, 2:]
    best = int(np.argmax(p[:, tid]))
    return {
        "target": class_names[tid], "max": float(p[:, tid].max()), "mean": float(p[:, tid].mean()),
        "max_tile": {"x": int(tile_probs[best, 0]), "y": int(tile_probs[best, 1])},
        "per_class": {c: {"max": float(p[:, k].max()), "mean": float(p[:, k].mean())}
                      for k, c in enumerate(class_names)},
    }


# --- the pyramidal TIFF -----------------------------------------------------------------
def _half(block: np.ndarray) -> np.ndarray:
    """2×2 mean (rounded) of a uint8 block; an odd last row/column is repeated."""
    if block.shape[0] % 2:
        block = np.concatenate([block, block[-1:]], 0)
    if block.shape[1] % 2:
        block = np.concatenate([block, block[:, -1:]], 1)
    b = block.astype(np.uint16)
    return ((b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2] + 2) // 4).astype(np.uint8)


def pyramid_sizes(width: int, height: int, tile: int = BAND) -> list[tuple[int, int]]:
    sizes = [(width, height)]
    while max(sizes[-1]) > tile:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def write_pyramid(work: Path, out: Path, width: int, height: int) -> list[list[int]]:
    """Write the bands in ``work`` as a tiled pyramidal TIFF at ``out`` (atomically), one
    band in memory at a time: each level's tiles are streamed to tifffile while the next
    level's bands (2×2 means) are written to ``work/L<k>/``."""
    try:
        import tifffile
    except ImportError:
        raise DataError("writing the heatmap TIFF needs tifffile: pip install 'wsol[wsi]'") from None
    sizes = pyramid_sizes(width, height)
    folders = [work] + [work / f"L{k}" for k in range(1, len(sizes))]

    def tiles(k: int) -> Iterator[np.ndarray]:
        w, h = sizes[k]
        nxt = BandWriter(folders[k + 1], sizes[k + 1][0]) if k + 1 < len(sizes) else None
        if nxt is not None:
            folders[k + 1].mkdir(exist_ok=True)
        n = math.ceil(h / BAND)
        for i in range(n):
            band = load_band(folders[k], i, w)
            # the next level's band first: tifffile stops pulling after the last tile
            if nxt is not None:
                nxt.push(_half(band))
                if i == n - 1:
                    nxt.close()
            for x in range(0, w, BAND):
                yield band[:, x : x + BAND]

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for k, (w, h) in enumerate(sizes):  # level 0, then its sub-resolutions (SubIFDs)
                tw.write(tiles(k), shape=(h, w), dtype=np.uint8, tile=(BAND, BAND), compression="zlib",
                         photometric="minisblack", metadata=None, subifds=len(sizes) - 1 if k == 0 else None,
                         subfiletype=1 if k else 0)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return [list(s) for s in sizes]


def _write_thumbnail(slide: Slide, heatmap: Path, png: Path) -> None:
    """The slide at ``THUMBNAIL_SIDE`` px (longer side) with the heatmap overlaid: jet colours
    blended in proportion to the heatmap value (0 shows the slide as it is)."""
    import cv2
    import tifffile

    from wsol.report.overlay import heatmap as jet
    from wsol.report.overlay import save_png

    w0, h0 = slide.dimensions
    img, _ = read_downsampled(slide, max(w0, h0) / THUMBNAIL_SIDE)
    scale = THUMBNAIL_SIDE / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    h, w = img.shape[:2]
    with tifffile.TiffFile(heatmap) as tf:
        levels = tf.series[0].levels
        # the smallest level still at least the thumbnail's width
        big = [lv for lv in levels if lv.shape[1] >= w] or levels[:1]
        hm = min(big, key=lambda lv: lv.shape[1]).asarray()
    hm = cv2.resize(hm, (w, h), interpolation=cv2.INTER_AREA if hm.shape[1] > w else cv2.INTER_LINEAR)
    v = hm.astype(np.float32) / 255.0
    alpha = 0.7 * v[..., None]
    save_png(png, (alpha * jet(v) + (1 - alpha) * img).round().clip(0, 255).astype(np.uint8))


def slide_heatmap(
    run_dir: str | Path,
    slide_path: str | Path,
    out: str | Path,
    *,
    checkpoint: str = "best_loc",
    device: str | None = None,
    **options: Any,
) -> SlideResult:
    """:func:`infer_slide` with the ``checkpoint`` of a trained run folder (the run's input
    size and class names; no access to its dataset)."""
    from wsol.runs import checkpoint_path, load_run, resolve_device

    run = load_run(run_dir, checkpoint, device=resolve_device(device) if device else None)
    ck = checkpoint_path(run_dir, checkpoint)
    model_id = {"run": str(Path(run_dir).resolve()), "checkpoint": checkpoint, **{
        k: v for k, v in _fingerprint(ck).items() if k != "path"}}
    return infer_slide(run.method, slide_path, out, image_size=run.info.image_size, class_names=run.class_names,
                       model_id=model_id, **options)


__all__ = ["SlideResult", "TileDataset", "TilePlan", "blend_window", "infer_slide", "plan_tiles", "pyramid_sizes",
           "slide_heatmap", "tile_starts", "write_pyramid"]
