"""The evaluator's F1± for MAXMIN is the F1 of the paper's binary mask (Eq. 12)."""

import torch

from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import collate
from wsol.engine.evaluate import evaluate_split
from wsol.methods.base import build_method
from wsol.metrics import PixelAccumulator


def test_maxmin_f1_is_the_f1_of_its_binary_mask():
    torch.manual_seed(0)
    m = build_method(MethodConfig(name="maxmin", params={"sigma": 0.3}), BackboneConfig(name="resnet18"), 2).eval()
    images = torch.rand(4, 3, 32, 32)
    masks = (torch.rand(4, 32, 32) > 0.6).to(torch.uint8)
    batch = collate([{"image": images[i], "label": i % 2, "image_id": str(i), "mask": masks[i]} for i in range(4)])
    got = evaluate_split(m, [batch], loc_kind="mask", device=torch.device("cpu")).metrics
    with torch.no_grad():
        binary = m.localize_binary(images)
    ref = PixelAccumulator()  # the binary mask is 0/1: F1 at 0.5 is its plain Dice
    ref.update(binary, masks)
    want = ref.compute()
    assert got["f1_tau"] == 0.3
    assert abs(got["f1_fg_mean"] - want["f1_fg_mean"]) < 1e-6
    assert abs(got["f1_bg_mean"] - want["f1_bg_mean"]) < 1e-6
