"""Complexity figures: parameter counts and per-image timing (warm-up excluded) checked on
a fake clock; every registered method is measured (or its failure named)."""

import pytest
import torch
import torch.nn as nn

import wsol.bench.complexity as cx
from wsol.methods.base import Output


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)  # 16 parameters
        self.b = nn.Linear(4, 2)  # 10 parameters, frozen
        self.b.requires_grad_(False)
        self.tied = self.a  # shared: counted once

    def forward(self, images):
        x = images.mean((2, 3))
        return Output(logits=self.b(self.a(x)))

    def localize(self, images, targets=None):
        return torch.zeros(images.shape[0], *images.shape[-2:])


def test_count_params():
    assert cx.count_params(Toy()) == (26, 16)


def test_time_per_image_excludes_warmup(monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(cx.time, "perf_counter", lambda: clock["t"])

    def call():  # each call of a batch of 4 takes 0.2 s of the fake clock
        clock["t"] += 0.2

    ms = cx.time_per_image(call, batch=4, device=torch.device("cpu"), warmup=3, repeats=5)
    assert ms == pytest.approx(1000 * 0.2 / 4)  # 50 ms per image, the 3 warm-up calls not counted


def test_measure_reports_every_batch_size():
    out = cx.measure(Toy(), image_size=8, device="cpu", num_classes=2, batch_sizes=(1, 3), warmup=0, repeats=1)
    assert out["params"] == 26 and out["trainable"] == 16 and out["image_size"] == 8
    for b in (1, 3):
        assert out[f"forward_ms_b{b}"] >= 0 and out[f"cam_ms_b{b}"] >= 0
    assert out["device"].startswith("cpu")


def test_method_complexity_of_two_stage_method_counts_the_decoder_as_trainable():
    cam = cx.method_complexity("cam", image_size=32, batch_sizes=(1,), warmup=0, repeats=1)
    fcam = cx.method_complexity("fcam", image_size=32, batch_sizes=(1,), warmup=0, repeats=1)
    assert cam["params"] == cam["trainable"] > 11e6  # ResNet-18 + a linear head
    # F-CAM: the frozen CAM classifier (same size as cam) + the trainable decoder
    assert fcam["params"] == cam["params"] + fcam["trainable"]


def test_registered_complexity_names_what_it_cannot_build():
    rows = cx.registered_complexity(backbone="efficientnet_lite0", image_size=32, batch_sizes=(1,), warmup=0,
                                    repeats=1, methods=["cam", "adl"], extractors=["gradcam"])
    assert set(rows) == {"cam", "adl", "cam+gradcam"}
    assert rows["cam"]["params"] > 0 and "error" not in rows["cam"]
    assert rows["cam+gradcam"]["params"] == rows["cam"]["params"]
    assert "positions" in rows["adl"]["error"]  # ADL has no default positions on EfficientNet-Lite0
