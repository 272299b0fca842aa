"""The Score-CAM family's batched, deduplicated, head-only passes give the numbers of the
straightforward computation (one forward per image and channel, the previous
implementation's semantics), whatever the chunking; the masking baseline and the
Smooth-Grad-CAM++ noise are in the peers' normalised units."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wsol.cams import minmax_normalize
from wsol.errors import ConfigError
from wsol.explain import ISCAM, SSCAM, AblationCAM, GradCAMPlusPlus, ScoreCAM, SmoothGradCAMPlusPlus
from wsol.nn.backbones import IMAGENET_MEAN, Normalize


class SkipNet(nn.Module):
    """stem -> block (the target) -> head(block + stem): the tail after the block reads the
    stem's output (a residual around the target layer), so cutting after the block needs it."""

    def __init__(self, k: int = 5, classes: int = 4):
        super().__init__()
        self.normalize = Normalize((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
        self.stem = nn.Sequential(nn.Conv2d(3, k, 3, stride=2, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(k, k, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(k, classes)

    def forward(self, x):
        s = self.stem(self.normalize(x))
        b = self.block(s)
        return self.fc(((b + s) * b).mean(dim=(2, 3)))


def _setup(seed: int = 0, b: int = 3, size: int = 16):
    torch.manual_seed(seed)
    model = SkipNet().eval()
    x = torch.rand(b, 3, size, size)
    with torch.no_grad():
        t = model(x).argmax(1)
    return model, x, t


def _layer_out(model, x):
    with torch.no_grad():
        return model.block(model.stem(model.normalize(x)))


def _masked(x, m, base):
    return base + m * (x - base)


def _reference_score_weights(model, x, t, base, kind="score", n=1):
    """One forward per (image, channel): α_k = mean_i p_c(X_{s_i·H_k}) − p_c(X_b)."""
    f = _layer_out(model, x)
    out = torch.zeros(f.shape[:2])
    with torch.no_grad():
        for b in range(len(x)):
            p0 = model(_masked(x[b : b + 1], torch.zeros(1, 1, *x.shape[-2:]), base)).softmax(1)[0, t[b]]
            for k in range(f.shape[1]):
                if f[b, k].max() == f[b, k].min():
                    continue
                up = F.interpolate(f[b, k][None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
                h = minmax_normalize(up)
                scales = [1.0] if kind == "score" else [(i + 1) / n for i in range(n)]
                p = torch.stack([model(_masked(x[b : b + 1], s * h, base)).softmax(1)[0, t[b]] for s in scales]).mean()
                out[b, k] = p - p0
    return out


@pytest.mark.parametrize("baseline", ["black", "mean", (0.1, 0.9, 0.5)])
@pytest.mark.parametrize("chunking", [{"batch_size": 1}, {"batch_size": 4}, {}, {"memory_budget": 1}])
def test_score_cam_family_equals_one_forward_per_channel(baseline, chunking):
    model, x, t = _setup()
    colour = {"black": (0.0, 0.0, 0.0), "mean": (0.4, 0.5, 0.6)}  # SkipNet's Normalize mean
    base = torch.tensor(colour.get(baseline, baseline) if isinstance(baseline, str) else baseline).view(1, 3, 1, 1)
    ref = _reference_score_weights(model, x, t, base)
    got = ScoreCAM(model, "block", baseline=baseline, **chunking).channel_weights(x, t)
    assert torch.allclose(got, ref, atol=1e-6)
    ref3 = _reference_score_weights(model, x, t, base, kind="is", n=3)
    assert torch.allclose(ISCAM(model, "block", n_samples=3, baseline=baseline, **chunking).channel_weights(x, t),
                          ref3, atol=1e-6)
    no_noise = SSCAM(model, "block", n_samples=2, sigma=0.0, baseline=baseline, **chunking).channel_weights(x, t)
    assert torch.allclose(no_noise, ref, atol=1e-6)


def test_mean_baseline_is_the_peers_multiplication_of_the_normalised_input():
    # torchcam / pytorch-grad-cam feed net(H ⊙ normalise(X)); wsol masks X in [0, 1] towards the
    # model's normalisation mean: normalise(μ + H ⊙ (X − μ)) = H ⊙ normalise(X)
    model, x, t = _setup(1)
    f = _layer_out(model, x)
    norm = model.normalize(x)

    def net(z):  # the model after its normalisation
        s = model.stem(z)
        b = model.block(s)
        return model.fc(((b + s) * b).mean(dim=(2, 3)))

    with torch.no_grad():
        h = minmax_normalize(F.interpolate(f, size=x.shape[-2:], mode="bilinear", align_corners=False))
        peers = torch.stack([net(norm * h[:, k : k + 1]).softmax(1)[torch.arange(3), t] for k in range(f.shape[1])], 1)
        p0 = net(torch.zeros_like(norm)).softmax(1)[torch.arange(3), t]
    informative = f.flatten(2).amax(-1) > f.flatten(2).amin(-1)
    expected = torch.where(informative, peers - p0[:, None], torch.zeros_like(peers))
    assert torch.allclose(ScoreCAM(model, "block").channel_weights(x, t), expected, atol=1e-5)


def test_duplicate_channels_are_scored_once():
    torch.manual_seed(0)
    model = SkipNet(k=4).eval()
    with torch.no_grad():  # channels 2, 3 copy channel 0 at other scales: identical normalised maps
        for c, s in ((2, 2.0), (3, 0.5)):
            model.block[0].weight[c] = model.block[0].weight[0] * s
            model.block[0].bias[c] = model.block[0].bias[0] * s
    x = torch.rand(2, 3, 12, 12)
    calls = []
    h = model.stem.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    try:
        w = ScoreCAM(model, "block", batch_size=1, baseline="black").channel_weights(x)
    finally:
        h.remove()
    f = _layer_out(model, x)
    informative = int((f.flatten(2).amax(-1) > f.flatten(2).amin(-1)).sum())
    # clean forward + baseline + one per distinct (image, map): two duplicates per image saved
    assert len(calls) == 2 + informative - 4
    assert torch.allclose(w[:, 2], w[:, 0], atol=1e-6) and torch.allclose(w[:, 3], w[:, 0], atol=1e-6)


class Untraceable(SkipNet):
    def forward(self, x):
        s = self.stem(self.normalize(x))
        b = self.block(s)
        if float(b.mean()) > -1.0:  # data-dependent Python control flow: torch.fx cannot trace it
            b = b + 0.0
        return self.fc(((b + s) * b).mean(dim=(2, 3)))


@pytest.mark.parametrize("cls", [SkipNet, Untraceable])
def test_ablation_runs_only_the_layers_after_the_target(cls):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        t = model(x).argmax(1)
        f = _layer_out(model, x)
        y = model(x)[torch.arange(3), t]
        ref = torch.zeros(f.shape[:2])
        for k in range(f.shape[1]):  # by hand: y_c with channel k of the block's output zeroed
            fk = f.clone()
            fk[:, k] = 0
            s = model.stem(model.normalize(x))
            yk = model.fc(((fk + s) * fk).mean(dim=(2, 3)))[torch.arange(3), t]
            ref[:, k] = (y - yk) / y.abs()
        ref[f.flatten(2).eq(0).all(-1)] = 0
    stem_calls = []
    h = model.stem[0].register_forward_hook(lambda m, i, o: stem_calls.append(1) if isinstance(o, torch.Tensor) else None)
    try:
        for head_only in (True, False):
            stem_calls.clear()
            ex = AblationCAM(model, "block", batch_size=2, head_only=head_only)
            assert torch.allclose(ex.channel_weights(x, t), ref, atol=1e-5)
            n_pairs = int(f.flatten(2).ne(0).any(-1).sum())
            if head_only and cls is SkipNet:
                assert len(stem_calls) == 2  # the clean forward and the capture of the skip input
            else:
                assert len(stem_calls) == 1 + (n_pairs + 1) // 2  # + one full forward per chunk
    finally:
        h.remove()


def test_ablation_head_only_on_a_resnet_and_a_wsol_method():
    import torchvision

    from wsol.config import BackboneConfig, MethodConfig
    from wsol.methods.base import build_method

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=6).eval()
    method = build_method(MethodConfig(name="cam"), BackboneConfig(name="resnet18"), 3).eval()
    for model, layer, first in ((resnet, "layer3", resnet.conv1), (method, "layer4", method.backbone.conv1)):
        x = torch.rand(2, 3, 32, 32)
        calls = []
        h = first.register_forward_hook(lambda m, i, o: calls.append(1) if isinstance(o, torch.Tensor) else None)
        try:
            a = AblationCAM(model, layer, top_k=6).channel_weights(x)  # (6 channels per image: a fast test)
        finally:
            h.remove()
        assert len(calls) == 1  # the clean forward only: every ablated activation ran through the tail
        b = AblationCAM(model, layer, top_k=6, head_only=False, batch_size=64).channel_weights(x)
        assert int((a != 0).sum()) > 6
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_smoothgrad_sigma_is_in_normalised_units():
    # adding σ·std·δ to [0, 1] images is adding σ·δ after the model's normalisation: the same CAM
    # as the normalised model fed normalised images with normalization='none' (torchcam's units)
    model, x, t = _setup(2)

    class AfterNorm(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.stem, self.block, self.fc = m.stem, m.block, m.fc

        def forward(self, z):
            s = self.stem(z)
            b = self.block(s)
            return self.fc(((b + s) * b).mean(dim=(2, 3)))

    ours = SmoothGradCAMPlusPlus(model, "block", n_samples=3, sigma=0.3, seed=5)(x, t, raw=True)
    theirs = SmoothGradCAMPlusPlus(AfterNorm(model), "block", n_samples=3, sigma=0.3, seed=5,
                                   normalization="none")(model.normalize(x), t, raw=True)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ours, GradCAMPlusPlus(model, "block")(x, t, raw=True), atol=1e-3)
    # the noise std in pixel units is σ·std (here std = 0.2, 0.25, 0.3 from the model's Normalize)
    ex = SmoothGradCAMPlusPlus(model, "block", sigma=0.3)
    assert torch.allclose(ex.input_stats()[1].flatten(), torch.tensor([0.2, 0.25, 0.3]))


def test_normalization_option_and_errors():
    model, x, t = _setup()
    assert ScoreCAM(model, "block").input_stats()[0].flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
    plain = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    assert ScoreCAM(plain, "1").input_stats()[0].flatten().tolist() == pytest.approx(list(IMAGENET_MEAN))
    assert ScoreCAM(plain, "1", normalization="none").baseline_colour(x).flatten().tolist() == [0.0, 0.0, 0.0]
    custom = ScoreCAM(plain, "1", normalization=((0.5, 0.5, 0.5), (0.1, 0.1, 0.1)))
    assert custom.baseline_colour(x).flatten().tolist() == [0.5, 0.5, 0.5]
    two = nn.Sequential(Normalize((0.1, 0.1, 0.1), (1.0, 1.0, 1.0)), Normalize(), *plain)
    with pytest.raises(ConfigError, match="normalization=\\(mean, std\\)"):
        ScoreCAM(two, "3")(x)
    with pytest.raises(ConfigError, match="normalization"):
        ScoreCAM(model, "block", normalization="pixels")
    with pytest.raises(ConfigError, match="baseline"):
        ScoreCAM(model, "block", baseline="grey")
    with pytest.raises(ConfigError, match="memory_budget"):
        ScoreCAM(model, "block", memory_budget=0)
