"""Spatial-pooling heads (survey §2.2). Every head maps backbone features B×K×h×w to
``(logits B×C, maps B×C×h×w)``: ``maps`` are the per-class activation maps (the CAMs
before upsampling), ``logits`` the class scores pooled from them.

Heads: :class:`GAPHead` (GAP/CAM, Eqs. 2-3), :class:`MaxPoolHead` (Oquab et al.),
:class:`LSEHead` (Eq. 4), :class:`WildcatHead` (Eq. 6), :class:`PRMHead` (Eq. 5),
:class:`DeepMILHead` (Eqs. 7-9). Equation numbers refer to wsol-histology-survey.txt.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
import torch.nn as nn
import torch.nn.functional as F


class PoolingHead(nn.Module):
    """Interface of the head family: ``forward(features) -> (logits, maps)``."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes


class ClassMapHead(PoolingHead):
    """A 1×1 linear layer W (C×K) turns features into class maps ``M_c = Σ_k W_ck F_k + b_c``
    (survey Eq. 3); a subclass says how the maps are pooled into class scores."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__(in_channels, num_classes)
        self.fc = nn.Linear(in_channels, num_classes)

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        # Eq. 3: M_c = Σ_k W_ck F_k (+ b_c, which min-max normalisation removes)
        return torch.einsum("ck,bkhw->bchw", self.fc.weight, features) + self.fc.bias[None, :, None, None]

    @abstractmethod
    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Class scores B×C from class maps B×C×h×w."""

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.class_maps(features)
        return self.pool(maps), maps


class GAPHead(ClassMapHead):
    """GAP + linear layer (Lin et al., survey Eq. 2) and its CAM (Zhou et al., survey Eq. 3).

    The linear layer W (C×K) is applied per position as a 1×1 convolution, so
    ``maps[c] = Σ_k W_ck F_k + b_c`` (Eq. 3) and, because the average is linear,
    ``logits = GAP(maps) = W·GAP(F) + b`` (Eq. 2): one computation gives both.
    """

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.mean(dim=(2, 3))  # Eq. 2: s_c = (1/hw) Σ_z M_c(z)


def resolve_k(k: float | int | None, n: int) -> int:
    """Number of positions selected out of ``n`` for a WILDCAT ``k``.

    A Python ``int`` is a count (clipped to ``n``); a ``float`` is a fraction of the map in
    (0, 1] (``round(k·n)``, at least 1); ``0`` selects nothing. As in Durand et al.'s code,
    except that the type, not the value, tells a count from a fraction (``1`` is one pixel,
    ``1.0`` the whole map).
    """
    if k is None or k == 0:
        return 0
    if isinstance(k, bool):
        raise ValueError(f"k must be a fraction in (0, 1] or a count >= 1, got {k!r}")
    if isinstance(k, int):
        if k < 0:
            raise ValueError(f"k as a count must be >= 1 (or 0 for none), got {k}")
        return min(k, n)
    if not 0 < k <= 1:
        raise ValueError(f"k as a fraction must lie in (0, 1], got {k}")
    return max(1, min(n, int(round(k * n))))


class WildcatHead(PoolingHead):
    """WILDCAT (Durand et al., 2017; survey Eq. 6).

    - transfer layer: a 1×1 convolution to ``C·M`` class-modality maps,
    - class-wise pooling: ``maps[c]`` = mean of its ``M`` modalities (this is the CAM),
    - spatial pooling: ``s_c = Z_c+/k+ + α·Z_c-/k-`` with ``Z_c+`` (``Z_c-``) the sum of the
      ``k+`` highest (``k-`` lowest) activations of ``maps[c]`` (Eq. 6).

    ``kmax``/``kmin``: fractions of the map in (0, 1] (float) or pixel counts >= 1 (int), see
    :func:`resolve_k`; ``kmin=None`` means ``kmin = kmax``, ``kmin=0`` drops the min term.
    ``dropout``: element-wise dropout on the class maps right before scoring, during
    training only (min-max-entropy-recursive-erasing.txt B.2: "over the final map of the
    pooling function right before computing the score"); the returned maps are not dropped.
    Eq. 6 has no factor 1/2 (Durand's code halves the sum when the min term is on); we
    follow the survey's equation.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        modalities: int = 4,
        kmax: float | int = 0.1,
        kmin: float | int | None = None,
        alpha: float = 0.6,
        dropout: float = 0.0,
    ):
        super().__init__(in_channels, num_classes)
        if modalities < 1:
            raise ValueError(f"modalities must be >= 1, got {modalities}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        resolve_k(kmin, 1)  # raises ValueError on a malformed k
        if resolve_k(kmax, 1) == 0:
            raise ValueError(f"kmax must select at least one position, got {kmax!r}")
        self.modalities = modalities
        self.kmax = kmax
        self.kmin = kmax if kmin is None else kmin
        self.alpha = float(alpha)
        self.dropout = float(dropout)
        self.conv = nn.Conv2d(in_channels, num_classes * modalities, kernel_size=1)

    def class_maps(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        mods = self.conv(features).view(b, self.num_classes, self.modalities, h, w)
        return mods.mean(dim=2)  # class-wise pooling over the M modalities

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Eq. 6 on B×C×h×w maps (dropout applied here, in training mode)."""
        if self.training and self.dropout > 0:
            maps = F.dropout(maps, p=self.dropout, training=True)
        flat = maps.flatten(2)
        n = flat.shape[-1]
        kp, km = resolve_k(self.kmax, n), resolve_k(self.kmin, n)
        scores = flat.topk(kp, dim=-1).values.mean(dim=-1)  # Z_c+ / k+
        if km > 0 and self.alpha != 0:
            low = flat.topk(km, dim=-1, largest=False).values.mean(dim=-1)  # Z_c- / k-
            scores = scores + self.alpha * low  # Eq. 6 (not in place, not dropped)
        return scores

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.class_maps(features)
        return self.pool(maps), maps


class MaxPoolHead(ClassMapHead):
    """MAX-Pool (Oquab et al., 2015): ``s_c = max_z M_c(z)``; the gradient reaches the
    arg-max position only."""

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.flatten(2).max(dim=-1).values


class LSEHead(ClassMapHead):
    """Log-sum-exp pooling (Pinheiro & Collobert, 2015; Sun et al., 2016; survey Eq. 4):
    ``s_c = (1/q)·log((1/hw)·Σ_z exp(q·M_c(z)))``; ``q → 0`` gives the mean, ``q → ∞`` the max.

    Computed as ``m + log1p(mean(expm1(q·(M_c - m))))/q`` with ``m = max M_c``: exp never
    sees a positive argument (no overflow at large q or large activations) and
    ``log1p``/``expm1`` keep precision when ``q`` is small (no cancellation towards the mean).
    """

    def __init__(self, in_channels: int, num_classes: int, q: float = 5.0):
        super().__init__(in_channels, num_classes)
        if not q > 0:
            raise ValueError(f"q must be > 0, got {q}")
        self.q = float(q)

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        flat = maps.flatten(2)
        m = flat.max(dim=-1, keepdim=True).values.detach()  # a constant shift: the value is exact for any m
        inner = torch.expm1(self.q * (flat - m)).mean(dim=-1)  # in [-1 + 1/hw, 0]
        return m[..., 0] + torch.log1p(inner) / self.q  # Eq. 4


class PRMHead(ClassMapHead):
    """Peak Response Mapping's peak stimulation (Zhou et al., 2018; survey Eq. 5):
    ``s_c = (1/N_c)·Σ_k M_c(i_k, j_k)`` over the ``N_c`` local maxima (peaks) of ``M_c``.

    A local maximum is a position whose value equals the max of its ``kernel×kernel`` window
    (``max_pool2d`` with stride 1 and padding ``kernel//2``; positions outside the map never
    win). A flat plateau — an 8-connected set of local maxima of equal value — is one peak,
    placed at its first position in raster order (counting each of its positions would weigh
    a plateau by its area in the mean). The peak set is found without gradient, so the
    score's gradient flows only into the peaks (Eq. 5's sampling kernel G is the indicator
    of the peaks divided by N_c).
    """

    def __init__(self, in_channels: int, num_classes: int, kernel: int = 3):
        super().__init__(in_channels, num_classes)
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be an odd integer >= 1, got {kernel}")
        self.kernel = int(kernel)

    def peaks(self, maps: torch.Tensor) -> torch.Tensor:
        """Boolean B×C×h×w mask of the peaks, one per plateau of local maxima (no gradient)."""
        with torch.no_grad():
            local_max = F.max_pool2d(maps, self.kernel, stride=1, padding=self.kernel // 2)
            is_max = maps == local_max
            return is_max & _plateau_first(maps, is_max)

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        g = self.peaks(maps).to(maps.dtype)  # at least one peak: the global max
        return (maps * g).flatten(2).sum(-1) / g.flatten(2).sum(-1)  # Eq. 5


def _plateau_first(maps: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """For positions in ``member``: whether the position is the first (in raster order) of
    its plateau, the 8-connected component of member positions with equal values. Labels
    are the smallest flat index of the component, found by min-propagation between equal
    8-neighbours until nothing changes (as many rounds as the widest plateau is long; one
    for maps without ties)."""
    b, c, h, w = maps.shape
    idx = torch.arange(h * w, device=maps.device, dtype=torch.float32).view(1, 1, h, w).expand(b, c, h, w)
    inf = torch.full_like(idx, math.inf)
    lab = torch.where(member, idx, inf)
    # equal-valued 8-neighbours of every position (B×C×9×h×w), computed once
    vals = F.pad(maps, (1, 1, 1, 1), value=math.nan)  # outside the map: equal to nothing
    shifts = [(dy, dx) for dy in range(3) for dx in range(3) if (dy, dx) != (1, 1)]
    same = torch.stack([vals[..., dy : dy + h, dx : dx + w] == maps for dy, dx in shifts], dim=2) & member[:, :, None]
    while True:
        padded = F.pad(lab, (1, 1, 1, 1), value=math.inf)
        nbr = torch.stack([padded[..., dy : dy + h, dx : dx + w] for dy, dx in shifts], dim=2)
        new = torch.minimum(lab, torch.where(same, nbr, inf[:, :, None]).amin(dim=2))
        if torch.equal(new, lab):
            return lab == idx
        lab = new


class DeepMILHead(PoolingHead):
    """Attention-based deep MIL (Ilse et al., 2018; survey Eqs. 7-9), multi-class.

    Each spatial position ``z`` of the feature map is an instance with feature ``F_z``. Per
    class ``c``, attention ``A_c(z) = softmax_z(ψ_c(F_z))`` (Eq. 8) with
    ``ψ1_c(f) = w_c·tanh(V f)`` or, gated, ``ψ2_c(f) = w_c·(tanh(V f) ⊙ σ(U f))`` (Eq. 9),
    ``V, U ∈ R^{L×K}`` shared by the classes (``L = mid_channels``) and one ``w_c ∈ R^L`` per
    class. The bag embedding of class ``c`` is ``f_c = Σ_z A_c(z) F_z`` (Eq. 7) and its score
    ``s_c = W_c·f_c + b_c`` (a per-class linear layer). ``maps`` are the attention maps A:
    the CAM of class c is its attention map.
    """

    def __init__(self, in_channels: int, num_classes: int, mid_channels: int = 128, gated: bool = False):
        super().__init__(in_channels, num_classes)
        if mid_channels < 1:
            raise ValueError(f"mid_channels must be >= 1, got {mid_channels}")
        self.gated = bool(gated)
        self.mid_channels = int(mid_channels)
        self.V = nn.Conv2d(in_channels, mid_channels, kernel_size=1)
        self.U = nn.Conv2d(in_channels, mid_channels, kernel_size=1) if gated else None
        self.w = nn.Conv2d(mid_channels, num_classes, kernel_size=1)
        self.fc = nn.Linear(in_channels, num_classes)  # W_c, b_c

    def attention_logits(self, features: torch.Tensor) -> torch.Tensor:
        """ψ(F_z) for every class and position: B×C×h×w (Eq. 9)."""
        hidden = torch.tanh(self.V(features))
        if self.U is not None:
            hidden = hidden * torch.sigmoid(self.U(features))  # ψ2: gated attention
        return self.w(hidden)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits_a = self.attention_logits(features)
        attn = torch.softmax(logits_a.flatten(2), dim=-1).view_as(logits_a)  # Eq. 8
        bags = torch.einsum("bchw,bkhw->bck", attn, features)  # Eq. 7: f_c = Σ_z A_c(z) F_z
        scores = (bags * self.fc.weight[None]).sum(-1) + self.fc.bias  # s_c = W_c·f_c + b_c
        return scores, attn
