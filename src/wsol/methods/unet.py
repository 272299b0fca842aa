"""U-Net, full supervision: the upper bound of all five papers (survey Table 1 and §3;
max-min-uncertainty Tables 1-2 and §3.3 (c); min-max-entropy Table 2 "Full sup."), and
f-cam Table 1's FSL baseline when trained on the few pixel-labelled ``valpx`` images only.

Network: encoder = ``model.backbone`` (a :class:`~wsol.nn.backbones.FeatureBackbone`,
ImageNet or random init as configured), decoder = F-CAM's U-Net decoder on its stages
(:func:`wsol.nn.decoders.fcam_decoder`: Table F.2 widths, two maps [background,
foreground], trained as logits). The survey initialises the decoder randomly and trains
everything (§4.1, "The decoder of U-Net is initialized randomly"); the decoder is a new
layer and gets ``optim.head_lr_mult`` like every head.

Loss: per-pixel cross-entropy on the masks, pixels labelled 255 (ignore) and images
without a mask left out; ``box_masks`` turns the boxes of an image without a mask into
a mask (inside any box: ROI, elsewhere background), so the baseline also trains on box
sets. A batch without any labelled pixel gives a zero loss that keeps the graph.

Classification-free: the network predicts no image class. ``forward`` returns constant
(all-zero) logits so that the engine and the Evaluator run unchanged; the accuracy they
report for a U-Net run (that of always answering class 0) is meaningless, and
``classifies = False`` tells the benchmark suites to show its classification columns
(accuracy, top-1/top-5 loc) as "—". Only the localisation metrics are the U-Net's.

``localize`` returns S², the softmax foreground probability, per pixel and class-agnostic
(``targets`` is not used). By default it is *not* min-max normalised per image (it is in
[0, 1] as the metrics require): S² is a calibrated pixel posterior, its 0.5 level is the
segmentation decision (F1± at 0.5), and normalising each image would turn a confident
"no ROI" map of a normal patch into a full-range map of false positives and reorder
pixels across images for PxAP. ``minmax: true`` applies the CAM-contract normalisation.

FSL (``train_split: valpx``): the engine trains on ``valpx`` instead of ``train``
(``Method.train_split``). B-LOC then selects on the images it trains on, as an FSL model
has no other pixel labels.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from wsol.cams import to_cam
from wsol.config import BackboneConfig
from wsol.data.sample import IGNORE, Batch
from wsol.methods.base import Method, MethodParams, Output, TrainState, register
from wsol.nn.backbones import build_backbone
from wsol.nn.decoders import fcam_decoder


class UNetParams(MethodParams):
    train_split: Literal["train", "valpx"] = Field(
        "train", description="split the engine trains on: train (full supervision) or valpx (FSL baseline, f-cam Table 1)")
    box_masks: bool = Field(True, description="images without a mask but with boxes: inside a box = ROI, else background")
    minmax: bool = Field(False, description="min-max normalise S² per image (default: the probability itself)")
    decoder_channels: list[int] | None = Field(None, description="decoder widths, deepest first (f-cam Table F.2)")


def pixel_targets(batch: Batch, box_masks: bool = True) -> torch.Tensor:
    """Per-pixel targets B×H×W (long: 0 background, 1 ROI, 255 ignore) from the batch's
    masks; with ``box_masks``, an image without a mask but with boxes gets its boxes
    filled as ROI (pixel centres inside [x1, x2) × [y1, y2)) on a background of 0."""
    b, _, h, w = batch.images.shape
    device = batch.images.device
    if batch.masks is not None:
        target = batch.masks.to(device).long()
    else:
        target = torch.full((b, h, w), IGNORE, dtype=torch.long, device=device)
    has = batch.has_mask.to(device) if batch.has_mask is not None else torch.zeros(b, dtype=torch.bool, device=device)
    if not box_masks or not batch.boxes:
        return target
    ys = torch.arange(h, device=device, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=device, dtype=torch.float32).view(1, 1, w) + 0.5
    for i, boxes in enumerate(batch.boxes):
        if bool(has[i]) or boxes is None or len(boxes) == 0:
            continue
        bx = boxes.to(device).float().view(-1, 4, 1, 1)
        inside = ((xs >= bx[:, 0]) & (xs < bx[:, 2]) & (ys >= bx[:, 1]) & (ys < bx[:, 3])).any(0)
        target[i] = inside.long()
    return target


@register
class UNet(Method):
    """U-Net with full supervision (per-pixel cross-entropy on the masks): the upper bound;
    trained on valpx only (train_split: valpx) it is f-cam's FSL baseline."""

    name = "unet"
    Params = UNetParams
    #: no image-level prediction: classification metrics of a U-Net run are not its own
    classifies: ClassVar[bool] = False

    def __init__(self, params: UNetParams, backbone: BackboneConfig, num_classes: int):
        super().__init__(params, backbone, num_classes)
        self.backbone = build_backbone(backbone)
        self.decoder = fcam_decoder(self.backbone, channels=params.decoder_channels, final="none")
        #: the split the engine trains on (read by the trainer)
        self.train_split: str = params.train_split

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Decoder logits B×2×H×W ([background, foreground])."""
        return self.decoder(self.backbone.forward_stages(images), images.shape[-2:])

    def forward(self, images: torch.Tensor) -> Output:
        seg = self.segment(images)
        # classification-free: constant logits (see the module docstring); the two maps are
        # [background, foreground], not per-class maps, so they go to extras
        logits = seg.new_zeros(images.shape[0], self.num_classes)
        return Output(logits=logits, extras={"segmentation": torch.softmax(seg.float(), dim=1)})

    def training_step(self, batch: Batch, state: TrainState) -> dict[str, torch.Tensor]:
        seg = self.segment(batch.images)
        target = pixel_targets(batch, self.params.box_masks)
        if bool((target != IGNORE).any()):
            # per-pixel cross-entropy, mean over labelled pixels (U-Net, Ronneberger et al. 2015)
            ce = F.cross_entropy(seg.float(), target, ignore_index=IGNORE)
        else:  # no labelled pixel in this batch: nothing to learn, keep the graph
            ce = seg.sum() * 0.0
        return {"pixel_ce": ce, "total": ce}

    def localize(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        fg = torch.softmax(self.segment(images).float(), dim=1)[:, 1]
        return to_cam(fg) if self.params.minmax else fg.clamp(0.0, 1.0)
