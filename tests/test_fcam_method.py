"""F-CAM method (f-cam.txt §3, Eq. 3) on a fresh classifier (``classifier: null``): frozen
classifier, the CAM contract of S², the named loss terms, the CAM sources, the shipped configs."""

from pathlib import Path

import pytest
import torch

import wsol.methods.fcam  # noqa: F401  (registers fcam)
import wsol.methods.negev  # noqa: F401  (registers negev)
from wsol.cams import minmax_normalize
from wsol.config import BackboneConfig, MethodConfig, load_config
from wsol.data.sample import collate
from wsol.errors import ConfigError
from wsol.explain.registry import build_extractor
from wsol.losses import crf_loss, extended_log_barrier
from wsol.methods.base import TrainState, build_method

CONFIGS = Path(wsol.methods.fcam.__file__).resolve().parents[1] / "configs"
SIZE = 32


def _batch(n=4, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return collate([{"image": torch.rand(3, size, size, generator=g), "label": i % 2, "image_id": f"i{i}"}
                    for i in range(n)])


def _fcam(**params):
    params.setdefault("decoder_channels", [32, 16, 16, 8, 8])
    return build_method(MethodConfig(name="fcam", params=params), BackboneConfig(name="resnet18"), 2)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_classifier_params_and_bn_stats_unchanged():
    m = _fcam()
    before = _state(m.classifier)
    dec_before = _state(m.decoder)
    assert not any(p.requires_grad for p in m.classifier.parameters())
    assert all(not n.startswith("classifier.") for g in m.param_groups(0.1, 1.0) for n, p in m.named_parameters()
               if any(p is q for q in g["params"]))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    m.train()
    assert m.training and not m.classifier.training and m.decoder.training
    for step in range(3):
        opt.zero_grad()
        m.training_step(_batch(seed=step), TrainState(step=step))["total"].backward()
        opt.step()
    after = m.classifier.state_dict()
    assert any(k.endswith("running_mean") for k in before) and any(k.endswith("num_batches_tracked") for k in before)
    for k, v in before.items():  # weights AND BatchNorm buffers
        assert torch.equal(v, after[k]), k
    assert any(not torch.equal(v, m.decoder.state_dict()[k]) for k, v in dec_before.items()), "the decoder trains"
    m.eval()
    assert not m.classifier.training and not m.decoder.training


def test_unfrozen_classifier_trains_with_its_cross_entropy():
    m = _fcam(freeze_classifier=False)
    m.train()
    assert m.classifier.training
    terms = m.training_step(_batch(), TrainState())
    assert "cls_ce" in terms
    terms["total"].backward()
    assert all(p.grad is not None for p in m.classifier.head.parameters())
    assert any(p.grad is not None for p in m.classifier.backbone.parameters())
    names = {g["name"] for g in m.param_groups(0.1, 10.0)}
    assert names == {"backbone", "head"}  # classifier.backbone at lr, head + decoder at lr·mult


def test_localize_is_minmax_s2_at_full_resolution_and_class_agnostic():
    m = _fcam().eval()
    b = _batch(n=3)
    with torch.no_grad():
        cams = m.localize(b.images, torch.tensor([0, 1, 0]))
        seg = m.decode(m.classifier.backbone.forward_stages(b.images), (SIZE, SIZE))
        want = minmax_normalize(torch.softmax(seg, 1)[:, 1])
        assert cams.shape == (3, SIZE, SIZE) and cams.min() >= 0 and cams.max() <= 1
        torch.testing.assert_close(cams, want)
        torch.testing.assert_close(m.localize(b.images, torch.tensor([1, 0, 1])), cams)
        torch.testing.assert_close(m(b.images).logits, m.classifier(b.images).logits)


def test_seed_cams_are_the_classifiers_cam_of_the_true_class():
    m = _fcam().eval()
    b = _batch()
    with torch.no_grad():
        _, _, maps = m.encode(b.images)
        fused = m.seed_cams(b.images, b.labels, maps=maps)
        alone = m.seed_cams(b.images, b.labels)
        want = m.classifier.localize(b.images, b.labels)
    torch.testing.assert_close(fused, want)
    torch.testing.assert_close(alone, want)


def test_extractor_cam_source():
    m = _fcam(cam_source="gradcam").eval()
    b = _batch()
    want = build_extractor("gradcam", m.classifier, "backbone.layer4")(b.images, b.labels)
    torch.testing.assert_close(m.seed_cams(b.images, b.labels), want)
    m.train()
    terms = m.training_step(b, TrainState())
    terms["total"].backward()
    assert not any(mod._forward_hooks for mod in m.modules()), "hooks left behind"
    assert all(p.grad is None for p in m.classifier.parameters())
    with pytest.raises(ConfigError, match="unknown cam_source"):
        _fcam(cam_source="nocam")


def test_terms_are_named_and_ablations_drop_them():
    b = _batch()
    full = _fcam().train().training_step(b, TrainState())
    assert set(full) == {"seed_ce", "crf", "size_bg", "size_fg", "total", "fg_size"}
    parts = sum(v for k, v in full.items() if k not in ("total", "fg_size"))
    torch.testing.assert_close(full["total"], parts)
    ablations = {  # Table D.1
        "sr": dict(crf_weight=0.0, size_constraint=False),
        "sr_asc": dict(crf_weight=0.0),
        "sr_crf": dict(size_constraint=False),
    }
    keys = {k: set(_fcam(**kw).train().training_step(b, TrainState())) - {"total", "fg_size"}
            for k, kw in ablations.items()}
    assert keys == {"sr": {"seed_ce"}, "sr_asc": {"seed_ce", "size_bg", "size_fg"}, "sr_crf": {"seed_ce", "crf"}}


def test_crf_and_size_terms_values():
    torch.manual_seed(0)
    m = _fcam(size_weight=0.3, crf_weight=2e-9).train()
    b = _batch()
    m.on_epoch_start(40)
    t = min(1.01**40, 10.0)
    assert m.t == pytest.approx(t)
    m.on_epoch_start(10_000)
    assert m.t == 10.0
    m.on_epoch_start(40)
    torch.manual_seed(3)
    terms = m.training_step(b, TrainState())
    # the decoder in train mode is a function of the batch only: recompute S
    with torch.no_grad():
        seg = m.decode(m.classifier.backbone.forward_stages(b.images), (SIZE, SIZE))
    probs = torch.softmax(seg, 1)
    for r, key in ((0, "size_bg"), (1, "size_fg")):
        s = probs[:, r].sum(dim=(-2, -1))  # pixel counts, as F-CAM's code
        want = 0.5 * 0.3 * extended_log_barrier(-s, t).mean()
        torch.testing.assert_close(terms[key].detach(), want, rtol=1e-5, atol=1e-7)
        assert float(want) < 0  # log branch: −(1/t)·log(count) with count ≫ 1
    want_crf = 2e-9 * crf_loss(b.images, probs, sigma_rgb=15.0, sigma_xy=100.0, method="lattice")
    torch.testing.assert_close(terms["crf"].detach(), want_crf, rtol=1e-5, atol=1e-12)


def test_two_stage_classifier_method_is_refused():
    with pytest.raises(ConfigError, match="one-stage classifier"):
        _fcam(classifier_method="negev")


def test_wildcat_classifier_works():
    m = _fcam(classifier_method="wildcat", classifier_params={"modalities": 2})
    assert m._fused  # one encoder pass gives the skips, the logits and the class maps
    b = _batch()
    with torch.no_grad():
        m.eval()
        _, _, maps = m.encode(b.images)
        torch.testing.assert_close(m.seed_cams(b.images, b.labels, maps=maps), m.classifier.localize(b.images, b.labels))
    terms = m.train().training_step(_batch(), TrainState())
    terms["total"].backward()
    with torch.no_grad():
        m.eval()
        assert m.localize(_batch().images).shape == (4, SIZE, SIZE)


def test_shipped_configs_load_with_the_papers_values():
    ds = CONFIGS / "datasets" / "synthetic-glas.yaml"
    table_d1 = {"sr": (0.0, False), "sr-asc": (0.0, True), "sr-crf": (2e-9, False), "sr-crf-asc": (2e-9, True)}
    for name, (crf, asc) in table_d1.items():
        cfg = load_config([ds, CONFIGS / "recipes" / f"fcam-cub-{name}.yaml"])
        p = cfg.model.method.params
        assert (p["crf_weight"], p["size_constraint"]) == (crf, asc), name
        assert cfg.optim.lr == 0.01 and cfg.optim.batch_size == 32 and cfg.optim.epochs == 50
        assert (p["t0"], p["t_factor"], p["t_max"]) == (1.0, 1.01, 10.0)
    assert load_config([ds, CONFIGS / "recipes" / "fcam-openimages.yaml"]).optim.epochs == 10
    for f in ("methods/fcam.yaml", "methods/negev.yaml", "methods/negev-camelyon.yaml",
              "recipes/negev-glas.yaml", "recipes/negev-camelyon.yaml"):
        cfg = load_config([ds, CONFIGS / f])
        assert cfg.model.method.name in ("fcam", "negev"), f
    negev = load_config([ds, CONFIGS / "recipes" / "negev-camelyon.yaml"]).model.method.params
    assert negev["negative_classes"] == ["normal"]
