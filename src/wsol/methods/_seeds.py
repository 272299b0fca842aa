"""Pixel seeds sampled from a CAM, shared by F-CAM and NEGEV (f-cam.txt §3, Eqs. 1-2).

- :func:`otsu_threshold`: scikit-image's ``threshold_otsu``, batched in torch (CPU or
  CUDA), one threshold per map. ``quantize=False`` reproduces it on the float64 map (256
  bins between the map's min and max, ``np.histogram``'s binning); ``quantize=True`` on
  ``floor(255·map)`` as uint8 (one bin per integer value), which is what F-CAM's and
  NEGEV's code run (``threshold_otsu((cam * 255).astype(np.uint8))``). The arithmetic
  follows skimage step by step (counts as float32, ``w1·w2`` as a float32 product, means in
  float64, the first maximum wins), so the thresholds are equal, ties included, on the
  CPU; on CUDA the cumulative sums may round differently in the last bit, so an exact tie
  between two thresholds can resolve the other way. A constant map has the threshold
  ``min = max`` (skimage returns that value).
- :func:`seed_regions`: the sampling regions of Eq. 1: C+ = pixels above the Otsu
  threshold of the CAM (or its ``fg_extent`` highest pixels), optionally eroded (NEGEV/F-CAM
  code: an 11×11 erosion; an erosion that would empty C+ is skipped, as in F-CAM's
  ``GetFastSeederSLFCAMS``); C− = the ``n−`` fraction of lowest pixels (or the
  ``bg_extent`` lowest). A constant CAM carries no evidence: both regions are empty (the
  code's "bad egg").
- :func:`sample_seeds`: Eq. 2, Ω' = U(C+) ∪ U(C−): ``fg_count`` / ``bg_count`` pixels
  drawn uniformly without replacement from each region, re-drawn at every call, optionally
  dilated to ``dilate×dilate`` squares (the code's ``sl_ksz``); a pixel that ends up in both
  is dropped. Returns a B×H×W long map: 1 foreground, 0 background, :data:`IGNORE` elsewhere.
- :func:`partial_cross_entropy`: H(Y_p, S_p) averaged over the seeded pixels (Eq. 3's local
  term; F-CAM's code takes the mean, ``nn.CrossEntropyLoss(ignore_index=...)``, over the
  seeds of the batch; a batch without seeds gives 0).

Defaults of :class:`SeedParams` are the paper's (one pixel each, Otsu region); NEGEV's
defaults are set in :mod:`wsol.methods.negev`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

#: label of the pixels that are not seeds (``F.cross_entropy``'s default ignore index)
IGNORE = -100
FOREGROUND = 1
BACKGROUND = 0


class SeedParams(BaseModel):
    """How seeds are drawn from a CAM (f-cam.txt Eqs. 1-2)."""

    model_config = ConfigDict(extra="forbid")

    fg_count: int = Field(1, ge=0, description="foreground pixels drawn from C+ per image and step (Eq. 2: one)")
    bg_count: int = Field(1, ge=0, description="background pixels drawn from C− per image and step (Eq. 2: one)")
    bg_fraction: float = Field(0.1, gt=0, le=1, description="n−: C− is this fraction of lowest pixels (Eq. 1; "
                               "searched in [0.1, 0.7], the authors' CUB command uses 0.1)")
    bg_extent: int | None = Field(None, ge=1, description="C− = this many lowest pixels instead of bg_fraction")
    fg_extent: int | None = Field(None, ge=1, description="C+ = this many highest pixels instead of the Otsu region")
    fg_erode: int = Field(1, ge=1, description="erode C+ with a k×k square (odd k; 1 = no erosion; code: 11)")
    dilate: int = Field(1, ge=1, description="grow each seed to a k×k square (odd k; the code's sl_ksz)")
    quantize: bool = Field(False, description="Otsu on floor(255·CAM) as uint8 with the threshold clamped to "
                           "[1, 254], as F-CAM's/NEGEV's code; False: Otsu on the float CAM")

    @field_validator("fg_erode", "dilate")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel size must be odd, got {v}")
        return v


# --- Otsu --------------------------------------------------------------------------------
def _otsu_from_hist(counts: torch.Tensor, centers: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """skimage's Otsu on histograms ``counts`` B×n (float32) with bin ``centers`` B×n
    (float64): index of the first maximum of ``w1·w2·(μ1 − μ2)²`` over the n−1 splits;
    ``valid`` B×(n−1) masks the splits that exist (integer histograms padded to 0..255)."""
    w1 = torch.cumsum(counts, dim=1)  # float32, as skimage
    w2 = torch.flip(torch.cumsum(torch.flip(counts, [1]), dim=1), [1])
    cc = counts.double() * centers
    mean1 = torch.cumsum(cc, dim=1) / w1.double()
    mean2 = torch.flip(torch.cumsum(torch.flip(cc, [1]), dim=1) / torch.flip(w2, [1]).double(), [1])
    # (w1·w2) is a float32 product in skimage (float32 counts) before the float64 factor
    var = (w1[:, :-1] * w2[:, 1:]).double() * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    if valid is not None:
        var = torch.where(valid, var, torch.full_like(var, -1.0))
    return var.argmax(dim=1)  # first maximum, as np.argmax


def otsu_threshold(maps: torch.Tensor, nbins: int = 256, quantize: bool = False) -> torch.Tensor:
    """Otsu threshold of each map (B×H×W or B×N), float64 B; ``map > threshold`` is the
    foreground. ``quantize``: the threshold of ``floor(255·map)`` (maps in [0, 1]) on the
    integer scale 0..255 (see the module docstring)."""
    x = maps.detach().flatten(1)
    if x.shape[1] == 0:
        raise ValueError("otsu_threshold: empty maps")
    b = x.shape[0]
    if quantize:
        q = quantize_255(x)
        lo, hi = q.min(dim=1).values, q.max(dim=1).values
        counts = torch.zeros(b, 256, dtype=torch.float32, device=x.device)
        counts.scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
        centers = torch.arange(256, dtype=torch.float64, device=x.device).expand(b, -1)
        split = torch.arange(255, device=x.device)
        valid = (split[None] >= lo[:, None]) & (split[None] < hi[:, None])
        thr = _otsu_from_hist(counts, centers, valid).double()
        return torch.where(lo == hi, lo.double(), thr)
    x = x.double()
    lo, hi = x.min(dim=1).values, x.max(dim=1).values
    const = lo == hi
    # np.histogram(x, bins=nbins, range=None): edges = linspace(lo, hi, nbins + 1)
    step = (hi - lo) / nbins
    k = torch.arange(nbins + 1, dtype=torch.float64, device=x.device)
    edges = k[None] * step[:, None] + lo[:, None]
    edges[:, -1] = hi
    denom = torch.where(const, torch.ones_like(hi), hi - lo)
    idx = (((x - lo[:, None]) / denom[:, None]) * nbins).long()  # astype(intp): truncation (x ≥ lo)
    idx = torch.where(idx == nbins, idx - 1, idx)
    idx = torch.where(x < edges.gather(1, idx), idx - 1, idx)
    idx = torch.where((x >= edges.gather(1, idx + 1)) & (idx != nbins - 1), idx + 1, idx)
    idx = idx.clamp(0, nbins - 1)  # constant maps only (their threshold is replaced below)
    counts = torch.zeros(b, nbins, dtype=torch.float32, device=x.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
    centers = (edges[:, :-1] + edges[:, 1:]) / 2.0
    thr = centers.gather(1, _otsu_from_hist(counts, centers)[:, None])[:, 0]
    return torch.where(const, lo, thr)


def quantize_255(x: torch.Tensor) -> torch.Tensor:
    """``(x·255).astype(np.uint8)`` for maps in [0, 1] (truncation), as int64."""
    return (x.double() * 255).clamp(0, 255).long()


# --- regions and sampling ----------------------------------------------------------------
def erode(region: torch.Tensor, k: int) -> torch.Tensor:
    """Binary erosion of B×H×W ``region`` by a k×k square; outside the image does not
    erode (kornia's default geodesic border, as in the F-CAM/NEGEV code)."""
    if k <= 1:
        return region
    inv = (~region).float()[:, None]
    # max-pooling pads with -inf: pixels beyond the border never count as background
    return F.max_pool2d(inv, k, stride=1, padding=k // 2)[:, 0] == 0


def dilate(seeds: torch.Tensor, k: int) -> torch.Tensor:
    """Binary dilation of B×H×W ``seeds`` by a k×k square."""
    if k <= 1:
        return seeds
    return F.max_pool2d(seeds.float()[:, None], k, stride=1, padding=k // 2)[:, 0] > 0


def _extreme(cams: torch.Tensor, count: int, highest: bool) -> torch.Tensor:
    """B×N mask of the ``count`` lowest (highest) values of each row (ties: lower index first)."""
    b, n = cams.shape
    order = torch.sort(-cams if highest else cams, dim=1, stable=True).indices
    out = torch.zeros(b, n, dtype=torch.bool, device=cams.device)
    out.scatter_(1, order[:, :count], True)
    return out


def seed_regions(cams: torch.Tensor, p: SeedParams) -> tuple[torch.Tensor, torch.Tensor]:
    """C+ and C− of Eq. 1 for CAMs B×H×W in [0, 1]: two bool B×H×W masks (see the module
    docstring). Both are empty for a constant CAM."""
    if cams.dim() != 3:
        raise ValueError(f"seed_regions expects B×H×W CAMs, got shape {tuple(cams.shape)}")
    b, h, w = cams.shape
    flat = cams.detach().flatten(1).double()
    const = flat.max(dim=1).values == flat.min(dim=1).values
    if p.quantize:  # the code's rule: constant uint8 CAM -> no seeds at all
        q = quantize_255(flat)
        const = q.max(dim=1).values == q.min(dim=1).values
    if p.fg_extent is not None:
        fg = _extreme(flat, min(p.fg_extent, h * w), highest=True)
    elif p.quantize:
        thr = otsu_threshold(flat, quantize=True).clamp(1, 254)  # the code clamps 0 -> 1, 255 -> 254
        fg = quantize_255(flat) > thr[:, None].long()
    else:
        fg = flat > otsu_threshold(flat)[:, None]
    fg = fg.view(b, h, w)
    if p.fg_erode > 1:
        eroded = erode(fg, p.fg_erode)
        keep = eroded.flatten(1).any(dim=1)  # F-CAM's code keeps C+ when erosion empties it
        fg = torch.where(keep[:, None, None], eroded, fg)
    n_bg = p.bg_extent if p.bg_extent is not None else int(p.bg_fraction * h * w)
    bg = _extreme(flat, min(n_bg, h * w), highest=False).view(b, h, w)
    none = const[:, None, None]
    return fg & ~none, bg & ~none


def draw_uniform(region: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` pixels drawn uniformly without replacement from each image's ``region``
    (B×H×W bool; all of them when the region is smaller), as a B×H×W bool mask."""
    flat = region.flatten(1)
    out = torch.zeros_like(flat)
    k = min(count, flat.shape[1])
    if k == 0:
        return out.view_as(region)
    # uniform keys on the region, -1 elsewhere: the k largest keys are a uniform k-subset
    gen_device = generator.device if generator is not None else flat.device
    keys = torch.rand(flat.shape, generator=generator, device=gen_device).to(flat.device)
    keys = torch.where(flat, keys, torch.full_like(keys, -1.0))
    top = keys.topk(k, dim=1)
    out.scatter_(1, top.indices, top.values >= 0)
    return out.view_as(region)


def sample_seeds(cams: torch.Tensor, p: SeedParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Ω' of Eq. 2 as a B×H×W long map (1 foreground, 0 background, :data:`IGNORE` elsewhere)."""
    fg_region, bg_region = seed_regions(cams, p)
    fg = dilate(draw_uniform(fg_region, p.fg_count, generator), p.dilate)
    bg = dilate(draw_uniform(bg_region, p.bg_count, generator), p.dilate)
    both = fg & bg  # the code drops pixels claimed by both
    fg, bg = fg & ~both, bg & ~both
    seeds = torch.full(cams.shape, IGNORE, dtype=torch.long, device=cams.device)
    seeds[fg] = FOREGROUND
    seeds[bg] = BACKGROUND
    return seeds


def partial_cross_entropy(logits: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Eq. 3 local term: cross-entropy of the decoder's logits B×2×H×W at the seeded pixels
    (``seeds`` B×H×W, :data:`IGNORE` elsewhere), averaged over the seeds; 0 without seeds."""
    if logits.shape[0] != seeds.shape[0] or logits.shape[-2:] != seeds.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and seeds {tuple(seeds.shape)} do not match")
    total = F.cross_entropy(logits, seeds, ignore_index=IGNORE, reduction="sum")
    n = (seeds != IGNORE).sum()
    return total / n.clamp_min(1)

