"""Learning a weight map (Shaharabany & Wolf, weight-map-wsol.txt §3): the generator g and
method I (classifier based). There is no public code for the paper; this follows its text.

**Generator g** (§3 "Architecture"): a ResNet encoder (``model.backbone``: resnet18/34/50;
§3 uses ImageNet weights, and output stride 32, i.e. ``cam_friendly: false``) and the
decoder of :func:`wsol.nn.decoders.weight_map_decoder` (five upsampling blocks, skip
connections from the encoder stage of the same resolution, BN after each block's last
convolution, ReLU in the first four blocks, a sigmoid at the end), so M = g(I) ∈ [0, 1]^{H×W}.

**Method I** (Eq. 1): stage 1 trains a classifier f (any classifier run; the paper's f is a
ResNet-18 with one fully-connected layer on the pooled features, i.e. our ``cam``, see
``configs/recipes/weightmap-stage1-cam.yaml``). Stage 2 — this method — freezes f (eval
mode at all times, no gradient to its weights, BatchNorm statistics unchanged; gradients
flow *through* f to the weighted image) and trains g to minimise

    D(f(I), f(I ⊙ g(I))) + λ·R(g(I))                                           (Eq. 1)

- D: the cross-entropy between f's softmax on I (the target, detached) and f's softmax on
  the weighted image I ⊙ M. We report it minus the target's entropy, i.e. as
  KL(p_I ‖ p_{I⊙M}): the entropy does not depend on g, so the gradients are exactly the
  paper's, and D = 0 at the trivial solution g ≡ 1 (the paper's CE value is logged too,
  as ``ce``, detached).
- R: the L1 norm of M, taken per pixel (the mean of M, M ≥ 0): with λ = 1 (§3: "λ is set
  to one") an L1 *sum* over 224² pixels would outweigh D by four orders of magnitude.
  ``reg_weight: 0`` is the "no regularisation" ablation of Fig. 8.

``params.classifier: {run: RUN, checkpoint: best_cls}`` names the stage-1 run (read with
:func:`wsol.runs.load_run`; it must have been trained on the same classes).
``classifier: null`` builds a *fresh, untrained* ResNet-18 ``cam`` classifier instead — for
tests and smoke runs only (a warning is logged). f's weights are part of this method's
state dict, so a checkpoint holds the exact f it was trained against; building the method
(also when loading its run) still reads the classifier run, which must stay where the
config says (give an absolute path).

``forward`` returns f's logits on I (the classifier is not retrained: top-1 cls and
top-1 loc use f). ``localize`` returns M (class-agnostic, ``targets`` ignored) min-max
normalised (CAM contract). The paper's box rule (Eq. 5: τ = max(M)/10, largest contour)
and its score S (Eq. 6) are scale-invariant, so on the normalised map they equal the
paper's on the raw sigmoid map whenever min(M) = 0 and differ slightly otherwise (the box
rule follows [6, 7, 29]; [7]'s wsolevaluation also min-max normalises maps before
thresholding). :meth:`WeightMapBase.weight_map` gives the raw M.

**Early stopping by S** (Eqs. 5-6): the selection criterion ``best_s`` keeps the checkpoint
of the epoch with the highest mean S on the validation images — no pixel or box label is
used. `wsol.metrics.weight_map_scores` computes S per image from CAMs (reusing
:func:`wsol.metrics.weight_map_box`); the criterion itself lives in
:mod:`wsol.engine.selection`.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from wsol.cams import to_cam
from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.methods.base import Method, MethodParams, Output, TrainState, build_method, register
from wsol.metrics import weight_map_box, weight_map_scores  # noqa: F401  (re-exported)
from wsol.nn.backbones import build_backbone
from wsol.nn.decoders import weight_map_decoder

log = logging.getLogger(__name__)

#: small decoder widths for the contract test (the defaults are F-CAM's 256..16)
SMALL_DECODER_CHANNELS = [16, 16, 8, 8, 8]


# --- the generator g -------------------------------------------------------------------
class WeightMapGenerator(nn.Module):
    """g: ResNet encoder + weight-map decoder (§3 "Architecture"); ``forward(images)`` gives
    M = g(I), B×H×W in [0, 1] at the images' resolution."""

    def __init__(self, backbone: BackboneConfig, channels: Sequence[int] | None = None):
        super().__init__()
        self.encoder = build_backbone(backbone)
        self.decoder = weight_map_decoder(self.encoder, channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder.forward_stages(images), images.shape[-2:])[:, 0]


# --- the loss terms of Eq. 1 -----------------------------------------------------------
def discrepancy(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """D of Eq. 1: CE(softmax(target), softmax(logits)) − H(softmax(target)) =
    KL(p_target ‖ p), batch mean. ``target_logits`` is treated as a constant."""
    log_p = F.log_softmax(target_logits.detach(), dim=1)
    return F.kl_div(F.log_softmax(logits, dim=1), log_p, reduction="batchmean", log_target=True)


def soft_cross_entropy(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The paper's D value: −Σ_c p_c log q_c, batch mean (p = softmax(target), q = softmax(logits))."""
    p = F.softmax(target_logits.detach(), dim=1)
    return -(p * F.log_softmax(logits, dim=1)).sum(1).mean()


def size_regularizer(m: torch.Tensor) -> torch.Tensor:
    """R of Eq. 1: the L1 norm of M ≥ 0 per pixel (mean over pixels and images)."""
    return m.mean()


# --- the label-free score S (Eqs. 5-6) -------------------------------------------------
# --- stage-1 runs ----------------------------------------------------------------------
class StageOneRun(BaseModel):
    """A trained stage-1 run: its folder and checkpoint (``best_cls``, ``best_loc``, ``last``)."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="folder of the stage-1 run (absolute path recommended)")
    checkpoint: str = Field("best_cls", description="checkpoint of that run")


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def freeze(module: ModuleT) -> ModuleT:
    """No gradient to ``module``'s weights, eval mode (BN statistics frozen)."""
    module.requires_grad_(False)
    module.eval()
    return module


def load_stage_one(ref: StageOneRun, field: str, num_classes: int) -> Method:
    """The frozen method of a stage-1 run (on CPU; the engine moves it with the rest)."""
    from wsol.runs import load_run

    run = load_run(ref.run, ref.checkpoint, device="cpu")
    if len(run.class_names) != num_classes:
        raise ConfigError(
            f"model.method.params.{field}: run {ref.run} was trained on {len(run.class_names)} classes, this "
            f"dataset has {num_classes}; train stage 2 on the dataset of its stage-1 run"
        )
    return freeze(run.method)


# --- shared body of methods I and II ---------------------------------------------------
class WeightMapBase(Method):
    """A generator g trained against a frozen stage-1 network ``f``; ``localize`` is M."""

    backbone_prefixes: ClassVar[tuple[str, ...]] = ("generator.encoder.",)
    selection_criteria: ClassVar[tuple[str, ...]] = ("best_s",)

    def __init__(self, params: Any, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        self.generator = WeightMapGenerator(backbone, params.decoder_channels)
        self.f = self.build_f(num_classes)

    @abstractmethod
    def build_f(self, num_classes: int) -> Method:
        """The frozen stage-1 network."""

    def train(self, mode: bool = True) -> WeightMapBase:
        super().train(mode)
        self.f.eval()  # f stays frozen: its BN statistics never move
        return self

    def weight_map(self, images: torch.Tensor) -> torch.Tensor:
        """M = g(I), B×H×W in [0, 1] (the raw sigmoid map)."""
        return self.generator(images)

    def forward(self, images: torch.Tensor) -> Output:
        return Output(logits=self.logits_of(self.f(images)))

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return to_cam(self.generator(images))  # class-agnostic: targets ignored


def fresh_stage_one(name: str, num_classes: int) -> Method:
    """An untrained ResNet-18 stage-1 method (``classifier: null`` / ``siamese: null``)."""
    log.warning("weight map: no stage-1 run given; using a fresh, untrained %s network as f (tests only)", name)
    return freeze(build_method(MethodConfig(name=name), BackboneConfig(name="resnet18"), num_classes))


# --- method I --------------------------------------------------------------------------
class WeightMapParams(MethodParams):
    classifier: StageOneRun | None = Field(
        description="stage-1 classifier run {run, checkpoint}; null: a fresh untrained cam (tests only)")
    reg_weight: float = Field(1.0, ge=0, description="λ of Eq. 1 (0: the no-regularisation ablation, Fig. 8)")
    decoder_channels: list[int] | None = Field(
        None, description="widths of g's five decoder blocks, deepest first (null: 256, 128, 64, 32, 16)")


@register
class WeightMap(WeightMapBase):
    """Weight map, method I (weight-map-wsol Eq. 1): g(I) ∈ [0,1] trained so that a frozen
    classifier f gives the same prediction on I ⊙ g(I) as on I, plus λ·mean(g(I))."""

    name = "weightmap"
    Params = WeightMapParams
    contract_params: ClassVar[dict[str, Any]] = {"classifier": None, "decoder_channels": SMALL_DECODER_CHANNELS}

    def build_f(self, num_classes: int) -> Method:
        ref = self.params.classifier
        if ref is None:
            return fresh_stage_one("cam", num_classes)
        return load_stage_one(ref, "classifier", num_classes)

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        images = batch.images
        with torch.no_grad():
            target = self.logits_of(self.f(images))  # f(I), the target
        m = self.generator(images)  # M = g(I)
        weighted = self.logits_of(self.f(images * m[:, None]))  # f(I ⊙ g(I))
        d = discrepancy(target, weighted)  # Eq. 1, D (KL = CE − H(target))
        r = size_regularizer(m)  # Eq. 1, R
        ce = soft_cross_entropy(target, weighted).detach()  # the paper's CE value, logged
        return {"d": d, "reg": r, "ce": ce, "total": d + self.params.reg_weight * r}
