"""Pixel-level localisation metrics from pooled threshold histograms (see the package
docstring for every convention): PxAP, the threshold-marginalised confusion matrix
TP*/FN*/FP*/TN*, pooled Dice at τ and at τ* (argmax mean IoU), per-image F1+/F1- at 0.5,
region sizes and the CAM value histograms.

The threshold grid is wsolevaluation's (``evaluation.py``, ``MaskEvaluator``): τ_l =
``np.arange(0, 1, cam_curve_interval)[l]`` (float64) for l < T, and τ_T = 1.0; a CAM value s
(float32) is positive at τ_l iff s ≥ τ_l, compared exactly (``np.histogram`` compares the
float32 values with the float64 bin edges). Every pixel falls in the bin
l(s) = max{l : τ_l ≤ s}.

Binning is exact and device-independent (the same integer operations and comparisons on
CPU and CUDA; no division, whose CUDA kernel multiplies by the reciprocal): a guess
g = ⌊s·m⌋ with m slightly below 1/interval is never above l(s) and at most one below it
(checked for every threshold when the grid is built), and l(s) = g + [s ≥ c_{g+1}] where
c_l is the smallest float32 ≥ τ_l (so that s ≥ c_l ⟺ s ≥ τ_l for every float32 s).

Everything else is derived from one ``torch.bincount`` per chunk of images (≤ 2^18 pixels,
so that the temporaries stay in cache) of an int32 key ``bin + nb·(class + 3·image)``,
class ∈ {background, ROI, ignore}: the per-image histograms over the nb = T + 1 bins.
Summing them over images gives the pooled histograms (the only state whose size matters);
the per-image ones give F1 and region sizes. When ``f1_tau`` (as a float32) is not one of
the grid's thresholds, the key also holds [s ≥ f1_tau] (6 parts per image instead of 3).
"""

from __future__ import annotations

import contextlib
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from wsol.cams import check_cams
from wsol.errors import MetricError

#: default step of the threshold sweeps (wsolevaluation's training-time cam_curve_interval)
DEFAULT_INTERVAL = 0.001
#: number of threshold steps of the default grid: τ_l = l·0.001, l = 0..1000
N_THRESHOLDS = 1000
IGNORE_INDEX = 255
CHUNK_PIXELS = 1 << 18  # pixels per bincount on CPU: the int32/float32 temporaries (1 MiB) stay in L2
CHUNK_IMAGES = 256  # images per bincount at most
F1_TAU = 0.5


class ThresholdGrid:
    """The thresholds of a sweep with step ``interval`` (wsolevaluation's
    ``cam_curve_interval``): ``taus`` = ``np.arange(0, 1, interval)`` then 1.0 (float64,
    T + 1 values), and the tables that bin float32 CAM values exactly against them (see the
    module docstring). Use :func:`threshold_grid_for` (cached) rather than this constructor."""

    def __init__(self, interval: float = DEFAULT_INTERVAL) -> None:
        interval = float(interval)
        if not (math.isfinite(interval) and 1e-5 <= interval <= 0.5):
            raise MetricError(
                f"cam_curve_interval={interval!r}: expected a threshold step in [1e-05, 0.5] "
                "(wsolevaluation uses 0.001 at training time and 0.01 in its evaluation script)"
            )
        self.interval = interval
        # wsolevaluation: cam_threshold_list = list(np.arange(0, 1, cam_curve_interval)); the
        # pixel histogram's last edges are 1.0 (and 2.0, 3.0, which CAMs in [0, 1] never reach)
        self.taus = np.append(np.arange(0, 1, interval, dtype=np.float64), 1.0)
        self.n = len(self.taus) - 1  # index of τ = 1.0
        c = self.taus.astype(np.float32)
        # c_l: the smallest float32 ≥ τ_l, so that float32 s ≥ c_l ⟺ s ≥ τ_l (exact)
        c = np.where(c.astype(np.float64) < self.taus, np.nextafter(c, np.float32(np.inf)), c).astype(np.float32)
        self.ceil32 = c
        # guess multiplier m < 1/interval: ⌊s·m⌋ (float32 product) is l(s) or l(s) − 1
        self.mult = float(np.float32((1.0 / interval) * (1.0 - 0.25 / self.n)))
        self._check_guess()
        self._next: dict[torch.device, torch.Tensor] = {}

    def _guess(self, s: np.ndarray) -> np.ndarray:
        return np.floor(s.astype(np.float32) * np.float32(self.mult)).astype(np.int64)

    def _check_guess(self) -> None:
        """g(s) ∈ {l(s) − 1, l(s)} for every float32 s in [0, 1]: g is non-decreasing and l(s)
        is constant on [c_l, c_{l+1}), so checking both ends of every bin is exhaustive."""
        lvl = np.arange(self.n + 1)
        first = self.ceil32  # first float32 of bin l
        last = np.nextafter(self.ceil32[1:], np.float32(0))  # last float32 of bin l < T (bin T is {1.0})
        for s, want in ((first, lvl), (last, lvl[:-1])):
            g = self._guess(s)
            if not ((g <= want) & (g >= want - 1)).all():
                raise MetricError(f"cam_curve_interval={self.interval}: cannot bin CAM values exactly on this grid")

    def next_ceil(self, device: torch.device) -> torch.Tensor:
        """c_{g+1} for g = 0..T (float32, on ``device``; +inf after the last threshold)."""
        t = self._next.get(device)
        if t is None:
            t = torch.from_numpy(np.append(self.ceil32[1:], np.float32(np.inf))).to(device)
            self._next[device] = t
        return t

    def bins(self, s: torch.Tensor) -> torch.Tensor:
        """Bin l(s) = max{l : τ_l ≤ s} (int32) of float32 values ``s`` in [0, 1]: the guess
        ⌊s·m⌋ plus [s ≥ c_{guess+1}] (one table look-up, the same operations on every device)."""
        g = torch.mul(s, self.mult).to(torch.int32)  # truncation = floor for s ≥ 0
        nxt = self.next_ceil(s.device).index_select(0, g.view(-1)).view(s.shape)
        return g.add_(torch.ge(s, nxt).to(torch.int32))  # (an int32 add: vectorised, unlike int32 + bool)

    def index(self, tau: float) -> int:
        """Grid index of a threshold: τ is snapped to the nearest τ_l (the first on a tie)."""
        t = float(tau)
        if math.isnan(t) or not 0.0 <= t <= 1.0:
            raise MetricError(f"threshold tau={tau!r} is outside [0, 1]; CAM thresholds live in [0, 1]")
        return int(np.argmin(np.abs(self.taus - t)))

    def value(self, index: int) -> float:
        """τ_index as a readable float (rounded to 12 decimals; the bins use the exact value)."""
        return round(float(self.taus[index]), 12)

    def values(self) -> list[float]:
        return [round(float(v), 12) for v in self.taus]


@functools.lru_cache(maxsize=16)
def threshold_grid_for(interval: float = DEFAULT_INTERVAL) -> ThresholdGrid:
    """The (cached) :class:`ThresholdGrid` of a ``cam_curve_interval``."""
    return ThresholdGrid(interval)


def threshold_grid(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float64, interval: float = DEFAULT_INTERVAL
) -> torch.Tensor:
    """τ_l for l = 0..T (``np.arange(0, 1, interval)`` then 1.0), as float64 unless ``dtype``."""
    return torch.from_numpy(threshold_grid_for(interval).taus.copy()).to(device=device, dtype=dtype)


def threshold_bins(cams: torch.Tensor, interval: float = DEFAULT_INTERVAL) -> torch.Tensor:
    """Bin index (int64) of every CAM value: the largest l with τ_l ≤ s (s compared as its
    exact float32 value with the float64 τ_l)."""
    return threshold_grid_for(interval).bins(torch.as_tensor(cams).float().contiguous()).long()


def tau_to_index(tau: float, interval: float = DEFAULT_INTERVAL) -> int:
    """Grid index of a threshold: τ is snapped to the nearest τ_l."""
    return threshold_grid_for(interval).index(tau)


def validate_cams(cams: torch.Tensor, name: str = "cams") -> torch.Tensor:
    """CAM contract check in one pass (``aminmax``; NaN propagates through it): float32
    B×H×W in [0, 1]. The slower :func:`wsol.cams.check_cams` only runs to word the error."""
    cams = torch.as_tensor(cams)
    if cams.dim() != 3:
        raise MetricError(f"{name}: expected a B×H×W tensor, got shape {tuple(cams.shape)}")
    cams = cams.float()
    if cams.numel():
        lo, hi = torch.aminmax(cams)
        if not (0.0 <= float(lo) and float(hi) <= 1.0):  # False for NaN too
            check_cams(cams, name)  # raises with the count of NaN / the range found
            raise MetricError(f"{name}: values in [{float(lo)}, {float(hi)}], expected [0, 1] (CAM contract)")
    return cams


def _mask_classes(masks: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """uint8 class per pixel: 0 background, 1 ROI, 2 ignore; other mask values are an error
    (a bool mask is read as ROI / background)."""
    if masks.dtype == torch.bool:
        return masks.to(torch.uint8)
    if masks.dtype.is_floating_point:
        raise MetricError(
            f"masks: expected an integer (uint8) tensor with 0 = background, 1 = ROI, {ignore_index} = ignore; "
            f"got dtype {masks.dtype}"
        )
    bad = (masks > 1) & (masks != ignore_index)
    if bool(bad.any()):
        vals = torch.unique(masks[bad])[:5].tolist()
        raise MetricError(
            f"masks: values {vals} found; expected only 0 (background), 1 (ROI) and {ignore_index} (ignore). "
            "Binarise the mask (e.g. mask > 0) before evaluation"
        )
    if masks.dtype != torch.uint8 or ignore_index != 255:
        masks = torch.where(masks == ignore_index, 2, masks).to(torch.uint8)
    return masks.clamp(max=2)  # 255 -> 2




@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block (``None``: unchanged)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mask_classes_fast(masks: torch.Tensor) -> torch.Tensor | None:
    """uint8 masks with ignore value 255 in two uint8 passes: None when a value other than
    0, 1, 255 occurs (the caller then words the error). Values 0, 1, 255 map to 254, 255,
    253 under ``+ 254`` (mod 256) and every other value below 253."""
    if int(torch.add(masks, 254).min()) < 253:
        return None
    return masks.clamp(max=2)


class MaskStream(ABC):
    """The streaming front end of the pixel accumulators (:class:`PixelAccumulator`,
    :class:`wsol.metrics.pr.PRAccumulator`): ``update`` takes a batch (tensors, or per-image
    lists with ``None`` for images without a mask), cuts it into cache-sized chunks, checks
    the CAM contract and the shapes, and hands each chunk's CAMs and mask classes (0
    background, 1 ROI, 2 ignored) to the subclass's ``_accumulate``."""

    threads: int | None
    ignore_index: int

    def update(self, cams: torch.Tensor | Sequence[torch.Tensor],
               masks: torch.Tensor | Sequence[torch.Tensor | None]) -> None:
        """Add a batch: ``cams`` B×H×W in [0, 1] (CAM contract); ``masks`` B×H×W integer
        (0/1/ignore) or a length-B list whose entries are H_i×W_i masks or ``None`` (that
        image has no pixel label and is skipped; ``cams`` may then also be a list)."""
        first = cams if isinstance(cams, torch.Tensor) else next(iter(cams), None)
        on_cpu = not isinstance(first, torch.Tensor) or first.device.type == "cpu"
        with _torch_threads(self.threads if on_cpu else None):
            self._update(cams, masks)

    def _update(self, cams: torch.Tensor | Sequence[torch.Tensor],
                masks: torch.Tensor | Sequence[torch.Tensor | None]) -> None:
        if isinstance(masks, torch.Tensor):
            if not isinstance(cams, torch.Tensor):
                cams = torch.stack([torch.as_tensor(c) for c in cams])
            self._update_batch(cams, masks)
            return
        if len(cams) != len(masks):
            raise MetricError(f"update: {len(cams)} CAMs but {len(masks)} masks; one mask (or None) per CAM")
        pairs = [(torch.as_tensor(c), torch.as_tensor(m)) for c, m in zip(cams, masks) if m is not None]
        if len({(tuple(c.shape), tuple(m.shape)) for c, m in pairs}) == 1:  # one shape: one batch
            self._update_batch(torch.stack([c for c, _ in pairs]), torch.stack([m for _, m in pairs]))
            return
        for cam, mask in pairs:
            self._update_batch(cam[None], mask[None])

    def _update_batch(self, cams: torch.Tensor, masks: torch.Tensor) -> None:
        # chunks keep the temporaries small (in cache on CPU; fewer launches on an accelerator)
        # and the bincount's key range bounded (≤ CHUNK_IMAGES images)
        hw = max(int(cams.shape[-1]) * int(cams.shape[-2]), 1) if cams.dim() >= 2 else 1
        limit = CHUNK_PIXELS if cams.device.type == "cpu" else 16 * CHUNK_PIXELS
        step = max(1, min(CHUNK_IMAGES, limit // hw))
        for i in range(0, max(len(cams), 1), step):
            self._update_chunk(cams[i : i + step], masks[i : i + step])

    def _update_chunk(self, cams: torch.Tensor, masks: torch.Tensor) -> None:
        cams = validate_cams(cams).contiguous()
        masks = torch.as_tensor(masks)
        if masks.dim() == 2:
            masks = masks[None]
        if tuple(cams.shape) != tuple(masks.shape):
            raise MetricError(
                f"update: CAMs of shape {tuple(cams.shape)} vs masks of shape {tuple(masks.shape)}; they must "
                "match (resize the CAM to the mask with wsol.cams.to_cam, or use eval_size='original')"
            )
        masks = masks.to(cams.device)
        cls = None
        if masks.dtype == torch.uint8 and self.ignore_index == IGNORE_INDEX:
            cls = _mask_classes_fast(masks)
        if cls is None:
            cls = _mask_classes(masks, self.ignore_index)  # words the error, other dtypes / ignore values
        if cams.shape[0]:
            self._accumulate(cams, cls)

    @abstractmethod
    def _accumulate(self, cams: torch.Tensor, cls: torch.Tensor) -> None:
        """Add one chunk: ``cams`` B×H×W (contract-checked), ``cls`` B×H×W int (0, 1, 2)."""


class PixelAccumulator(MaskStream):
    """Streaming pixel metrics over a split (PxAP, confusion*, Dice, F1±, sizes, histograms).

    ``update(cams, masks)`` per batch; ``compute(tau=None)`` at the end; ``curves()`` for the
    per-τ curves. State: two (T+1)-bin int64 histograms plus a few scalars — memory does not
    grow with the number of images (except the optional per-image region sizes, see
    ``region_tau``). Accumulators over disjoint parts of a split add up exactly:
    ``a.merge(b)`` / ``a + b`` / ``state_dict()`` tensors summed across DDP ranks.

    Args:
        ignore_index: mask value of pixels left out of every metric (default 255).
        region_tau: threshold of the per-image region sizes (predicted foreground fraction),
            snapped to the grid. A float keeps two floats per image. ``None`` means τ* of
            this split, resolved at ``compute``: then the per-image cumulative counts (T+1
            int32 per image) are kept, which is meant for small selection splits (valpx).
            ``track_regions=False`` keeps no per-image state at all.
        f1_tau: threshold of the per-image F1+/F1- (default 0.5, the MAXMIN /
            min-max-entropy definition; a method whose own binary mask is its graded map
            thresholded at another value, e.g. MAXMIN's M+ ≥ σ, evaluates at that value). A
            pixel is foreground iff ``cam >= f1_tau`` as torch compares it (float32), on or
            off the sweep's grid.
        cam_curve_interval: step of the threshold sweep (wsolevaluation's
            ``cam_curve_interval``; default 0.001, its training-time value; its evaluation
            script's default is 0.01). Recorded in every result dict.
        threads: torch intra-op threads while histogramming CPU tensors (default 1, restored
            after each update: the work is a few memory-bound passes over cache-sized
            chunks, which OpenMP barriers slow down by 10-100× on a loaded machine; ``None``
            keeps torch's setting).
    """

    def __init__(
        self, ignore_index: int = IGNORE_INDEX, region_tau: float | None = None, track_regions: bool = True,
        f1_tau: float = F1_TAU, cam_curve_interval: float = DEFAULT_INTERVAL, threads: int | None = 1,
    ) -> None:
        self.threads = threads
        self.grid = threshold_grid_for(cam_curve_interval)
        self.cam_curve_interval = self.grid.interval
        self.ignore_index = int(ignore_index)
        f1 = float(f1_tau)
        if math.isnan(f1) or not 0.0 <= f1 <= 1.0:
            raise MetricError(f"f1_tau={f1_tau!r} is outside [0, 1]; CAM thresholds live in [0, 1]")
        self.f1_tau = f1
        # the grid bin whose float32 threshold is float32(f1_tau) (s ≥ c_l ⟺ s ≥ f1_tau), if any:
        # then F1 comes from the per-image histograms (0.5 on the default grids)
        hit = np.flatnonzero(self.grid.ceil32 == np.float32(f1))
        self._f1_bin: int | None = int(hit[0]) if len(hit) else None
        self.region_tau = None if region_tau is None else self.grid.value(self.grid.index(region_tau))
        self.track_regions = track_regions
        nb = self.grid.n + 1
        self.hist = torch.zeros(2, nb, dtype=torch.int64)  # [0] background, [1] foreground
        self.f1 = torch.zeros(4, dtype=torch.float64)  # sum F1+, #images with fg, sum F1-, #images with bg
        self.n_images = 0
        self.n_ignored = 0
        # region sizes: image ids order of update; true fraction; predicted (fraction or counts)
        self._true_frac: list[float] = []
        self._pred_frac: list[float] = []
        self._pred_counts: list[torch.Tensor] = []  # per image: #pixels ≥ τ_l (region_tau None)
        self._valid: list[int] = []

    # --- streaming (update: MaskStream) ---------------------------------------------
    def _accumulate(self, cams: torch.Tensor, cls: torch.Tensor) -> None:
        B = cams.shape[0]
        nb = self.grid.n + 1
        # one bincount of key = bin + nb·(class + 3·image): per-image histograms of the bins
        # of background (0), ROI (1) and ignored (2) pixels. When f1_tau is not a grid point
        # (as a float32 threshold), the key also splits by [s ≥ f1_tau]: + 3·nb·[s ≥ f1_tau],
        # with 6 parts per image.
        f1_bin = self._f1_bin
        parts = 3 if f1_bin is not None else 6
        part = cls.to(torch.int32)
        if f1_bin is None:
            part.add_(torch.ge(cams, self.f1_tau).to(torch.int32), alpha=3)
        key = self.grid.bins(cams).add_(part, alpha=nb)
        key.add_(torch.arange(0, parts * nb * B, parts * nb, device=cams.device, dtype=torch.int32).view(B, 1, 1))
        counts = torch.bincount(key.view(-1), minlength=B * parts * nb).view(B, parts // 3, 3, nb)
        per = counts.sum(1) if f1_bin is None else counts[:, 0]  # B×3×nb: [bg, ROI, ignored] per image
        self.n_ignored += int(per[:, 2].sum())
        per = per[:, :2]
        self.hist += per.sum(0).cpu()
        self.n_images += B
        n_bg, n_fg = per[:, 0].sum(-1), per[:, 1].sum(-1)
        # per-image F1 at f1_tau (Eqs. 14-15, max-min-uncertainty): F1+ over images with ROI
        # pixels, F1- over images with background pixels
        if f1_bin is None:
            tp, fp = counts[:, 1, 1].sum(-1), counts[:, 1, 0].sum(-1)
        else:
            tp, fp = per[:, 1, f1_bin:].sum(-1), per[:, 0, f1_bin:].sum(-1)
        tn, fn = n_bg - fp, n_fg - tp
        has_fg, has_bg = n_fg > 0, n_bg > 0
        f1p = (2 * tp).double() / (2 * tp + fp + fn).clamp_min(1).double()
        f1n = (2 * tn).double() / (2 * tn + fn + fp).clamp_min(1).double()
        self.f1 += torch.stack(
            [f1p[has_fg].sum(), has_fg.sum().double(), f1n[has_bg].sum(), has_bg.sum().double()]
        ).cpu()
        if self.track_regions:
            n_valid = (n_bg + n_fg).cpu()
            self._valid += n_valid.tolist()
            self._true_frac += (n_fg.cpu().double() / n_valid.clamp_min(1).double()).tolist()
            pos = per.sum(1).flip(-1).cumsum(-1).flip(-1)  # B×nb predicted-positive counts per threshold
            if self.region_tau is not None:
                r = self.grid.index(self.region_tau)
                self._pred_frac += (pos[:, r].cpu().double() / n_valid.clamp_min(1).double()).tolist()
            else:
                self._pred_counts += list(pos.to(torch.int32).cpu().unbind(0))

    # --- merging (DDP / split-and-merge) ---------------------------------------------
    def _settings(self) -> tuple:
        return (self.ignore_index, self.region_tau, self.track_regions, self.f1_tau, self.cam_curve_interval)

    def merge(self, other: PixelAccumulator) -> PixelAccumulator:
        """Add ``other`` (same settings) into this accumulator, in place; returns self."""
        if other._settings() != self._settings():
            raise MetricError("merge: PixelAccumulators built with different settings cannot be merged")
        self.hist += other.hist
        self.f1 += other.f1
        self.n_images += other.n_images
        self.n_ignored += other.n_ignored
        self._true_frac += other._true_frac
        self._pred_frac += other._pred_frac
        self._pred_counts += other._pred_counts
        self._valid += other._valid
        return self

    def __add__(self, other: PixelAccumulator) -> PixelAccumulator:
        out = PixelAccumulator(self.ignore_index, self.region_tau, self.track_regions, self.f1_tau,
                               self.cam_curve_interval, self.threads)
        return out.merge(self).merge(other)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Summable state (histograms and counters) as tensors, e.g. for ``all_reduce(SUM)``.
        Per-image region sizes are not part of it (gather them with ``all_gather_object``)."""
        counts = torch.tensor([self.n_images, self.n_ignored], dtype=torch.int64)
        return {"hist": self.hist.clone(), "f1": self.f1.clone(), "counts": counts}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        hist = state["hist"].detach().to("cpu", torch.int64).clone()
        if tuple(hist.shape) != tuple(self.hist.shape):
            raise MetricError(
                f"load_state_dict: histograms of {hist.shape[-1]} bins, this accumulator has {self.hist.shape[-1]} "
                f"(cam_curve_interval={self.cam_curve_interval}); build it with the same interval"
            )
        self.hist = hist
        self.f1 = state["f1"].detach().to("cpu", torch.float64).clone()
        self.n_images, self.n_ignored = (int(v) for v in state["counts"].tolist())

    # --- results --------------------------------------------------------------------
    def _ge(self) -> tuple[torch.Tensor, torch.Tensor, float, float]:
        if self.n_images == 0:
            raise MetricError("pixel metrics: no image with a pixel mask was given; nothing to evaluate")
        hist = self.hist.double()
        ge = hist.flip(-1).cumsum(-1).flip(-1)  # counts with s ≥ τ_l
        bg_ge, fg_ge = ge[0], ge[1]
        n_bg, n_fg = float(bg_ge[0]), float(fg_ge[0])
        if n_fg == 0:
            raise MetricError(
                f"pixel metrics: the split has no foreground (ROI, mask = 1) pixel in its {self.n_images} "
                "pixel-labelled image(s), so PxAP / TP* / Dice+ are undefined. Evaluate localisation on a "
                "split that contains ROI pixels (e.g. valpx/test with abnormal images), or check that masks "
                "use 1 for ROI (not 255, which is 'ignore')"
            )
        return fg_ge, bg_ge, n_fg, n_bg

    def tau_star(self) -> float:
        """τ* = argmax over τ_l of the pooled mean IoU (foreground and background IoU
        averaged); ties go to the smallest τ."""
        fg_ge, bg_ge, n_fg, n_bg = self._ge()
        return self.grid.value(int(_miou(fg_ge, bg_ge, n_fg, n_bg).argmax()))

    def compute(self, tau: float | None = None) -> dict[str, float]:
        """All pixel metrics as a flat dict of floats (percentages for scores).

        ``tau``: threshold of ``dice_fg_pooled``/``dice_bg_pooled``/``miou`` (e.g. τ* chosen
        on the selection split); ``None`` uses this split's own τ*. It is snapped to the
        grid and reported as ``tau``. The Dice at this split's τ* is always reported too
        (``*_tau_star``). ``cam_curve_interval`` records the sweep's step."""
        fg_ge, bg_ge, n_fg, n_bg = self._ge()
        npred = fg_ge + bg_ge
        # PxAP (Eq. 16, survey; Choe et al. 2020, wsolevaluation MaskEvaluator.compute): walking
        # τ from 1.0 down, Σ P(τ_l)·(R(τ_l) − R(τ_{l+1})), R above τ = 1.0 is 0, τ with no
        # positive skipped.
        prec = torch.where(npred > 0, fg_ge / npred.clamp_min(1), torch.zeros_like(npred))
        rec = fg_ge / n_fg
        rec_next = torch.cat([rec[1:], rec.new_zeros(1)])
        pxap = 100.0 * float((prec * (rec - rec_next))[npred > 0].sum())
        # threshold-marginalised confusion matrix (Eqs. 17-24, survey): mean over τ_1..τ_T
        # (τ = 0.001..1.000 on the default grid)
        tp = 100.0 * fg_ge[1:] / n_fg
        fp = 100.0 * bg_ge[1:] / n_bg if n_bg > 0 else torch.full_like(tp, math.nan)
        miou = _miou(fg_ge, bg_ge, n_fg, n_bg)
        l_star = int(miou.argmax())
        l_tau = l_star if tau is None else self.grid.index(tau)
        d_fg, d_bg = _dice(fg_ge, bg_ge, n_fg, n_bg)
        out = {
            "pxap": pxap,
            "tp_star": float(tp.mean()),
            "fn_star": float((100.0 - tp).mean()),
            "fp_star": float(fp.mean()),
            "tn_star": float((100.0 - fp).mean()),
            "tau": self.grid.value(l_tau),
            "tau_star": self.grid.value(l_star),
            "miou": 100.0 * float(miou[l_tau]),
            "miou_tau_star": 100.0 * float(miou[l_star]),
            "dice_fg_pooled": 100.0 * float(d_fg[l_tau]),
            "dice_bg_pooled": 100.0 * float(d_bg[l_tau]),
            "dice_fg_pooled_tau_star": 100.0 * float(d_fg[l_star]),
            "dice_bg_pooled_tau_star": 100.0 * float(d_bg[l_star]),
            "f1_tau": self.f1_tau,
            "f1_fg_mean": 100.0 * float(self.f1[0] / self.f1[1]) if self.f1[1] > 0 else math.nan,
            "f1_bg_mean": 100.0 * float(self.f1[2] / self.f1[3]) if self.f1[3] > 0 else math.nan,
            "f1_fg_images": int(self.f1[1]),
            "f1_bg_images": int(self.f1[3]),
            "fg_fraction": 100.0 * n_fg / (n_fg + n_bg),
            "n_pixel_images": self.n_images,
            "n_pixels_fg": int(n_fg),
            "n_pixels_bg": int(n_bg),
            "n_pixels_ignored": self.n_ignored,
            "cam_curve_interval": self.cam_curve_interval,
        }
        return out

    def curves(self, tau: float | None = None) -> dict[str, Any]:
        """Per-τ curves (lists over τ_l, l = 0..T): precision, recall, TP/FN/FP/TN (%), mean
        IoU, pooled Dice; the CAM value histograms of foreground and background pixels (bin
        l = [τ_l, τ_{l+1}), last bin = exactly 1.0); region sizes per image at ``tau``
        (``None``: the accumulator's ``region_tau``, else this split's τ*)."""
        fg_ge, bg_ge, n_fg, n_bg = self._ge()
        npred = fg_ge + bg_ge
        prec = torch.where(npred > 0, fg_ge / npred.clamp_min(1), torch.full_like(npred, math.nan))
        tp = 100.0 * fg_ge / n_fg
        fp = 100.0 * bg_ge / n_bg if n_bg > 0 else torch.full_like(tp, math.nan)
        d_fg, d_bg = _dice(fg_ge, bg_ge, n_fg, n_bg)
        out: dict[str, Any] = {
            "tau": self.grid.values(),
            "precision": prec.tolist(),
            "recall": (fg_ge / n_fg).tolist(),
            "tp": tp.tolist(),
            "fn": (100.0 - tp).tolist(),
            "fp": fp.tolist(),
            "tn": (100.0 - fp).tolist(),
            "miou": (100.0 * _miou(fg_ge, bg_ge, n_fg, n_bg)).tolist(),
            "dice_fg": (100.0 * d_fg).tolist(),
            "dice_bg": (100.0 * d_bg).tolist(),
            "hist_fg": self.hist[1].tolist(),
            "hist_bg": self.hist[0].tolist(),
            "cam_curve_interval": self.cam_curve_interval,
        }
        out["regions"] = self.region_sizes(tau)
        return out

    def region_sizes(self, tau: float | None = None) -> dict[str, Any]:
        """Per-image ROI size, in update order: ``true`` (fraction of valid pixels that are
        ROI) and ``pred`` (fraction of valid pixels with s ≥ τ), and the τ used."""
        if not self.track_regions:
            return {"tau": None, "true": [], "pred": []}
        if self._pred_counts:
            l_r = self.grid.index(tau if tau is not None else self.tau_star())
            valid = torch.tensor(self._valid, dtype=torch.float64).clamp_min(1)
            pred = (torch.stack(self._pred_counts)[:, l_r].double() / valid).tolist()
            return {"tau": self.grid.value(l_r), "true": list(self._true_frac), "pred": pred}
        if (tau is not None and self.region_tau is not None
                and self.grid.index(tau) != self.grid.index(self.region_tau)):
            raise MetricError(
                f"region sizes were tracked at tau={self.region_tau}, not {tau}; build the accumulator with "
                "region_tau=None to resolve any tau at the end"
            )
        return {"tau": self.region_tau, "true": list(self._true_frac), "pred": list(self._pred_frac)}




def _miou(fg_ge: torch.Tensor, bg_ge: torch.Tensor, n_fg: float, n_bg: float) -> torch.Tensor:
    """Pooled mean IoU per τ_l of the 2-class segmentation {s ≥ τ} vs mask: (IoU_fg + IoU_bg)/2,
    a class whose IoU denominator is 0 (it is absent from mask and prediction) left out."""
    iou_fg_den = n_fg + bg_ge  # TP + FP + FN
    iou_bg_den = n_bg + (n_fg - fg_ge)  # TN + FN + FP
    iou_fg = fg_ge / iou_fg_den.clamp_min(1)
    iou_bg = (n_bg - bg_ge) / iou_bg_den.clamp_min(1)
    n_cls = (iou_fg_den > 0).double() + (iou_bg_den > 0).double()
    return (iou_fg * (iou_fg_den > 0) + iou_bg * (iou_bg_den > 0)) / n_cls.clamp_min(1)


def _dice(fg_ge: torch.Tensor, bg_ge: torch.Tensor, n_fg: float, n_bg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled Dice per τ_l: foreground 2TP/(2TP+FP+FN), background 2TN/(2TN+FN+FP)
    (Eqs. 14-15 of max-min-uncertainty, with pixels pooled over the split)."""
    tn = n_bg - bg_ge
    fn = n_fg - fg_ge
    d_fg = 2 * fg_ge / (2 * fg_ge + bg_ge + fn).clamp_min(1e-12)
    d_bg = 2 * tn / (2 * tn + fn + bg_ge).clamp_min(1e-12)
    return d_fg, d_bg


def pixel_metrics(
    cams: Any, masks: Any, ignore_index: int = IGNORE_INDEX, tau: float | None = None,
    cam_curve_interval: float = DEFAULT_INTERVAL,
) -> dict[str, float]:
    """One call on whole tensors/arrays: ``cams`` N×H×W in [0, 1], ``masks`` N×H×W uint8
    (0 / 1 / ``ignore_index``). Same numbers and keys as :class:`PixelAccumulator`
    (``cam_curve_interval``: the sweep's threshold step)."""
    acc = PixelAccumulator(ignore_index=ignore_index, track_regions=False, cam_curve_interval=cam_curve_interval)
    acc.update(torch.as_tensor(cams), torch.as_tensor(masks))
    return acc.compute(tau=tau)
