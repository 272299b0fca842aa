"""F-CAM: full-resolution CAMs via guided parametric upscaling (Belharbi et al., f-cam.txt).

Two stages (§4.1 "Baseline models"): a WSOL classifier g is trained first (any method of
this library that has a :class:`~wsol.nn.backbones.FeatureBackbone` ``backbone``: ``cam``,
``wildcat``, ...); then it is frozen and a U-Net decoder f on its encoder is trained with the
pixel alignment loss of Eq. 3. ``forward`` gives the classifier's logits (classification stays
the frozen classifier's); ``localize`` gives the decoder's foreground map S² at the image
resolution (class-agnostic, so ``targets`` is not used), min-max normalised per image.

**Stage 1** — ``params.classifier``:

- ``{run: PATH, checkpoint: best_loc|best_cls|last}``: a trained run folder, loaded with
  :func:`wsol.runs.load_run` (no dataset access). F-CAM's code takes the classifier of the
  B-LOC checkpoint (``best_loc``, the default here). The run must have the same classes and
  the same backbone name / ``cam_friendly`` as this run's ``model.backbone``. This run's
  checkpoints hold the classifier's weights too, but building the method (``wsol evaluate``,
  ``wsol cam`` on an F-CAM run) reads the classifier run's ``config.yaml`` and checkpoint,
  so keep that folder.
- ``null``: a fresh classifier of ``classifier_method`` (default ``cam``, with
  ``classifier_params``) on this run's ``model.backbone`` and classes. That is what the
  contract test builds (``contract_params``), and what a NEGEV run trained from scratch uses.

``freeze_classifier`` (default true): the classifier's parameters get ``requires_grad=False``
and the classifier stays in eval mode whatever ``train()`` is called with, so neither its
weights nor its BatchNorm statistics move; its encoder then runs under ``no_grad``.

**CAM source** (``cam_source``): ``classifier`` — the classifier's own CAM of the true class
(its ``localize``; one shared encoder pass for the pooling methods), or the name of a
top-down extractor (``gradcam``, ``gradcamplusplus``, ``smoothgradcamplusplus``,
``xgradcam``, ``layercam``, ``scorecam``, ...; ``cam_layer`` default: the classifier's
backbone feature layer; ``cam_options``: the extractor's options), computed on the classifier
in eval mode at the image size, min-max normalised. ``seed_checkpoint``: take the CAM from
another checkpoint of the classifier run (loaded once, frozen) — NEGEV's code builds its seeds
from the ``best_loc`` classifier while training the ``best_cls`` one.

**Loss** (Eq. 3), one named term each (``total`` is their sum):

    cls_ce   −log g(X)[y]                         Eq. 3, first term (only when the classifier trains)
    seed_ce  α·Σ_{p∈Ω'} H(Y_p, S_p) / |Ω'|          Eq. 3 with the seeds of Eqs. 1-2 (mean, as the code)
    crf      λ·R(S, X)                             Eq. 3 / Eq. B.1 (wsol.losses.crf)
    size_bg  w·½·ψ_t(−Σ S¹)   } Eq. 3 constraints Σ S^r ≥ 0 via the extended log-barrier ψ_t,
    size_fg  w·½·ψ_t(−Σ S²)   } averaged over the batch
    fg_size  mean S² (a diagnostic, detached, not in total)

Seeds: :mod:`wsol.methods._seeds` (Otsu C+, n−% C−, one pixel each per step by default,
re-drawn at every step). CRF: λ = 2e-9, σ_rgb = 15, σ_xy = 100 (§4.1, Tang et al.), with
``crf_method: lattice`` by default — the permutohedral operator F-CAM ran, on which λ = 2e-9
was tuned (see the normalisation note of :mod:`wsol.losses.crf`: ``fast``/``exact`` need
λ ≈ 1.2e-9 for the same strength). Size: ψ_t of :mod:`wsol.losses.barrier`, t0 = 1, ×1.01 per
epoch, t_max = 10 (§4.1), set by :meth:`on_epoch_start`; the sizes are pixel counts as in
F-CAM's code (``MaxSizePositiveFcams``: ``ELB(−Σ_p S^r_p)`` averaged over the batch, the two
maps averaged, × ``max_sizepos_fc_lambda`` = 0.1 in the authors' command), so the barrier
stays in its log branch, −(1/t)·log Σ S^r (``normalize_size: true`` uses fractions of the
image instead, the convention of ``maxmin``; the gradient is the same in the log branch).
The paper writes no weight on the size terms; ``size_weight`` = 0.1 is the authors' command.

Ablations of Table D.1: SR only = ``crf_weight: 0, size_constraint: false``; SR+ASC =
``crf_weight: 0``; SR+CRF = ``size_constraint: false``; SR+CRF+ASC = the defaults.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar, Literal, TypeVar, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from wsol.cams import to_cam
from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import Batch
from wsol.errors import CheckpointError, ConfigError, WSOLError
from wsol.losses import BarrierSchedule, crf_loss, region_size, size_lower_barrier
from wsol.methods._seeds import SeedParams, partial_cross_entropy, sample_seeds
from wsol.methods.base import Method, MethodParams, Output, TrainState, build_method, register
from wsol.methods.pooled import PooledMethod
from wsol.nn.backbones import FeatureBackbone
from wsol.nn.decoders import fcam_decoder

TWO_STAGE = ("fcam", "negev")


class ClassifierRef(BaseModel):
    """A trained classifier run folder and the checkpoint to take from it."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(description="run folder of a trained classification method (cam, wildcat, ...)")
    checkpoint: str | None = Field(None, description="best_loc, best_cls or last (default: the method's)")


class FCAMParams(MethodParams):
    classifier: ClassifierRef | None = Field(
        None, description="stage-1 classifier run {run, checkpoint}; null: a fresh classifier_method")
    classifier_method: str = Field("cam", description="method of the fresh classifier when classifier is null")
    classifier_params: dict[str, Any] = Field(default_factory=dict, description="its params (classifier: null)")
    freeze_classifier: bool = Field(True, description="classifier frozen (weights and BN statistics), §4.1")
    cam_source: str = Field("classifier", description="'classifier' (its own CAM) or an extractor name")
    cam_layer: str | None = Field(None, description="extractor target layer (default: the backbone's feature layer)")
    cam_options: dict[str, Any] = Field(default_factory=dict, description="extractor options (e.g. top_k)")
    seed_checkpoint: str | None = Field(
        None, description="take the seed CAMs from this checkpoint of the classifier run (null: the classifier)")
    seeds: SeedParams = Field(default_factory=SeedParams, description="seed sampling (Eqs. 1-2)")
    seed_weight: float = Field(1.0, ge=0, description="α of Eq. 3 (searched in {1, 0.1}; 1 'does not harm')")
    cls_weight: float = Field(1.0, ge=0, description="weight of −log g(X)[y] when the classifier trains")
    crf_weight: float = Field(2e-9, ge=0, description="λ of Eq. 3 (2e-9, tuned on the lattice operator)")
    crf_sigma_rgb: float = Field(15.0, gt=0, description="σ_rgb of the CRF kernel (0..255 colour scale)")
    crf_sigma_xy: float = Field(100.0, gt=0, description="σ_xy of the CRF kernel (pixels)")
    crf_scale: float = Field(1.0, gt=0, le=1, description="Tang et al.'s down-scaling of the CRF input (code: 1)")
    crf_method: Literal["lattice", "fast", "exact"] = Field("lattice", description="CRF filter (wsol.losses.crf)")
    size_constraint: bool = Field(True, description="absolute size constraints on S¹ and S² (Eq. 3)")
    size_weight: float = Field(0.1, ge=0, description="weight of the size terms (authors' command: 0.1)")
    normalize_size: bool = Field(False, description="sizes as fractions of the image (False: pixel counts, code)")
    t0: float = Field(1.0, gt=0, description="initial log-barrier t (§4.1: 1)")
    t_factor: float = Field(1.01, ge=1, description="t multiplied by this each epoch (§4.1: 1.01)")
    t_max: float = Field(10.0, gt=0, description="cap on t (§4.1: 10)")
    decoder_channels: list[int] | None = Field(None, description="decoder widths, deepest first (Table F.2)")

    @model_validator(mode="after")
    def _check(self):
        if self.t_max < self.t0:
            raise ValueError(f"t_max ({self.t_max}) must be >= t0 ({self.t0})")
        if self.classifier_method in TWO_STAGE:
            raise ValueError(f"classifier_method must be a one-stage classifier (cam, wildcat, ...), "
                             f"got {self.classifier_method!r}")
        return self


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block, its previous mode restored after."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def freeze(module: ModuleT) -> ModuleT:
    """``module`` with ``requires_grad=False`` everywhere, in eval mode."""
    module.requires_grad_(False)
    module.eval()
    return module


@register
class FCAM(Method):
    name = "fcam"
    Params = FCAMParams
    backbone_prefixes = ("classifier.backbone.",)
    #: checkpoint of ``params.classifier.run`` when the config names none (F-CAM's code: B-LOC)
    default_checkpoint: ClassVar[str] = "best_loc"
    #: the contract test builds a fresh ``cam`` classifier on its backbone (``classifier: null``)
    contract_params: ClassVar[dict[str, Any]] = {"classifier": None, "classifier_method": "cam"}

    def __init__(self, params: FCAMParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        self.class_names: list[str] | None = None
        self.classifier: Method = self._build_classifier(params, backbone, num_classes)
        encoder = getattr(self.classifier, "backbone", None)
        if not isinstance(encoder, FeatureBackbone):
            raise ConfigError(
                f"{self.name}: classifier method {type(self.classifier).name!r} has no FeatureBackbone `backbone` "
                "for the decoder; use a pooling classifier (cam, wildcat, max_pool, lse, ...)")
        if params.cam_source != "classifier":
            from wsol.explain.registry import EXTRACTORS

            key = params.cam_source.lower().replace("-", "").replace("_", "")
            if key not in EXTRACTORS:
                raise ConfigError(f"{self.name}: unknown cam_source {params.cam_source!r}; valid: classifier, "
                                  + ", ".join(EXTRACTORS.names()))
        self.decoder = fcam_decoder(encoder, channels=params.decoder_channels, final="none")
        self.seed_classifier: Method | None = self._build_seed_classifier(params)
        if params.freeze_classifier:
            freeze(self.classifier)
        self.schedule = BarrierSchedule(params.t0, params.t_factor, params.t_max)
        self.t = self.schedule.t_at(0)
        self._extractor: Any = None
        cls = type(self.classifier)
        # pooling classifiers: logits, class maps and decoder skips from one encoder pass
        self._fused = (isinstance(self.classifier, PooledMethod) and cls.forward is PooledMethod.forward
                       and cls.localize is PooledMethod.localize)

    # --- building ----------------------------------------------------------------------
    def _checkpoint(self, ref: ClassifierRef) -> str:
        return ref.checkpoint or self.default_checkpoint

    def _load(self, ref: ClassifierRef, checkpoint: str, backbone: BackboneConfig, num_classes: int) -> Method:
        from wsol.runs import load_run

        try:
            run = load_run(ref.run, checkpoint, device="cpu")
        except CheckpointError as e:
            raise CheckpointError(f"{self.name}: model.method.params.classifier: {e}") from None
        except WSOLError as e:
            raise ConfigError(f"{self.name}: model.method.params.classifier: {e}") from None
        if run.config.model.method.name in TWO_STAGE:
            raise ConfigError(f"{self.name}: classifier run {ref.run} is a {run.config.model.method.name} run; "
                              "give the run of its stage-1 classifier (cam, wildcat, ...)")
        if len(run.class_names) != num_classes:
            raise ConfigError(
                f"{self.name}: classifier run {ref.run} has {len(run.class_names)} classes ({run.class_names}), "
                f"this dataset has {num_classes}; train the classifier on the same dataset")
        theirs = run.config.model.backbone
        if (theirs.name, theirs.cam_friendly) != (backbone.name, backbone.cam_friendly):
            raise ConfigError(
                f"{self.name}: classifier run {ref.run} uses backbone {theirs.name} (cam_friendly={theirs.cam_friendly}) "
                f"but model.backbone is {backbone.name} (cam_friendly={backbone.cam_friendly}); set "
                f"model.backbone.name={theirs.name} model.backbone.cam_friendly={str(theirs.cam_friendly).lower()}")
        self.class_names = list(run.class_names)
        return run.method

    def _build_classifier(self, p: FCAMParams, backbone: BackboneConfig, num_classes: int) -> Method:
        if p.classifier is not None:
            return self._load(p.classifier, self._checkpoint(p.classifier), backbone, num_classes)
        return build_method(MethodConfig(name=p.classifier_method, params=p.classifier_params), backbone, num_classes)

    def _build_seed_classifier(self, p: FCAMParams) -> Method | None:
        """A second, frozen copy of the classifier run at ``seed_checkpoint`` (None: the
        seeds come from ``self.classifier``)."""
        if p.seed_checkpoint is None or p.classifier is None:
            return None
        if p.seed_checkpoint == self._checkpoint(p.classifier) and p.freeze_classifier:
            return None
        return freeze(self._load(p.classifier, p.seed_checkpoint, self.backbone_cfg, self.num_classes))

    @property
    def encoder(self) -> FeatureBackbone:
        """The classifier's backbone (shared with the decoder)."""
        return cast(FeatureBackbone, self.classifier.backbone)

    @property
    def seed_source(self) -> Method:
        """The classifier whose CAMs give the seeds."""
        return self.seed_classifier if self.seed_classifier is not None else self.classifier

    def train(self, mode: bool = True) -> FCAM:
        """Frozen parts stay in eval mode (their BatchNorm statistics never move)."""
        super().train(mode)
        if self.params.freeze_classifier:
            self.classifier.eval()
        if self.seed_classifier is not None:
            self.seed_classifier.eval()
        return self

    # --- networks ----------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Decoder skips (the encoder stages), the classifier's logits and class maps."""
        stages = self.encoder.forward_stages(images)
        if self._fused:
            logits, maps = cast(PooledMethod, self.classifier).head(stages[-1])
            return stages, logits, maps
        out = self.classifier(images)
        return stages, out.logits, out.maps

    def decode(self, stages: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The decoder's logits B×2×H×W; softmax over dim 1 gives S = [S¹ background, S² foreground]."""
        return self.decoder(stages, size)

    def seed_cams(self, images: torch.Tensor, labels: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        """The CAM C of the true class (B×H×W in [0, 1], detached) the seeds are drawn from.
        ``maps``: the seed source's class maps from an eval-mode pass already made."""
        src, size = self.seed_source, tuple(images.shape[-2:])
        p = self.params
        if p.cam_source == "classifier":
            with torch.no_grad():
                if maps is not None:
                    return to_cam(maps[torch.arange(len(labels), device=labels.device), labels].float(), size)
                with eval_mode(src):
                    return src.localize(images, labels).detach()
        with eval_mode(src):
            return self._cam_extractor(src)(images, labels).detach()

    def _cam_extractor(self, src: Method):
        from wsol.explain.registry import build_extractor

        if self._extractor is None or self._extractor.model is not src:
            layer = self.params.cam_layer or f"backbone.{cast(FeatureBackbone, src.backbone).default_layer}"
            self._extractor = build_extractor(self.params.cam_source, src, layer, **self.params.cam_options)
        return self._extractor

    # --- Method contract ---------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> Output:
        """The classifier's logits (and class maps); classification is the classifier's."""
        out = self.classifier(images)
        return Output(logits=out.logits, maps=out.maps)

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """S² at the image resolution, min-max normalised per image (one encoder + decoder
        pass). S² is class-agnostic: ``targets`` is not used."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        seg = self.decode(self.encoder.forward_stages(images), size)
        return to_cam(torch.softmax(seg.float(), dim=1)[:, 1])

    def on_epoch_start(self, epoch: int) -> None:
        self.t = self.schedule.t_at(epoch)

    def positive(self, labels: torch.Tensor) -> torch.Tensor:
        """Images whose seeds and size terms count (all of them for F-CAM)."""
        return torch.ones_like(labels, dtype=torch.bool)

    def extra_terms(self, seg: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Further named loss terms of a subclass (NEGEV's negative evidence)."""
        return {}

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        images, labels = batch.images, batch.labels
        p = self.params
        size = (int(images.shape[-2]), int(images.shape[-1]))
        train_clf = not p.freeze_classifier
        with torch.set_grad_enabled(train_clf and torch.is_grad_enabled()):
            stages, logits, maps = self.encode(images)
        own = p.cam_source == "classifier" and self.seed_classifier is None and p.freeze_classifier and self._fused
        # C: the frozen classifier's maps from the pass above (eval mode), else a pass of the seed source
        cams = self.seed_cams(images, labels, maps=maps.detach() if own and maps is not None else None)
        seeds = sample_seeds(cams, p.seeds)  # Ω', Eqs. 1-2
        seg = self.decode(stages, size)
        probs = torch.softmax(seg.float(), dim=1)  # S = [S¹, S²]
        pos = self.positive(labels)
        zero = seg.sum() * 0.0
        terms: dict[str, torch.Tensor] = {}
        if train_clf:
            terms["cls_ce"] = p.cls_weight * F.cross_entropy(logits, labels)  # Eq. 3, −log g(X)[y]
        # Eq. 3, α·Σ_{p∈Ω'} H(Y_p, S_p), averaged over the seeds (F-CAM code)
        terms["seed_ce"] = p.seed_weight * partial_cross_entropy(seg[pos], seeds[pos]) if pos.any() else zero
        if p.crf_weight > 0:  # Eq. 3 / Eq. B.1, λ·R(S, X)
            terms["crf"] = p.crf_weight * crf_loss(images, probs, sigma_rgb=p.crf_sigma_rgb, sigma_xy=p.crf_sigma_xy,
                                                   scale_factor=p.crf_scale, method=p.crf_method)
        if p.size_constraint:  # Eq. 3, Σ S^r ≥ 0 for r ∈ {1, 2} via ψ_t(−Σ S^r), ×½ as the code
            for r, key in ((0, "size_bg"), (1, "size_fg")):
                if pos.any():
                    s = region_size(probs[pos, r], normalize=p.normalize_size)
                    terms[key] = 0.5 * p.size_weight * size_lower_barrier(s, self.t)
                else:
                    terms[key] = zero
        terms.update(self.extra_terms(seg, labels))
        terms["total"] = sum(terms.values())  # type: ignore[assignment]
        terms["fg_size"] = probs[:, 1].detach().mean()
        return terms
