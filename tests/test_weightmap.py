"""Weight map, method I and the generator (weight-map-wsol.txt §3, Eqs. 1, 5-6): the loss terms
by hand, f frozen through training steps, the box rule and the label-free score S on
hand-made maps, the ``best_s`` criterion, and the shipped configs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from wsol.cams import minmax_normalize
from wsol.config import BackboneConfig, MethodConfig, RunConfig, load_config, load_yaml
from wsol.data.sample import Batch
from wsol.engine.selection import SELECTION
from wsol.errors import ConfigError, MetricError
from wsol.methods.base import TrainState, build_method
from wsol.methods.weightmap import (
    SMALL_DECODER_CHANNELS,
    WeightMap,
    WeightMapGenerator,
    discrepancy,
    soft_cross_entropy,
    weight_map_scores,
)
from wsol.metrics import BoxAccumulator, weight_map_box

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "wsol" / "configs"
SIZE = 32


def build(reg_weight: float = 1.0, classes: int = 2) -> WeightMap:
    params = {"classifier": None, "reg_weight": reg_weight, "decoder_channels": SMALL_DECODER_CHANNELS}
    return build_method(MethodConfig(name="weightmap", params=params), BackboneConfig(name="resnet18"), classes)


def batch(n: int = 4, size: int = SIZE) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(images=torch.rand(n, 3, size, size, generator=g), labels=torch.arange(n) % 2,
                 image_ids=[str(i) for i in range(n)])


class Constant(nn.Module):
    """A stand-in generator: M ≡ value."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value
        self.dummy = nn.Parameter(torch.zeros(()))  # so the optimiser has something to hold

    def forward(self, images):
        return torch.full(images.shape[:1] + images.shape[2:], self.value) + 0 * self.dummy


def val(t: torch.Tensor) -> float:
    return float(t.detach())


# --- generator ------------------------------------------------------------------------
def test_generator_gives_a_map_in_unit_interval_at_any_size():
    g = WeightMapGenerator(BackboneConfig(name="resnet18"), SMALL_DECODER_CHANNELS).eval()
    assert len(g.decoder.blocks) == 5  # §3: five upsampling blocks (stride-32 ResNet)
    with torch.no_grad():
        m = g(torch.rand(2, 3, 50, 70))
    assert m.shape == (2, 50, 70)
    assert 0 <= float(m.min()) and float(m.max()) <= 1


# --- Eq. 1 ----------------------------------------------------------------------------
def test_discrepancy_by_hand():
    # p = softmax(0, 0) = (1/2, 1/2); q = softmax(0, log 3) = (1/4, 3/4)
    target = torch.zeros(1, 2)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    ce = -0.5 * math.log(0.25) - 0.5 * math.log(0.75)  # 0.836988
    assert float(soft_cross_entropy(target, logits)) == pytest.approx(ce, abs=1e-6)
    assert float(discrepancy(target, logits)) == pytest.approx(ce - math.log(2.0), abs=1e-6)  # 0.143841
    assert float(discrepancy(logits, logits)) == pytest.approx(0.0, abs=1e-7)


def test_d_is_zero_and_r_is_one_when_g_is_one():
    method = build()
    method.generator = Constant(1.0)
    method.train()
    b = batch()
    terms = method.training_step(b, TrainState())
    assert val(terms["d"]) == pytest.approx(0.0, abs=1e-6)
    assert val(terms["reg"]) == pytest.approx(1.0)
    assert val(terms["total"]) == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():  # the paper's CE value at g ≡ 1 is the entropy of f's prediction
        p = torch.softmax(method(b.images).logits, 1)
    assert val(terms["ce"]) == pytest.approx(float(-(p * p.log()).sum(1).mean()), abs=1e-5)


def test_r_is_the_mean_of_m_weighted_by_lambda():
    method = build(reg_weight=2.0)
    method.generator = Constant(0.25)
    terms = method.training_step(batch(), TrainState())
    assert val(terms["reg"]) == pytest.approx(0.25)
    assert val(terms["total"]) == pytest.approx(val(terms["d"]) + 0.5, abs=1e-6)


def test_gradient_reaches_g_through_the_frozen_f():
    method = build()
    method.train()
    terms = method.training_step(batch(), TrainState())
    terms["d"].backward()
    grads = [p.grad for p in method.generator.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in method.f.parameters())


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage2_steps_leave_f_unchanged():
    """SGD with momentum and weight decay over the method's parameter groups, in train mode:
    f's weights and BN buffers (running stats, batch counters) do not move; g's do."""
    method = build()
    f_before, g_before = _state(method.f), _state(method.generator)
    method.train()
    assert not method.f.training and method.generator.training
    assert all(not p.requires_grad for p in method.f.parameters())
    groups = method.param_groups(0.1, 10.0)
    f_ids = {id(p) for p in method.f.parameters()}
    assert not any(id(p) in f_ids for g in groups for p in g["params"])
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):
        opt.zero_grad()
        method.training_step(batch(), TrainState())["total"].backward()
        opt.step()
    for k, v in _state(method.f).items():
        assert torch.equal(v, f_before[k]), k
    assert any(not torch.equal(v, g_before[k]) for k, v in _state(method.generator).items())


def test_param_groups_encoder_and_decoder():
    method = build()
    groups = {g["name"]: g for g in method.param_groups(1e-4, 1.0)}
    enc = {id(p) for p in method.generator.encoder.parameters()}
    assert {id(p) for p in groups["backbone"]["params"]} == enc
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in method.generator.decoder.parameters()}


def test_forward_is_f_and_localize_is_normalised_m():
    method = build().eval()
    x = batch().images
    with torch.no_grad():
        torch.testing.assert_close(method(x).logits, method.f(x).logits)
        m = method.weight_map(x)
        torch.testing.assert_close(method.localize(x), minmax_normalize(m))
        torch.testing.assert_close(method.localize(x, torch.tensor([1, 0, 1, 0])), method.localize(x))


def test_classifier_is_required_but_may_be_null():
    from wsol.methods.base import validate_params

    with pytest.raises(ConfigError, match="classifier"):
        validate_params("weightmap", {})
    assert validate_params("weightmap", {"classifier": None}).classifier is None
    with pytest.raises(ConfigError, match="reg_weight"):
        validate_params("weightmap", {"classifier": None, "reg_weight": -1})


# --- Eqs. 5-6: the box rule and S on hand-made maps ----------------------------------------
def two_blobs() -> np.ndarray:
    m = np.zeros((20, 20), dtype=np.float32)
    m[2:8, 3:9] = 1.0  # 6×6 blob, mass 36, the largest contour
    m[12:14, 14:16] = 0.5  # 2×2 blob, mass 2, above τ = max/10 = 0.1
    return m


def one_blob() -> np.ndarray:
    m = np.zeros((20, 20), dtype=np.float32)
    m[2:8, 3:9] = 1.0
    m[15, 15] = m[0, 19] = 0.05  # below τ = 0.1: zeroed by Eq. 5
    return m


def test_box_rule_and_s_two_blobs():
    box, s = weight_map_box(two_blobs())
    assert box.tolist() == [3, 2, 9, 8]  # the 6×6 blob (x, y, x+w, y+h)
    assert s == pytest.approx(36 / 38)


def test_box_rule_and_s_one_blob():
    box, s = weight_map_box(one_blob())
    assert box.tolist() == [3, 2, 9, 8]
    assert s == pytest.approx(1.0)


def test_weight_map_scores_per_image_and_label_free():
    cams = torch.from_numpy(np.stack([two_blobs(), one_blob(), np.zeros((20, 20), np.float32)]))
    s = weight_map_scores(cams)
    assert s.dtype == torch.float64
    assert s.tolist() == pytest.approx([36 / 38, 1.0, 1.0])  # an all-zero map scores 1
    # scale-invariant (Eq. 5's τ is relative to the max, Eq. 6 a ratio of masses)
    assert weight_map_scores(cams * 0.5).tolist() == pytest.approx(s.tolist())
    with pytest.raises(MetricError, match="B×H×W"):
        weight_map_scores(cams[0])


def test_box_accumulator_reports_mean_s():
    """On box sets the evaluator's BoxAccumulator already gives mean S (any GT box works:
    S ignores it), which is what best_s reads on valpx."""
    cams = torch.from_numpy(np.stack([two_blobs(), one_blob()]))
    acc = BoxAccumulator(workers=1)
    acc.update(cams, [torch.tensor([[0.0, 0.0, 5.0, 5.0]])] * 2)
    assert acc.compute()["weight_map_score_s"] == pytest.approx((36 / 38 + 1.0) / 2)


def test_best_s_criterion():
    c = SELECTION.get("best_s")
    assert c.name == "best_s" and c.split == "valpx"
    assert c.score({"weight_map_score_s": 0.8, "max_box_acc_v2": 10.0}, "box", None) == pytest.approx(0.8)
    with pytest.raises(MetricError, match="weight_map_score_s"):
        c.score({"pxap": 50.0}, "mask", None)
    assert WeightMap.selection_criteria == ("best_s",)


# --- shipped configs ------------------------------------------------------------------
METHOD_FILES = {"weightmap.yaml": "weightmap", "weightmap-siamese.yaml": "weightmap_siamese", "siamese.yaml": "siamese"}


@pytest.mark.parametrize("fname", sorted(METHOD_FILES))
def test_method_configs_are_model_sections(fname):
    import wsol.methods.weightmap_siamese  # noqa: F401  (registers until the METHODS table lists it)

    data = load_yaml(CONFIGS / "methods" / fname)
    assert set(data) == {"model"}
    cfg = load_config(CONFIGS / "methods" / fname)
    assert cfg.model.method.name == METHOD_FILES[fname]
    assert cfg.model.backbone.name == "resnet18" and not cfg.model.backbone.cam_friendly  # stride 32 (§3)


RECIPES = sorted(p.name for p in (CONFIGS / "recipes").glob("weightmap-*.yaml"))


def test_recipe_set():
    assert set(RECIPES) == {
        "weightmap-stage1-cam.yaml", "weightmap-stage1-siamese.yaml", "weightmap-i.yaml", "weightmap-i-no-reg.yaml",
        "weightmap-ii.yaml", "weightmap-ii-no-reg.yaml", "weightmap-ii-no-outer.yaml", "weightmap-ii-no-inner.yaml",
        "weightmap-tinyimagenet-stage1-cam.yaml", "weightmap-tinyimagenet-stage1-siamese.yaml",
        "weightmap-tinyimagenet-i.yaml", "weightmap-tinyimagenet-ii.yaml",
    }


@pytest.mark.parametrize("fname", RECIPES)
def test_recipes_hold_the_paper_settings(fname):
    import wsol.methods.weightmap_siamese  # noqa: F401

    cfg: RunConfig = load_config([CONFIGS / "datasets" / "synthetic-cub.yaml", CONFIGS / "recipes" / fname])
    o, d, params = cfg.optim, cfg.data, cfg.model.method.params
    tiny = "tinyimagenet" in fname
    assert (d.image_size, d.crop_size, d.augment.hflip, d.augment.vflip, d.augment.rot90) == (256, 224, True, False,
                                                                                           False)
    assert o.name == "sgd" and o.head_lr_mult == 1.0 and not cfg.model.backbone.cam_friendly
    assert cfg.model.backbone.weights == "IMAGENET1K_V1"
    assert cfg.run_dir == "runs/" + fname.removesuffix(".yaml")
    if "stage1" in fname:  # §4: f
        siamese = "siamese" in fname
        assert cfg.model.method.name == ("siamese" if siamese else "cam")
        assert (o.epochs, o.batch_size, o.lr, o.weight_decay) == (200, 128 if siamese else 16, 1e-3, 1e-4)
        assert (cfg.sched.name, cfg.sched.step_size, cfg.sched.gamma) == ("step", 80, 0.1)
        assert cfg.model.backbone.name == ("resnet50" if tiny else "resnet18")
        return
    # §4: g
    assert (o.epochs, o.batch_size, o.lr, o.weight_decay) == (1000 if tiny else 100, 128, 1e-4, 5e-5 if tiny else 1e-4)
    assert cfg.sched.name == "none"
    if cfg.model.method.name == "weightmap":
        assert params["reg_weight"] == (0.0 if "no-reg" in fname else 1.0)
        assert params["classifier"]["run"] == cfg.run_dir.replace("-i-no-reg", "-i").replace("-i", "-stage1-cam")
    else:
        assert cfg.model.method.name == "weightmap_siamese"
        assert params["siamese"]["run"] == cfg.run_dir.split("-ii")[0] + "-stage1-siamese"
        assert params["reg_weight"] == 1.0 and params["margin"] == 1.0
        for term in ("reg", "outer", "inner"):
            assert params[f"use_{term}"] == (f"no-{term}" not in fname)
