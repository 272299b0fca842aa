"""Weight map, method II (Siamese; weight-map-wsol.txt §3 "Methods II", Eqs. 2-4, Fig. 3):
stage 2 — the generator g of :mod:`wsol.methods.weightmap` trained against a frozen
Siamese embedding f (stage 1: :mod:`wsol.methods.siamese`, Eq. 2).

With J^f_x = g(I_x) ⊙ I_x (foreground) and J^b_x = (1 − g(I_x)) ⊙ I_x (background):

- L_inner (Eq. 3): max{‖f(I_a) − f(J^f_a)‖ − ‖f(I_a) − f(J^b_a)‖ + 1, 0} — the whole image
  close to its foreground, far from its background. Every image of the batch is an anchor.
- L_outer (Eq. 4): max{‖f(J^f_a) − f(J^f_p)‖ − ‖f(J^f_a) − f(J^f_n)‖ + 1, 0} — foregrounds of
  the same class close, of different classes far. (a, p, n) are mined in the batch as in
  stage 1 (:func:`wsol.methods.siamese.mine_triplets`: each anchor with a same-class
  partner and an other-class image gets a random positive and negative); gradients reach
  g through all three foregrounds. A batch without such a triplet gives a zero L_outer
  that keeps the graph.
- λ·R(M_a): the mean of M, as in method I (λ = 1).

The loss is the sum of the enabled terms; ``use_inner`` / ``use_outer`` / ``use_reg`` switch
each off (Table 6 ablations; at least one triplet term must stay on). f is frozen (eval
mode, no weight gradients, BN statistics unchanged); f(I_a) is computed without a graph.
``params.siamese: {run, checkpoint}`` names the stage-1 ``siamese`` run (same classes);
``siamese: null`` builds a fresh untrained one (tests only). ``forward`` gives the Siamese
run's linear-probe logits on I; ``localize`` the min-max normalised M; early stopping by
the label-free score S (``best_s``), as in method I.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from pydantic import Field, model_validator

from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.methods.base import Method, MethodParams, TrainState, register
from wsol.methods.siamese import Siamese, mine_triplets, triplet_loss
from wsol.methods.weightmap import (
    SMALL_DECODER_CHANNELS,
    StageOneRun,
    WeightMapBase,
    fresh_stage_one,
    load_stage_one,
    size_regularizer,
)


class WeightMapSiameseParams(MethodParams):
    siamese: StageOneRun | None = Field(
        description="stage-1 siamese run {run, checkpoint}; null: a fresh untrained siamese (tests only)")
    reg_weight: float = Field(1.0, ge=0, description="λ of the R(M_a) term")
    margin: float = Field(1.0, gt=0, description="triplet margin, the '+1' of Eqs. 3-4")
    use_inner: bool = Field(True, description="L_inner, Eq. 3 (false: Table 6 ablation)")
    use_outer: bool = Field(True, description="L_outer, Eq. 4 (false: Table 6 ablation)")
    use_reg: bool = Field(True, description="λ·R(M_a) (false: Table 6 ablation)")
    decoder_channels: list[int] | None = Field(
        None, description="widths of g's five decoder blocks, deepest first (null: 256, 128, 64, 32, 16)")

    @model_validator(mode="after")
    def _one_triplet_term(self) -> WeightMapSiameseParams:
        if not (self.use_inner or self.use_outer):
            raise ValueError("use_inner and use_outer are both false; keep at least one triplet term (Eqs. 3-4)")
        return self


@register
class WeightMapSiamese(WeightMapBase):
    """Weight map, method II (weight-map-wsol Eqs. 3-4): g trained against a frozen Siamese
    embedding with an inner (image vs foreground/background) and an outer (foregrounds
    across classes) triplet loss, plus λ·mean(g(I))."""

    name = "weightmap_siamese"
    Params = WeightMapSiameseParams
    contract_params: ClassVar[dict[str, Any]] = {"siamese": None, "decoder_channels": SMALL_DECODER_CHANNELS}

    def build_f(self, num_classes: int) -> Method:
        ref = self.params.siamese
        f = fresh_stage_one("siamese", num_classes) if ref is None else load_stage_one(ref, "siamese", num_classes)
        if not callable(getattr(f, "embed", None)):
            raise ConfigError(
                f"model.method.params.siamese: run {ref.run if ref else ''} is a {getattr(f, 'name', '?')!r} run; "
                "method II needs a `siamese` run (stage 1: configs/recipes/weightmap-stage1-siamese.yaml)"
            )
        return f

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        p = self.params
        embed = cast(Siamese, self.f).embed
        images, n = batch.images, len(batch)
        m = self.generator(images)  # M = g(I)
        fg = images * m[:, None]  # J^f
        parts = [fg, images - fg] if p.use_inner else [fg]  # J^b = (1 − M) ⊙ I
        emb = embed(torch.cat(parts))  # f frozen in eval mode: one pass for both
        e_fg = emb[:n]
        terms: dict[str, torch.Tensor] = {}
        total = emb.new_zeros(())
        if p.use_inner:
            with torch.no_grad():
                e_img = embed(images)  # f(I_a)
            terms["inner"] = triplet_loss(e_img, e_fg, emb[n:], p.margin)  # Eq. 3
            total = total + terms["inner"]
        if p.use_outer:
            a, pos, neg = mine_triplets(batch.labels)
            # Eq. 4; no triplet in the batch: a zero that keeps the graph
            outer = triplet_loss(e_fg[a], e_fg[pos], e_fg[neg], p.margin) if a.numel() else e_fg.sum() * 0.0
            terms["outer"] = outer
            total = total + outer
        if p.use_reg:
            terms["reg"] = size_regularizer(m)  # λ·R(M_a)
            total = total + p.reg_weight * terms["reg"]
        terms["total"] = total
        return terms
