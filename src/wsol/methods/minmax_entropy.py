"""Min-max entropy with recursive erasing and trust coefficients (min-max-entropy-recursive-erasing.txt
§3, Appendix A.1 Alg. 1, A.2, B.2). Equation numbers below refer to that paper.

Two parts (§3, Fig. 2):

- **localizer M** = backbone + WILDCAT head (B.2: 5 modalities per class, α = 0,
  kmax = kmin = 0.09, dropout 0.75 on GlaS / 0.85 on natural images, applied by
  :class:`~wsol.nn.pooling.WildcatHead` to the map inside the pooling function only, never to
  the maps that make the mask). It gives class maps ``A`` (B×C×h×w) and the auxiliary
  posterior ``p̂_s(Y|X)`` trained by ``H(p, p̂_s)`` (Eq. 7). The mask is
  ``T = Σ_k p̂_s(k|X)·A(k)``, upscaled bilinearly to ``T↑`` and pseudo-thresholded,
  ``R+ = sigmoid(ω·(T̂↑ − σ0))`` (Eq. 9), ``R− = 1 − R+``.
  *Scaling of T before the threshold* (the paper leaves it implicit): ``T̂↑`` is ``T↑``
  min-max normalised to [0, 1], as in the authors' public code
  (github.com/sbelharbi/wsol-min-max-entropy-interpretability, ``deepmil/models.py``,
  ``get_pseudo_binary_mask``: ``(x − x.min()) / (x.max() − x.min())``). That code takes the
  min and max over the whole training batch (and over one image at evaluation, where its
  batch size is 1); here the default is per image in training too (``normalize: image``,
  so a sample's mask does not depend on the others in its batch, and training sees the
  same mask as evaluation); ``normalize: batch`` follows the authors' training code.
- **classifier C** = backbone + its own WILDCAT head, fed ``X+ = X⊙R+`` and ``X− = X⊙R−``.
  ``share_backbone=True`` (default): M and C share the backbone ("M and C share the same
  pre-trained backbone", §4; so does the authors' code), each with its own head.

Loss (Eq. 8), every term returned by name:

    fg_ce          H(p, p̂+) = −log p̂(y|X+)                    Eq. 3, C on X+
    bg_ce          H(q, p̂−) = −(1/c)·Σ_y log p̂(y|X−)           Eq. 5, C on X−
    loc_ce         H(p, p̂_s) on the intact image (t = 0)        Eq. 7, M
    loc_ce_erased  Σ_{t≥1} of M's term on the erased images      Alg. 1 line 12 (0 when u = 0)
    total          fg_ce + bg_ce: only what is still to be backpropagated (see below)
    objective      fg_ce + bg_ce + loc_ce + loc_ce_erased (detached; the value of Eq. 8)
    fg_size        mean of R+,★ (diagnostic)
    m_steps        recursion steps run (passes of M, 1 … u + 1)
    m_passes       M's forward/backward work in full-batch passes: Σ_t |samples forwarded at t| / B

Gradients (A.2, Alg. 1): the upscaled mask enters C as data (``detach_mask=True``): the two
C terms update θC only (with a shared backbone, θC includes the backbone) and M learns from
its own term accumulated over the recursion. ``detach_mask=False`` lets the C terms'
gradients reach M through R+,★ (the erased inputs of the recursion stay data either way);
then every step's graph is kept until the engine's backward, so memory grows with u.

Recursive erasing (A.1, Eqs. 10-12, Alg. 1), training only. With ``R+,★ = 0`` and
``X̃ = X``, for ``t = 0 … u``:

1. forward ``X̃`` through M: ``R+,t`` (Eq. 9), ``H(p, p̂_s)_t`` per sample (Eq. 7);
2. trust ``Ψ(t, i) = exp(−t/σ)·Γ(t, i)`` (Eq. 11) with ``Γ(t, i) = p̂_s(y_i|X̃_i)`` if M predicts
   ``y_i`` and ``H_t ≤ H_0``, else 0 (Eq. 12); a sample whose trust is 0 once stays 0 (A.1)
   and is not forwarded again;
3. ``R+,★ := max(R+,★, Ψ·R+,t)`` (Eq. 10); erase ``X̃ := X ⊙ (1 − R+,★)``;
4. stop after ``t = u`` or when no sample is trusted.

Then ``X+ = X⊙R+,★`` and ``X− = X⊙(1 − R+,★)`` go to C. With ``u = 0`` the method is the
one-pass model of §3: ``R+,★ = R+,0`` (no trust weighting), as in the authors' code, whose
``nbr_times_erase = 0`` branch uses the raw mask.

M's term is backpropagated **step by step** inside :meth:`MinMaxEntropy.training_step`
(``.backward()`` per step, no graph kept across steps), so memory does not grow with u (the
paper's "practical implementation using gradient accumulation"). Which samples a step's
term covers: every sample at ``t = 0`` (Eq. 8's ``H(p, p̂_s)`` on ``X``); at ``t ≥ 1`` the samples
with ``Ψ(t, i) ≠ 0`` (Alg. 1 lines 10-12; the paper's reason for trust: an erased image may
hold nothing discriminative any more, and M must not learn to call it the class). Alg. 1
read literally would also gate ``t = 0`` by ``Ψ(0, i) ≠ 0``, i.e. M would never learn from the
images it misclassifies; the authors' code backpropagates every sample at every step. The
gradient is the sum over steps of each step's per-sample term divided by the batch size
(Alg. 1 lines 12, 21, 23: accumulate, then normalise by n).

**Engine order** this relies on: ``optimizer.zero_grad() → method.training_step(batch) →
terms["total"].backward() → optimizer.step()``. Gradients of M's steps are left in ``.grad``
by ``training_step``; an engine that zeroes the gradients *after* ``training_step`` would
wipe them. ``total`` holds only C's terms (not yet backpropagated); M's terms are returned
detached, for logging.

Differences from the authors' code, for the record: it runs ``nbr_times_erase`` passes of M
(``t < u``) where Eq. 10 / Alg. 1 run ``t = 0 … u`` (u + 1 passes; followed here); it keeps
only the label condition of Eq. 12 sticky (A.1 says a zero trust stays zero; followed here);
it erases cumulatively ``X̃ := X̃ ⊙ (1 − R+,★)`` (Alg. 1 line 13) where here
``X̃ := X ⊙ (1 − R+,★)`` (identical for binary masks; R+,★ is a running max, so this form
never erases a pixel more than R+,★ says); it downscales C's input by 0.5
(``cls_input_scale``, default 1: the paper does not mention it); its configs start erasing
at epoch 1 (``erase_start_epoch``, set in the recipes).

Evaluation: no recursion; one pass of M gives the mask and C classifies ``X+``.
:meth:`MinMaxEntropy.localize` returns the graded ``T̂↑`` (per-image min-max, the CAM
contract); ``R+ ≥ 0.5 ⇔ T̂↑ ≥ σ0``, so :attr:`binary_threshold` = σ0 makes the evaluator's
F1+/F1- those of the paper's mask binarised at 0.5 (B.2). The map is class-agnostic (the
posterior-weighted sum), so ``targets`` does not change it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from wsol.cams import minmax_normalize, to_cam
from wsol.config import BackboneConfig
from wsol.data.sample import Batch
from wsol.errors import ConfigError, WSOLError
from wsol.losses import cross_entropy_to_uniform
from wsol.methods.base import Method, Output, TrainState, register
from wsol.methods.maxmin import build_wildcat
from wsol.methods.wildcat import WildcatParams
from wsol.nn.backbones import build_backbone


class MinMaxEntropyParams(WildcatParams):
    """B.2 settings (GlaS): WILDCAT 5 modalities, kmax = kmin = 0.09, α = 0, dropout 0.75;
    u = 4, σ = 10, σ0 = 0.5, ω = 8."""

    modalities: int = Field(5, ge=1, description="WILDCAT class-related modalities per class (B.2: 5)")
    kmax: int | float = Field(0.09, description="WILDCAT k+ (fraction or count) (B.2: 0.09)")
    kmin: int | float | None = Field(0.09, description="WILDCAT k- (B.2: 0.09; unused while alpha = 0)")
    alpha: float = Field(0.0, description="WILDCAT α, weight of the min term (B.2: 0)")
    dropout: float = Field(
        0.75, ge=0.0, lt=1.0,
        description="dropout on the pooling function's internal map, not on the mask (B.2: 0.75 GlaS, 0.85 CUB/OxF)",
    )
    u: int = Field(4, ge=0, description="maximum recursion depth of the erasing, steps t = 0..u (B.2: 0 or 4)")
    sigma: float = Field(10.0, gt=0, description="σ of Eq. 11, slope of the step trust exp(−t/σ) (B.2: 10)")
    sigma0: float = Field(0.5, ge=0, le=1, description="σ0 of Eq. 9, threshold of the pseudo-binary mask (B.2: 0.5)")
    omega: float = Field(8.0, gt=0, description="ω of Eq. 9, sharpness of the sigmoid (B.2: 8)")
    normalize: Literal["image", "batch"] = Field(
        "image",
        description="min-max scaling of T↑ before Eq. 9 in training: per image, or over the samples "
        "forwarded together (the authors' training code); evaluation is always per image",
    )
    detach_mask: bool = Field(True, description="the mask enters C as data (A.2); False: C's terms also train M")
    share_backbone: bool = Field(True, description="M and C share the backbone, each with its own head (§4)")
    erase_start_epoch: int = Field(
        0, ge=0, description="epochs before this one train with u = 0 (the authors' configs: 1)"
    )
    cls_input_scale: float = Field(
        1.0, gt=0, le=1, description="C sees its input resized by this factor (the authors' code: 0.5; paper: 1)"
    )


# --- the equations, as functions on tensors ----------------------------------------------
def upscaled_map(maps: torch.Tensor, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``T↑`` (B×H×W): ``T = Σ_k p̂_s(k|X)·A(k)`` (§3, before Eq. 9), upsampled bilinearly to ``size``."""
    t = torch.einsum("bc,bchw->bhw", F.softmax(logits, dim=1), maps)
    return F.interpolate(t[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def scale_map(t_up: torch.Tensor, normalize: Literal["image", "batch"] = "image", eps: float = 1e-12) -> torch.Tensor:
    """``T̂↑``: ``T↑`` min-max scaled to [0, 1] per image, or over the whole batch (see module doc)."""
    if normalize == "image":
        return minmax_normalize(t_up, eps)
    lo, hi = t_up.min(), t_up.max()
    span = hi - lo
    return torch.where(span > eps, (t_up - lo) / span.clamp_min(eps), torch.zeros_like(t_up))


def pseudo_binary(t_hat: torch.Tensor, omega: float, sigma0: float) -> torch.Tensor:
    """Eq. 9: ``R+ = 1 / (1 + exp(−ω·(T̂↑ − σ0)))``, ≈ 1 where ``T̂↑ > σ0`` and ≈ 0 elsewhere."""
    return torch.sigmoid(omega * (t_hat - sigma0))


def sample_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 7 per sample, ``H(p_i, p̂_s) = −log p̂_s(y_i|X_i)`` (B-vector, float32, no gradient):
    the quantity the trust of Eq. 12 compares across steps (one computation for every step)."""
    with torch.no_grad():
        return -F.log_softmax(logits.detach().float(), dim=1).gather(1, labels[:, None])[:, 0]


def trust_coefficients(
    t: int, logits: torch.Tensor, labels: torch.Tensor, ce0: torch.Tensor, sigma: float,
    alive: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Ψ(t, ·), Γ(t, ·))``, two B-vectors, from M's logits on the erased images at step ``t``.

    Eq. 12: ``Γ(t, i) = p̂_s(y_i | X̃_i)`` if ``argmax p̂_s(·|X̃_i) = y_i`` and
    ``H(p_i, p̂_s)_t ≤ H(p_i, p̂_s)_0`` (``ce0``: the per-sample Eq. 7 at t = 0), else 0.
    Eq. 11: ``Ψ(t, i) = exp(−t/σ)·Γ(t, i)``. ``alive`` (bool B): samples whose trust was
    never 0 before ``t``; the others get 0 (A.1: once zero, zero for the rest of the
    recursion). No gradient flows through the trust."""
    with torch.no_grad():
        ce = sample_ce(logits, labels)
        ok = (logits.detach().argmax(dim=1) == labels) & (ce <= ce0.to(ce))
        if alive is not None:
            ok = ok & alive
        gamma = torch.where(ok, (-ce).exp(), torch.zeros_like(ce))  # Eq. 12
        psi = math.exp(-t / sigma) * gamma  # Eq. 11
    return psi, gamma


def accumulate_mask(r_star: torch.Tensor, psi: torch.Tensor, r_t: torch.Tensor) -> torch.Tensor:
    """Eq. 10: ``R+,★ := max(R+,★, Ψ(t, i)·R+,t)`` (B×H×W masks, ``psi`` a B-vector)."""
    return torch.maximum(r_star, psi.to(r_t)[:, None, None] * r_t)


def minmax_entropy_terms(
    labels: torch.Tensor, pos_logits: torch.Tensor, neg_logits: torch.Tensor
) -> dict[str, torch.Tensor]:
    """C's terms of Eq. 8: ``fg_ce = H(p, p̂+)`` (Eq. 3) on X+, ``bg_ce = H(q, p̂−)`` (Eq. 5) on X−,
    each averaged over the batch."""
    return {
        "fg_ce": F.cross_entropy(pos_logits, labels),  # Eq. 3: −log p̂(y_i|X+)
        "bg_ce": cross_entropy_to_uniform(neg_logits),  # Eq. 5: −(1/c) Σ_y log p̂(y|X−)
    }


@dataclass
class Recursion:
    """What the recursive erasing of one batch produced. ``loc_ce`` / ``loc_ce_erased`` are
    detached (already backpropagated); ``r_star`` keeps its graph only with
    ``detach_mask=False``. ``trace`` (one dict per step: ``idx`` forwarded samples, ``inputs``
    the images forwarded, ``weights`` their factor in M's term, ``psi``), when asked for."""

    r_star: torch.Tensor
    loc_ce: torch.Tensor
    loc_ce_erased: torch.Tensor
    passes: float
    steps: int
    trace: list[dict[str, torch.Tensor]] | None = field(default=None)


@register
class MinMaxEntropy(Method):
    name = "minmax_entropy"
    Params = MinMaxEntropyParams
    backbone_prefixes = ("backbone.", "cls_backbone.")

    def __init__(self, params: MinMaxEntropyParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        if num_classes < 2:
            raise ConfigError(
                f"minmax_entropy: the dataset has {num_classes} class(es); the entropy terms need >= 2"
            )
        self.backbone = build_backbone(backbone)
        self.head = build_wildcat(params, self.backbone.out_channels, num_classes)
        self.cls_backbone = None if params.share_backbone else build_backbone(backbone)
        self.cls_head = build_wildcat(params, self.backbone.out_channels, num_classes)
        self.depth = 0
        self.on_epoch_start(0)

    @property
    def binary_threshold(self) -> float:
        """R+ ≥ 0.5 ⇔ T̂↑ ≥ σ0: F1± of the graded map at σ0 are those of the paper's mask
        binarised at 0.5 (B.2)."""
        return float(self.params.sigma0)

    # --- the two networks --------------------------------------------------------------
    def localizer(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M: ``(logits of p̂_s B×C, class maps A B×C×h×w)``."""
        return self.head(self.backbone(images))

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """C's logits B×C on (masked) images."""
        s = self.params.cls_input_scale
        if s != 1.0:
            images = F.interpolate(images, scale_factor=s, mode="bilinear", align_corners=False)
        trunk: nn.Module = self.backbone if self.cls_backbone is None else self.cls_backbone
        logits, _ = self.cls_head(trunk(images))
        return logits

    def mask_of(self, logits: torch.Tensor, maps: torch.Tensor, size: tuple[int, int],
                normalize: Literal["image", "batch"] = "image") -> tuple[torch.Tensor, torch.Tensor]:
        """``(T̂↑, R+)`` from M's outputs (Eq. 9 and the scaling before it)."""
        t_hat = scale_map(upscaled_map(maps, logits, size), normalize)
        return t_hat, pseudo_binary(t_hat, self.params.omega, self.params.sigma0)

    def masks(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One pass of M (evaluation): ``loc_logits``, ``maps``, graded ``fg`` (``T̂↑``, per
        image) and the pseudo-binary ``mask`` (R+, Eq. 9), both B×H×W."""
        loc_logits, maps = self.localizer(images)
        fg, mask = self.mask_of(loc_logits, maps, (images.shape[-2], images.shape[-1]), "image")
        return {"loc_logits": loc_logits, "maps": maps, "fg": fg, "mask": mask}

    # --- Method contract ------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> Output:
        m = self.masks(images)
        logits = self.classify(images * m["mask"][:, None])  # evaluation: C on X+ = X⊙R+
        extras = {"fg": m["fg"], "mask": m["mask"], "loc_logits": m["loc_logits"]}
        return Output(logits=logits, maps=m["maps"], extras=extras)

    def on_epoch_start(self, epoch: int) -> None:
        """The recursion depth of this epoch: ``u`` from ``erase_start_epoch`` on, 0 before."""
        self.depth = self.params.u if epoch >= self.params.erase_start_epoch else 0

    def erase_recursively(self, images: torch.Tensor, labels: torch.Tensor, depth: int | None = None,
                          trace: bool = False) -> Recursion:
        """Alg. 1 lines 4-16 for a batch: R+,★ after steps ``t = 0..depth`` (default: this
        epoch's depth), with M's term backpropagated at each step (gradients accumulate in
        ``.grad``; see the module doc for which samples each step covers)."""
        p = self.params
        u = self.depth if depth is None else depth
        b, size = images.shape[0], (images.shape[-2], images.shape[-1])
        keep_graph = not p.detach_mask
        r_star = images.new_zeros((b, *size))
        alive = torch.ones(b, dtype=torch.bool, device=images.device)
        idx = torch.arange(b, device=images.device)
        ce0 = images.new_zeros(b)
        loc_ce = images.new_zeros(())
        loc_ce_erased = images.new_zeros(())
        passes, steps = 0.0, 0
        records: list[dict[str, torch.Tensor]] | None = [] if trace else None
        for t in range(u + 1):  # at most u + 1 passes of M (not a pixel loop)
            if t == 0:
                x = images
            else:  # X̃ = X ⊙ (1 − R+,★) for the samples still trusted
                x = images.index_select(0, idx) * (1.0 - r_star.detach().index_select(0, idx))[:, None]
            logits, maps = self.localizer(x)
            y = labels.index_select(0, idx)
            ce = F.cross_entropy(logits, y, reduction="none")  # Eq. 7 per sample, H(p_i, p̂_s)_t
            if t == 0:
                ce0 = sample_ce(logits, y)  # H(p_i, p̂_s)_0, the reference of Eq. 12
            if u == 0:  # the one-pass model of §3: R+,★ = R+,0
                psi = torch.ones_like(ce0)
            else:
                psi, _ = trust_coefficients(t, logits, y, ce0.index_select(0, idx), p.sigma)  # Eqs. 11-12
            weights = torch.ones_like(psi) if t == 0 else (psi > 0).to(psi)  # Alg. 1 lines 10-12
            loss_t = (ce * weights).sum() / b
            if not torch.isfinite(loss_t.detach()):
                raise WSOLError(
                    f"minmax_entropy: the localizer's loss became {float(loss_t.detach())} at recursion step {t}; "
                    "lower optim.lr or check the data"
                )
            if loss_t.requires_grad:
                loss_t.backward(retain_graph=keep_graph)  # per-step gradient accumulation (Alg. 1 line 12)
            if t == 0:
                loc_ce = loss_t.detach()
            else:
                loc_ce_erased = loc_ce_erased + loss_t.detach()
            if keep_graph:
                _, r_t = self.mask_of(logits, maps, size, p.normalize)
            else:
                with torch.no_grad():
                    _, r_t = self.mask_of(logits.detach(), maps.detach(), size, p.normalize)
            r_full = r_star.new_zeros((b, *size)).index_copy(0, idx, r_t.to(r_star))
            psi_full = r_star.new_zeros(b).index_copy(0, idx, psi.to(r_star))  # Ψ = 0 for the stopped samples
            r_star = accumulate_mask(r_star, psi_full, r_full)  # Eq. 10
            if records is not None:
                records.append({"idx": idx, "inputs": x.detach(), "weights": weights, "psi": psi})
            passes += len(idx) / b
            steps += 1
            del logits, maps, ce, loss_t
            alive = alive.index_put((idx,), psi > 0)
            idx = alive.nonzero().flatten()
            if len(idx) == 0:
                break
        return Recursion(r_star, loc_ce, loc_ce_erased, passes, steps, records)

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        """Alg. 1 for one batch. Leaves M's gradients in ``.grad`` and returns ``total`` = C's
        terms only; relies on the engine order ``zero_grad → training_step → total.backward →
        step`` (module doc)."""
        images, labels = batch.images, batch.labels
        rec = self.erase_recursively(images, labels)
        r_star = rec.r_star if not self.params.detach_mask else rec.r_star.detach()
        pos_logits = self.classify(images * r_star[:, None])  # Alg. 1 line 17: X+ = X⊙R+,★
        neg_logits = self.classify(images * (1.0 - r_star)[:, None])  # X− = X⊙(1 − R+,★)
        terms = minmax_entropy_terms(labels, pos_logits, neg_logits)
        terms["total"] = terms["fg_ce"] + terms["bg_ce"]
        terms["loc_ce"] = rec.loc_ce
        terms["loc_ce_erased"] = rec.loc_ce_erased
        terms["objective"] = terms["total"].detach() + rec.loc_ce + rec.loc_ce_erased  # Eq. 8 (+ recursion)
        terms["fg_size"] = r_star.detach().mean()
        terms["m_steps"] = images.new_tensor(float(rec.steps))
        terms["m_passes"] = images.new_tensor(rec.passes)
        return terms

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Graded ``T̂↑`` (before Eq. 9) as a CAM; ``targets`` is not used (module doc)."""
        return to_cam(self.masks(images)["fg"])

    def localize_binary(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The mask R+ of Eq. 9 binarised at 0.5 (B.2), as a 0/1 float B×H×W."""
        return (self.masks(images)["mask"] >= 0.5).float()
