"""evaluate_split / selection_score and the classification accumulator."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from wsol.data.sample import collate
from wsol.engine.evaluate import EvalResult, evaluate_split, selection_score
from wsol.errors import MetricError
from wsol.methods.base import Output
from wsol.metrics import ClassificationAccumulator, pixel_metrics

U8 = torch.uint8


class Oracle(nn.Module):
    """Logits from a fixed table (by the image's mean); CAM = channel 0 of the image (the
    test puts the intended CAM there)."""

    def __init__(self, plain: bool = False):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.plain = plain
        self.localize_calls = 0

    def forward(self, images):
        # class score = channel-1 value at pixel (0, c): the test encodes the logits there
        logits = images[:, 1, 0, :3] * self.w
        return logits if self.plain else Output(logits=logits)

    def localize(self, images, targets=None):
        self.localize_calls += 1
        assert targets is not None  # GT-known protocol
        return images[:, 0].clone()


def _samples(n=6, size=8, seed=0, with_mask=True, boxes=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        mask = (torch.rand(size, size, generator=g) > 0.6).to(U8)
        mask[0, 0] = 1
        img = torch.rand(3, size, size, generator=g)
        img[0] = torch.where(mask.bool(), 0.5 + 0.5 * img[0], 0.5 * img[0])  # separable CAM
        img[0] = (img[0] - img[0].min()) / (img[0].max() - img[0].min())
        s = {"image": img, "label": i % 3, "image_id": f"im{i}"}
        if with_mask:
            s["mask"] = mask
        if boxes:
            s["boxes"] = torch.tensor([[1.0, 1.0, 5.0, 6.0]])
        out.append(s)
    return out


def _loader(samples, bs=4):
    return [collate(samples[i : i + bs]) for i in range(0, len(samples), bs)]


def test_metrics_evaluate_split_mask_matches_one_call_and_reports_everything():
    samples = _samples()
    model = Oracle()
    seen = []
    res = evaluate_split(model, _loader(samples), loc_kind="mask", device=torch.device("cpu"), progress=seen.append,
                         gallery=5)
    assert isinstance(res, EvalResult)
    assert seen == [4, 2]
    cams = torch.stack([s["image"][0] for s in samples])
    masks = torch.stack([s["mask"] for s in samples])
    ref = pixel_metrics(cams, masks)
    for k, v in ref.items():
        assert res.metrics[k] == pytest.approx(v), k
    assert res.metrics["pxap"] == pytest.approx(100.0)
    assert selection_score(res.metrics, "mask") == res.metrics["pxap"]
    # classification: logits = image[1, 0, :3]
    logits = torch.stack([s["image"][1, 0, :3] for s in samples])
    labels = torch.tensor([s["label"] for s in samples])
    assert res.metrics["top1_acc"] == pytest.approx(100.0 * float((logits.argmax(1) == labels).float().mean()))
    assert res.metrics["top5_acc"] == 100.0
    assert len(res.curves["precision"]) == 1001
    assert len(res.gallery) == 5
    g = res.gallery[0]
    assert g["image"].shape == (8, 8, 3) and g["image"].dtype.name == "uint8"
    assert g["mask"].shape == (8, 8) and g["cam"].dtype.name == "float32"
    assert g["image_id"] == "im0" and g["label"] == 0 and g["pred"] == int(logits[0].argmax())
    assert model.training  # mode restored


def test_metrics_evaluate_split_given_tau_and_plain_logits():
    samples = _samples()
    res = evaluate_split(Oracle(plain=True), _loader(samples), loc_kind="mask", device=torch.device("cpu"), tau=0.25)
    assert res.metrics["tau"] == 0.25
    assert res.curves["regions"]["tau"] == 0.25 and len(res.curves["regions"]["pred"]) == 6


def test_metrics_evaluate_split_classification_only_and_custom_localizer():
    model = Oracle()
    res = evaluate_split(model, _loader(_samples(with_mask=False)), loc_kind="mask", device=torch.device("cpu"),
                         localize=False)
    assert model.localize_calls == 0
    assert "pxap" not in res.metrics and "top1_acc" in res.metrics
    calls = []

    def inverted(images, targets):
        calls.append(targets.clone())
        return 1 - images[:, 0]

    res = evaluate_split(model, _loader(_samples()), loc_kind="mask", device=torch.device("cpu"), localizer=inverted)
    assert model.localize_calls == 0 and len(calls) == 2
    assert torch.equal(torch.cat(calls), torch.tensor([0, 1, 2, 0, 1, 2]))  # GT labels as targets
    assert res.metrics["pxap"] < 60


def test_metrics_evaluate_split_boxes_and_selection_score():
    samples = _samples(boxes=True, with_mask=False)
    for s in samples:  # CAM = the GT box region exactly
        s["image"][0] = 0
        s["image"][0, 1:7, 1:6] = 1
    res = evaluate_split(Oracle(), _loader(samples), loc_kind="box", device=torch.device("cpu"), gallery=2)
    assert res.metrics["max_box_acc"] == 100.0 and res.metrics["max_box_acc_v2"] == 100.0
    assert selection_score(res.metrics, "box") == 100.0
    assert len(res.curves["box_acc"]) == 1000
    assert res.gallery[1]["boxes"].shape == (1, 4)
    with pytest.raises(MetricError, match="max_box_acc_v2"):
        selection_score({"top1_acc": 1.0}, "box")


def test_metrics_evaluate_split_original_size():
    samples = _samples(n=2, size=8)
    batch = collate(samples)
    with pytest.raises(MetricError, match="orig_sizes"):
        evaluate_split(Oracle(), [batch], loc_kind="mask", device=torch.device("cpu"), eval_size="original")
    # original images are 16×16: masks upsampled by nearest (each pixel -> 2×2 block)
    batch.orig_sizes = [(16, 16), (16, 16)]
    batch.orig_masks = [s["mask"].repeat_interleave(2, 0).repeat_interleave(2, 1) for s in samples]
    res = evaluate_split(Oracle(), [batch], loc_kind="mask", device=torch.device("cpu"), eval_size="original")
    assert res.metrics["n_pixels_fg"] + res.metrics["n_pixels_bg"] == 2 * 256
    cams = torch.nn.functional.interpolate(batch.images[:, :1], size=(16, 16), mode="bilinear")[:, 0]
    lo, hi = cams.amin((1, 2), keepdim=True), cams.amax((1, 2), keepdim=True)
    cams = (cams - lo) / (hi - lo)
    ref = pixel_metrics(cams, torch.stack(batch.orig_masks))
    assert res.metrics["pxap"] == pytest.approx(ref["pxap"])


def test_metrics_classification_hand_computed():
    acc = ClassificationAccumulator()
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.3, 0.2, 0.5], [0.0, 0.4, 0.6]])
    labels = torch.tensor([1, 1, 1, 1])
    acc.update(logits[:2], labels[:2])
    other = ClassificationAccumulator()
    other.update(logits[2:], labels[2:])
    r = (acc + other).compute()
    assert r["top1_acc"] == 25.0 and r["top1_err"] == 75.0
    assert r["top5_acc"] == 100.0 and r["top5_err"] == 0.0 and r["n_images"] == 4
    many = torch.arange(12.0).repeat(3, 1)  # 12 classes, top-5 = 7..11
    acc2 = ClassificationAccumulator()
    acc2.update(many, torch.tensor([11, 7, 6]))
    assert acc2.compute()["top1_acc"] == pytest.approx(100 / 3)
    assert acc2.compute()["top5_acc"] == pytest.approx(200 / 3)
    with pytest.raises(MetricError, match="labels"):
        acc2.update(many, torch.tensor([12, 0, 0]))
    with pytest.raises(MetricError, match="nothing"):
        ClassificationAccumulator().compute()


def test_metrics_evaluate_split_boxes_original_size():
    samples = _samples(n=2, size=8, boxes=True, with_mask=False)
    for s in samples:  # CAM on the left half of the 8×8 input
        s["image"][0] = 0
        s["image"][0, :, :4] = 1
    batch = collate(samples)
    with pytest.raises(MetricError, match="orig_boxes"):
        evaluate_split(Oracle(), [batch], loc_kind="box", device=torch.device("cpu"), eval_size="original")
    # original images 16 high × 32 wide: the CAM, upsampled, covers x < 16 (left half)
    batch.orig_sizes = [(16, 32), (16, 32)]
    batch.orig_boxes = [torch.tensor([[0.0, 0.0, 15.0, 15.0]]), torch.tensor([[16.0, 0.0, 31.0, 15.0]])]
    res = evaluate_split(Oracle(), [batch], loc_kind="box", device=torch.device("cpu"), eval_size="original")
    assert res.metrics["max_box_acc"] == 50.0  # image 0 matches the left box, image 1's GT is the right half


def test_metrics_evaluate_split_rejects_bad_localizer_output():
    loader = _loader(_samples(n=2))

    def nan_cam(images, targets):
        return torch.full(images.shape[:1] + images.shape[2:], float("nan"))

    with pytest.raises(MetricError, match="NaN"):
        evaluate_split(Oracle(), loader, loc_kind="mask", device=torch.device("cpu"), localizer=nan_cam)
    with pytest.raises(MetricError, match="shape"):
        evaluate_split(Oracle(), loader, loc_kind="mask", device=torch.device("cpu"),
                       localizer=lambda x, y: torch.zeros(len(x), 4, 4))
    with pytest.raises(MetricError, match="no localize"):
        evaluate_split(nn.Linear(2, 2), loader, loc_kind="mask", device=torch.device("cpu"))
    with pytest.raises(MetricError, match="loc_kind"):
        evaluate_split(Oracle(), loader, loc_kind="boxes", device=torch.device("cpu"))
