"""Dense Gaussian (bilateral) filtering ``out_i = Σ_j k(f_i, f_j)·v_j`` with the kernel
``k(f_i, f_j) = exp(−½‖f_i − f_j‖²)`` on per-pixel features ``f`` already divided by their
standard deviations (position/σ_xy, colour/σ_rgb). Shared by the CRF loss
(:mod:`wsol.losses.crf`, f-cam Eq. B.1) and dense-CRF post-processing
(:mod:`wsol.postprocess.crf`, Krähenbühl & Koltun 2011). Pure PyTorch: CPU and CUDA,
differentiable w.r.t. the filtered values (not the features), no compiled extension.

Three filters, all ``B×N×d`` features → callable ``values B×N×C -> B×N×C``, linear
operators with the self term included (``k(f_i, f_i) = 1``):

- :class:`ExactGaussian` — materialises the kernel a block of rows at a time; O(N²). The
  oracle, for small images (48×48: 5 M kernel entries).
- :class:`BilateralGrid` — a dense grid over the feature box with spacing ``step`` (in σ
  units, default 0.5): multilinear splat onto the 2^d cell corners, separable Gaussian blur
  along each axis (std ``sqrt(1 − step²/3)`` so that, with the variance ``step²/6`` that splat
  and slice each add, the kernel has std 1), multilinear slice. Symmetric.
  O(N·2^d + cells). Accurate
  (the CRF-loss value is within ~1 % of the exact one at step 0.5, tests/test_losses_crf.py)
  and cheap when the kernel is wide compared with the feature box — the CRF-loss regime
  (σ_xy = 100 px over a 224 px image is a 2.24σ box; σ_rgb = 15 makes the colour box ≤ 17σ).
  Narrow kernels (densecrf's θβ = 3) would need millions of cells: it refuses and says so.
- :class:`PermutohedralLattice` — the permutohedral lattice of Adams, Baek & Davis (2010)
  in the variant of Krähenbühl's densecrf (the filter inside pydensecrf and inside Tang et
  al.'s DenseCRFLoss, which F-CAM calls): features lifted onto the plane Σx = 0 of R^{d+1},
  splatted onto the d+1 vertices of their simplex with barycentric weights, blurred with
  ``[½, 1, ½]`` along the d+1 lattice directions, sliced with the same weights times
  ``α = 1/(1 + 2^−d)``. O(N·d²), any kernel width; nearly but not exactly symmetric (the
  gradient uses the exact transpose). Tensor ops only: sort-based hashing
  (``torch.unique`` + ``torch.searchsorted``) replaces densecrf's hash table; it reproduces
  pydensecrf's filter to float rounding (tests/test_postprocess_crf.py). It is *not* the
  exact Gaussian: in 5-D (x, y, r, g, b) its output is 0.4–0.65 × the exact one, with a
  flatter, wider shape, and the ratio moves with the image (≈ 0.5 on 48×48 synthetic
  images, ≈ 0.6 on 224² photos for σ = 100/15); in 2-D it is ≈ 0.88 ×.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from wsol.errors import ConfigError

# Largest mixed-radix code used to hash integer lattice keys into one int64; above it the
# (slower) row-wise ``torch.unique(dim=0)`` path is taken.
_MAX_CODE = 2**62


def pixel_features(
    images: torch.Tensor | None,
    sigma_xy: float,
    sigma_rgb: float | None = None,
    *,
    size: tuple[int, int] | None = None,
    batch: int = 1,
) -> torch.Tensor:
    """Per-pixel kernel features divided by their standard deviations: ``(x, y)/σ_xy``
    (x = column, y = row, in pixels) and, when ``sigma_rgb`` is given, ``(R, G, B)·255/σ_rgb``
    — colours in [0, 1] go to the 0..255 scale that σ_rgb is quoted in (σ_rgb = 15 in Tang et
    al. / F-CAM, θβ = 3 / 11 in the densecrf presets), as pydensecrf does with uint8 images.

    ``images``: B×3×H×W in [0, 1]; for the position-only kernel pass ``images=None`` with
    ``size=(H, W)`` and ``batch``. Returns B×(H·W)×d in row-major pixel order."""
    if sigma_xy <= 0 or (sigma_rgb is not None and sigma_rgb <= 0):
        raise ConfigError(f"Gaussian kernel widths must be > 0, got sigma_xy={sigma_xy}, sigma_rgb={sigma_rgb}")
    if images is None:
        if size is None or sigma_rgb is not None:
            raise ValueError("pixel_features: give images (colour kernel) or size=(H, W) (position-only kernel)")
        (h, w), device, dtype = size, torch.device("cpu"), torch.float32
    else:
        if images.dim() != 4:
            raise ValueError(f"pixel_features expects B×C×H×W images, got shape {tuple(images.shape)}")
        batch, (h, w), device = images.shape[0], images.shape[-2:], images.device
        dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype), indexing="ij"
    )
    pos = (torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2) / sigma_xy).expand(batch, -1, -1)
    if sigma_rgb is None or images is None:
        return pos.contiguous()
    rgb = images.to(dtype).flatten(2).transpose(1, 2) * (255.0 / sigma_rgb)
    return torch.cat([pos, rgb], dim=-1).contiguous()


class _Linear(torch.autograd.Function):
    """``W v`` for a linear operator given with its transpose: the backward pass is
    ``Wᵀ g``, so nothing but the operator's own index tables is kept for it."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, op: Callable, op_t: Callable) -> torch.Tensor:
        ctx.ops = (op, op_t)
        return op(values)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        op, op_t = ctx.ops
        return _Linear.apply(grad.contiguous(), op_t, op), None, None


def _check_values(values: torch.Tensor, shape: tuple[int, int]) -> None:
    if values.dim() != 3 or tuple(values.shape[:2]) != shape:
        raise ValueError(f"expected values of shape {shape[0]}×{shape[1]}×C, got {tuple(values.shape)}")


def _check_features(features: torch.Tensor) -> None:
    if features.dim() != 3 or features.shape[1] == 0 or features.shape[2] == 0:
        raise ValueError(f"expected features B×N×d with N, d ≥ 1, got shape {tuple(features.shape)}")


class ExactGaussian:
    """``out_i = Σ_j exp(−½‖f_i − f_j‖²)·v_j`` with the kernel materialised ``block`` rows
    at a time (plain autograd: the oracle, ``gradcheck``-able in float64)."""

    def __init__(self, features: torch.Tensor, max_entries: int = 2**18) -> None:
        _check_features(features)
        self.features = features.detach()
        self.shape = (int(features.shape[0]), int(features.shape[1]))
        self.max_entries = max_entries

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        _check_values(values, self.shape)
        f = self.features.to(values.dtype)
        b, n = self.shape
        sq = (f * f).sum(-1)
        block = max(1, self.max_entries // (b * n))
        outs = []
        for start in range(0, n, block):  # row blocks of the kernel, not pixels
            rows = slice(start, start + block)
            d2 = sq[:, rows, None] + sq[:, None, :] - 2.0 * f[:, rows] @ f.transpose(1, 2)
            outs.append(torch.exp(-0.5 * d2.clamp_min(0.0)) @ values)
        return torch.cat(outs, dim=1)


class BilateralGrid:
    """Dense-grid Gaussian filter (see the module docstring). ``step``: cell size in σ units,
    in (0, 1]; ``max_cells``: refuse grids with more than this many cells (batch included,
    per value channel) instead of exhausting memory."""

    def __init__(self, features: torch.Tensor, step: float = 0.5, max_cells: int = 2**26) -> None:
        _check_features(features)
        if not 0 < step <= 1:
            raise ConfigError(f"bilateral grid step must lie in (0, 1] (σ units), got {step}")
        b, n, d = features.shape
        self.shape, self.d = (b, n), d
        with torch.no_grad():
            f = features.detach()
            f = f if f.dtype in (torch.float32, torch.float64) else f.float()
            g = (f - f.amin(1, keepdim=True)) / step
            sizes = (g.amax((0, 1)).floor().long() + 2).tolist()
            self.sizes = [int(s) for s in sizes]
            ncell = math.prod(self.sizes)
            if b * ncell > max_cells:
                raise ConfigError(
                    f"the bilateral grid for these kernel widths needs {b}×{ncell} cells ({self.sizes} per image; "
                    f"limit {max_cells}): the Gaussian is narrow compared with the image/colour range. "
                    "Use method='lattice' (any width), a larger grid step, or downscale (scale_factor < 1)."
                )
            lo = g.floor()  # ≤ size − 2 on every axis, so all 2^d corners are inside the grid
            frac = g - lo
            strides = [math.prod(self.sizes[k + 1 :]) for k in range(d)]
            base = (lo.long() * torch.tensor(strides, device=g.device)).sum(-1)
            base = base + torch.arange(b, device=g.device)[:, None] * ncell
            # The 2^d corners of each point's cell: flat cell index and multilinear weight.
            bits = torch.tensor([[(c >> k) & 1 for k in range(d)] for c in range(2**d)], device=g.device)
            self._index = base[..., None] + (bits * torch.tensor(strides, device=g.device)).sum(-1)  # B×N×2^d
            self._weight = torch.where(bits.bool(), frac[:, :, None, :], 1.0 - frac[:, :, None, :]).prod(-1)
            self._ncell = ncell
            # Blur: per axis a Toeplitz matrix of Gaussian taps (std in cells), scaled so that
            # the kernel's integral is that of exp(−½x²), √(2π), per axis.
            sb = math.sqrt(1.0 - step * step / 3.0) / step
            rad = int(math.ceil(4 * sb))
            t = torch.arange(-rad, rad + 1, dtype=torch.float64)
            taps = torch.exp(-0.5 * (t / sb) ** 2)
            taps = taps / taps.sum() * (math.sqrt(2 * math.pi) / step)
            self._blur = []
            for s in self.sizes:
                i = torch.arange(s)
                lag = (i[:, None] - i[None, :]).abs()
                mat = torch.where(lag <= rad, taps[(lag + rad).clamp_max(2 * rad)], torch.zeros(()))
                self._blur.append(mat.to(device=g.device, dtype=g.dtype))

    def _filter(self, values: torch.Tensor) -> torch.Tensor:
        b, n, c = values.shape
        w = self._weight.to(values.dtype)[..., None]  # B×N×2^d×1
        table = values.new_zeros(b * self._ncell, c)
        table.index_add_(0, self._index.reshape(-1), (values[:, :, None, :] * w).reshape(-1, c))  # splat
        for k, mat in enumerate(self._blur):  # separable blur, axis k of (b, *sizes, c)
            outer = b * math.prod(self.sizes[:k])
            table = (mat.to(values.dtype) @ table.reshape(outer, self.sizes[k], -1)).reshape(b * self._ncell, c)
        return (table[self._index] * w).sum(2)  # slice

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        _check_values(values, self.shape)
        return _Linear.apply(values, self._filter, self._filter)  # symmetric: Toeplitz factors commute


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    # C's round() as in densecrf, not torch.round's half-to-even.
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


class PermutohedralLattice:
    """The permutohedral lattice for one batch of feature sets (see the module docstring);
    the raw densecrf operator, no normalisation. Building it (no gradient) is the expensive
    part; filtering is d+1 gathers plus a scatter, so build once and reuse (mean-field
    iterations, forward and backward of a loss)."""

    def __init__(self, features: torch.Tensor) -> None:
        _check_features(features)
        b, n, d = features.shape
        self.shape, self.d = (b, n), d
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))  # densecrf's slice constant
        with torch.no_grad():
            f = features.detach()
            self._build(f if f.dtype in (torch.float32, torch.float64) else f.float())

    def _build(self, features: torch.Tensor) -> None:
        b, n, d = features.shape
        device, dtype = features.device, features.dtype
        f = features.reshape(b * n, d)
        # Elevate onto Σx = 0 (Adams et al. p.5), scaled so that the blur is a Gaussian of
        # std 1 in feature units: elevated[0] = Σ_i cf_i, elevated[j] = Σ_{i≥j} cf_i − j·cf_{j−1}.
        inv_std = math.sqrt(2.0 / 3.0) * (d + 1)
        i = torch.arange(d, device=device, dtype=dtype)
        cf = f * (inv_std / torch.sqrt((i + 1.0) * (i + 2.0)))
        suffix = torch.flip(torch.cumsum(torch.flip(cf, [1]), 1), [1])
        j = torch.arange(1, d + 1, device=device, dtype=dtype)
        tail = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], 1) - j * cf
        elevated = torch.cat([suffix[:, :1], tail], 1)  # P×(d+1)

        # Nearest remainder-0 point; rank of each coordinate of the remainder (ties to the
        # lower index, as densecrf); bring the point back onto the plane.
        rd = _round_half_away(elevated / (d + 1))
        rem0 = rd * (d + 1)
        diff = elevated - rem0
        larger = diff[:, None, :] > diff[:, :, None]  # [p, i, j]: diff_j > diff_i
        tie_before = (diff[:, None, :] == diff[:, :, None]) & torch.ones(
            d + 1, d + 1, dtype=torch.bool, device=device
        ).tril(-1)
        rank = (larger | tie_before).sum(2) + rd.sum(1, keepdim=True).long()
        below, above = rank < 0, rank > d
        rank = rank + (d + 1) * (below.long() - above.long())
        rem0 = rem0 + (d + 1) * (below.to(dtype) - above.to(dtype))

        # Barycentric coordinates (Adams et al. p.10).
        v = (elevated - rem0) / (d + 1)
        bary = torch.zeros(b * n, d + 2, device=device, dtype=dtype)
        bary.scatter_add_(1, d - rank, v)
        bary.scatter_add_(1, d - rank + 1, -v)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        self._bary = bary[:, : d + 1].contiguous()

        # Simplex vertices r = 0..d: key_r[i] = rem0[i] + r − (d+1)·[rank[i] > d − r]; keep
        # the first d coordinates (the last follows from Σ = 0) and prepend the image index.
        r = torch.arange(d + 1, device=device)
        keys = rem0.round().long()[:, None, :d] + r[:, None] - (d + 1) * (rank[:, None, :d] > (d - r)[:, None]).long()
        image = torch.arange(b, device=device).repeat_interleave(n)
        keys = torch.cat([image[:, None, None].expand(-1, d + 1, 1), keys], 2).reshape(-1, d + 1)

        # Hash (exact, sort-based), then each lattice point's neighbours along the d+1 blur
        # directions; a missing neighbour points to slot 0, a constant zero.
        lo = keys.amin(0) - d
        lo[0] = 0
        radix = keys.amax(0) + d - lo + 1
        if math.prod(int(x) for x in radix.tolist()) < _MAX_CODE:
            codes = _encode(keys, lo, radix)
            uniq, inverse = torch.unique(codes, return_inverse=True)
            m = uniq.numel()
            # The code is linear in the key (no carries thanks to the ±d margin in lo/radix),
            # so a neighbour's code is the point's code plus a constant per direction.
            strides = [math.prod(int(x) for x in radix[k + 1 :].tolist()) for k in range(d + 1)]
            delta = (
                _neighbour_keys(torch.zeros(1, d + 1, dtype=torch.long, device=device), d)[:, :, 0]
                * torch.tensor(strides, device=device)
            ).sum(-1)  # 2×(d+1)
            nb_codes = (uniq[None, None, :] + delta[:, :, None]).reshape(-1)
            pos = torch.searchsorted(uniq, nb_codes).clamp_max(m - 1)
            found = uniq[pos] == nb_codes
        else:
            uniq_rows, inverse = torch.unique(keys, dim=0, return_inverse=True)
            m = uniq_rows.shape[0]
            rows = torch.cat([uniq_rows, _neighbour_keys(uniq_rows, d).reshape(-1, d + 1)], 0)
            distinct, which = torch.unique(rows, dim=0, return_inverse=True)
            lattice_id = torch.full((distinct.shape[0],), -1, dtype=torch.long, device=device)
            lattice_id[which[:m]] = torch.arange(m, device=device)
            pos = lattice_id[which[m:]]
            found = pos >= 0
        nb = torch.where(found, pos + 1, torch.zeros_like(pos)).reshape(2, d + 1, m)
        self._neighbours = torch.cat([torch.zeros(2, d + 1, 1, dtype=torch.long, device=device), nb], 2)
        self._offsets = (inverse + 1).reshape(b * n, d + 1)
        self.num_points = m

    def _filter(self, values: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        b, n, c = values.shape
        bary = self._bary.to(values.dtype)[:, :, None]
        table = values.new_zeros(self.num_points + 1, c)
        table.index_add_(0, self._offsets.reshape(-1), (values.reshape(b * n, 1, c) * bary).reshape(-1, c))
        directions = range(self.d, -1, -1) if reverse else range(self.d + 1)
        for j in directions:  # the d+1 lattice directions
            table = table + 0.5 * (table[self._neighbours[0, j]] + table[self._neighbours[1, j]])
        out = (table[self._offsets] * bary).sum(1)
        return (out * self.alpha).reshape(b, n, c)

    def _filter_t(self, values: torch.Tensor) -> torch.Tensor:
        return self._filter(values, reverse=True)

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Filter ``values`` (B×N×C). Each direction's blur is symmetric, but on a sparse
        lattice (missing neighbours are zeros) the d+1 blurs do not commute, so the operator
        is not exactly symmetric; its transpose (densecrf's ``transpose=true``: blur in
        reverse order) is used for the gradient."""
        _check_values(values, self.shape)
        return _Linear.apply(values, self._filter, self._filter_t)


def _encode(keys: torch.Tensor, lo: torch.Tensor, radix: torch.Tensor) -> torch.Tensor:
    code = torch.zeros(keys.shape[0], dtype=torch.long, device=keys.device)
    for k in range(keys.shape[1]):  # the d+1 key coordinates
        code = code * radix[k] + (keys[:, k] - lo[k])
    return code


def _neighbour_keys(keys: torch.Tensor, d: int) -> torch.Tensor:
    """``keys`` M×(1+d) (image, first d lattice coordinates) → 2×(d+1)×M×(1+d): along
    direction j the neighbours ``key ∓ (1, …, 1) ± (d+1)·e_j`` (e_d is the implicit last
    coordinate, so for j = d every stored coordinate moves by ∓1)."""
    step = torch.ones(d + 1, d, dtype=keys.dtype, device=keys.device)
    step[torch.arange(d), torch.arange(d)] = -d
    step = torch.cat([torch.zeros(d + 1, 1, dtype=keys.dtype, device=keys.device), step], 1)
    return torch.stack([keys[None] - step[:, None], keys[None] + step[:, None]], 0)


FILTERS = {"exact": ExactGaussian, "grid": BilateralGrid, "lattice": PermutohedralLattice}
