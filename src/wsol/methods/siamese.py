"""Siamese embedding network f of the weight map's method II, stage 1 (weight-map-wsol.txt §3
"Methods II" and "Architecture"): a ResNet-18 whose global-average-pooled 512-d feature is
projected linearly to a 200-d embedding, trained with the triplet loss of Eq. 2 (margin 1).

Triplet mining (the paper samples anchor / positive / negative images; the engine hands us
ordinary batches, so triplets are formed inside each batch from its labels): every image
of the batch that has another image of its class *and* an image of another class in the
batch is an anchor; its positive is drawn uniformly among the other images of its class,
its negative uniformly among the images of the other classes (torch's global RNG, so the
engine's seed makes it repeatable). Eq. 2 is averaged over these anchors. A batch without
any such anchor (fewer than two classes, or no class with two images) gives a zero
triplet term that still carries a graph (``0 · Σ embedding``), so the step runs and
only the probe learns. Batches must therefore hold several images per class: with many
classes use a large batch (the recipes do) — a class-balanced P×K sampler would be the
exact fix; the engine has none yet.

The Method contract needs logits: a **linear probe** ``Linear(200, C)`` is trained with
cross-entropy on the *detached* embedding (it never shapes the embedding; Eq. 2 alone
does), so ``forward`` gives class logits and the run's accuracy (and ``best_cls``) measure
how linearly separable the embedding is. ``localize`` is a baseline CAM: since GAP, the
projection and the probe are all linear, the logit of class c is the spatial mean of
(P·W·F)_c (P the probe, W the projection, F the last feature map), i.e. the class
activation map of the composite linear head, upsampled and min-max normalised. The weight
map of method II (:mod:`wsol.methods.weightmap_siamese`) is the localisation this stage
exists for.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from wsol.cams import to_cam
from wsol.config import BackboneConfig
from wsol.data.sample import Batch
from wsol.methods.base import Method, MethodParams, Output, TrainState, register
from wsol.nn.backbones import build_backbone


def mine_triplets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-batch triplets ``(anchor, positive, negative)`` as index tensors: every image with a
    same-class partner and an other-class image is an anchor; positive and negative drawn
    uniformly among the valid ones (see the module docstring). Empty tensors when none."""
    labels = labels.view(-1)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_ok, neg_ok = same & ~eye, ~same
    anchors = (pos_ok.any(1) & neg_ok.any(1)).nonzero().view(-1)
    if anchors.numel() == 0:
        return anchors, anchors, anchors
    pos = torch.multinomial(pos_ok[anchors].float(), 1).view(-1)
    neg = torch.multinomial(neg_ok[anchors].float(), 1).view(-1)
    return anchors, pos, neg


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 1.0) -> torch.Tensor:
    """Eq. 2 (also Eqs. 3-4), weight-map-wsol: mean over rows of
    max{‖a − p‖ − ‖a − n‖ + margin, 0}, Euclidean (not squared) distances."""
    d_pos = torch.linalg.vector_norm(anchor - positive, dim=1)
    d_neg = torch.linalg.vector_norm(anchor - negative, dim=1)
    return F.relu(d_pos - d_neg + margin).mean()


def batch_triplet_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> tuple[torch.Tensor, int]:
    """Eq. 2 on the triplets mined in a batch of embeddings B×D, and their number; with no
    triplet, a zero that keeps the graph (``0 · Σ emb``)."""
    a, p, n = mine_triplets(labels)
    if a.numel() == 0:
        return emb.sum() * 0.0, 0
    return triplet_loss(emb[a], emb[p], emb[n], margin), int(a.numel())


class SiameseParams(MethodParams):
    embed_dim: int = Field(200, ge=1, description="embedding size: 512 → 200 linear projection (§3 'Architecture')")
    margin: float = Field(1.0, gt=0, description="triplet margin, the '+1' of Eq. 2")


@register
class Siamese(Method):
    """Siamese (triplet) embedding, stage 1 of weight-map method II: ResNet → GAP → linear
    200-d, Eq. 2 on in-batch triplets; a linear probe on the detached embedding gives logits."""

    name = "siamese"
    Params = SiameseParams

    def __init__(self, params: SiameseParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        self.backbone = build_backbone(backbone)
        self.projection = nn.Linear(self.backbone.out_channels, params.embed_dim)  # 512 → 200
        self.probe = nn.Linear(params.embed_dim, num_classes)  # CE on the detached embedding

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """f(I): the B×embed_dim embedding of Eqs. 2-4."""
        return self.projection(self.backbone(images).mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> Output:
        feats = self.backbone(images)
        emb = self.projection(feats.mean(dim=(2, 3)))
        # CAM of the composite linear head: logits = GAP((P·W) F) + const
        head = self.probe.weight @ self.projection.weight  # C×K
        maps = torch.einsum("ck,bkhw->bchw", head, feats)
        return Output(logits=self.probe(emb), maps=maps, extras={"embedding": emb})

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        emb = self.embed(batch.images)
        trip, n = batch_triplet_loss(emb, batch.labels, self.params.margin)  # Eq. 2
        probe_ce = F.cross_entropy(self.probe(emb.detach()), batch.labels)  # probe only
        frac = torch.tensor(n / max(len(batch), 1), device=emb.device)
        return {"triplet": trip, "probe_ce": probe_ce, "anchor_frac": frac, "total": trip + probe_ce}

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        out = self(images)
        t = self.select_targets(out.logits, targets)
        assert out.maps is not None
        maps = out.maps[torch.arange(len(t), device=t.device), t]
        return to_cam(maps, tuple(images.shape[-2:]))
