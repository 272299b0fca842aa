"""NEGEV: the negative-evidence term, joint training, the NEGEV seeds, class resolution."""

import math

import pytest
import torch

import wsol.methods.negev  # noqa: F401  (registers negev)
from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import collate
from wsol.errors import ConfigError
from wsol.methods.base import TrainState, build_method
from wsol.methods.negev import NEGEVParams

SIZE = 32


def _negev(**params):
    params.setdefault("decoder_channels", [32, 16, 16, 8, 8])
    return build_method(MethodConfig(name="negev", params=params), BackboneConfig(name="resnet18"), 2)


def _batch(labels, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return collate([{"image": torch.rand(3, size, size, generator=g), "label": int(y), "image_id": f"i{i}"}
                    for i, y in enumerate(labels)])


def test_defaults_are_the_negev_codes():
    p = NEGEVParams()
    assert p.freeze_classifier is False and p.seed_checkpoint == "best_loc"
    s = p.seeds
    assert (s.fg_count, s.bg_count, s.bg_fraction, s.fg_erode, s.dilate, s.quantize) == (10, 10, 0.2, 11, 1, True)
    assert p.crf_weight == 0.0 and p.size_constraint is False and p.negative_weight == 1.0
    assert p.negative_classes == []


def test_negative_term_is_full_cross_entropy_to_background():
    m = _negev(negative_classes=[0])
    seg = torch.zeros(3, 2, 4, 4)
    seg[0, 1, 0, 0] = math.log(3.0)  # negative image: p(bg) = 1/4 at one pixel, 1/2 elsewhere
    seg[1] = 7.0 * torch.randn(2, 4, 4)  # a positive image: does not count
    seg[2, 0] = math.log(9.0)  # negative image: p(bg) = 9/10 everywhere
    got = m.extra_terms(seg, torch.tensor([0, 1, 0]))["negative_ce"]
    want = (-math.log(1 / 4) - 15 * math.log(1 / 2) - 16 * math.log(9 / 10)) / 32
    assert got.item() == pytest.approx(want, rel=1e-6)
    none = m.extra_terms(seg, torch.tensor([1, 1, 1]))["negative_ce"]
    assert none.item() == 0.0


def test_seeds_and_size_use_positive_images_only():
    m = _negev(negative_classes=[0], size_constraint=True).train()
    all_neg = m.training_step(_batch([0, 0]), TrainState())
    assert all_neg["seed_ce"].item() == 0.0 and all_neg["size_fg"].item() == 0.0
    assert all_neg["negative_ce"].item() > 0
    assert m.positive(torch.tensor([0, 1, 1, 0])).tolist() == [False, True, True, False]


def test_joint_training_updates_the_classifier():
    m = _negev(negative_classes=[0]).train()
    assert m.classifier.training and all(p.requires_grad for p in m.classifier.parameters())
    terms = m.training_step(_batch([0, 1, 0, 1]), TrainState())
    assert {"cls_ce", "seed_ce", "negative_ce", "total"} <= set(terms)
    terms["total"].backward()
    assert all(p.grad is not None for p in m.classifier.head.parameters())


def test_negative_term_drives_s2_of_negative_images_to_zero():
    """Toy problem: 32² images, class 0 negative; a few dozen steps on the negative term
    (+ seeds on the positive images) bring S² of the negative images near 0."""
    torch.manual_seed(0)
    m = _negev(negative_classes=[0])
    b = _batch([0, 1, 0, 1], seed=5)
    neg = b.labels == 0

    def s2():
        m.eval()
        with torch.no_grad():
            seg = m.decode(m.classifier.backbone.forward_stages(b.images), (SIZE, SIZE))
        m.train()
        return torch.softmax(seg, 1)[:, 1]

    before = s2()[neg].mean().item()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-3)
    m.train()
    for step in range(30):
        opt.zero_grad()
        m.training_step(b, TrainState(step=step))["total"].backward()
        opt.step()
    after = s2()
    assert 0.2 < before < 0.8
    assert after[neg].mean().item() < 0.05
    assert after[neg].max().item() < 0.5
    assert after[~neg].mean().item() > 0.3  # not a global collapse: positive images keep their foreground


def test_negative_classes_by_id_and_name():
    with pytest.raises(ConfigError, match="class names are unknown"):
        _negev(negative_classes=["normal"])
    with pytest.raises(ConfigError, match=r"not in \[0, 1\]"):
        _negev(negative_classes=[2])
    with pytest.raises(ConfigError, match="every class"):
        _negev(negative_classes=[0, 1])
    m = _negev(negative_classes=[1])
    assert m.negative(torch.tensor([0, 1])).tolist() == [False, True]
