"""maxmin / pn / erase as methods: one training step on a tiny set (8 images 32², resnet18),
named terms, CAM contract, per-image masks, epoch schedules, paper configs."""

import math
from pathlib import Path

import pytest
import torch

from wsol.cams import check_cams
from wsol.config import BackboneConfig, MethodConfig, load_config
from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.losses import BarrierSchedule, absolute_size_constraint
from wsol.methods import TrainState, build_method
from wsol.methods.erase import erase
from wsol.methods.pn import presence_bounds

BACKBONE = BackboneConfig(name="resnet18", cam_friendly=True)  # stride < 32: maps larger than 1×1 at 32²
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "methods"


def tiny_batch(n: int = 8, num_classes: int = 2) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(images=torch.rand(n, 3, 32, 32, generator=g), labels=torch.arange(n) % num_classes,
                 image_ids=[str(i) for i in range(n)])


def build(name: str, num_classes: int = 2, **params):
    torch.manual_seed(0)
    return build_method(MethodConfig(name=name, params=params), BACKBONE, num_classes)


def train_one_step(method, batch, epoch: int = 0) -> dict:
    method.train()
    method.on_epoch_start(epoch)
    opt = torch.optim.SGD(method.param_groups(0.01, 10.0), lr=0.01, momentum=0.9)
    terms = method.training_step(batch, TrainState(epoch=epoch))
    opt.zero_grad()
    terms["total"].backward()
    opt.step()
    return terms


def assert_cam_contract(method, images):
    method.eval()
    with torch.no_grad():
        cams = method.localize(images)
        cams_t = method.localize(images, torch.zeros(len(images), dtype=torch.long))
    for c in (cams, cams_t):
        assert c.shape == (len(images), *images.shape[-2:])
        check_cams(c)


@pytest.mark.parametrize(
    "params, names",
    [
        (dict(regularizer="sem", size_constraint=True), {"fg_ce", "bg_reg", "size_fg", "size_bg", "loc_ce"}),
        (
            dict(regularizer="eem", size_constraint=True, share_backbone=True),
            {"fg_ce", "bg_reg", "size_fg", "size_bg", "loc_ce"},
        ),
        (dict(regularizer="none", size_constraint=False), {"fg_ce", "loc_ce"}),
    ],
)
def test_maxmin_trains_one_step(params, names):
    method = build("maxmin", **params)
    batch = tiny_batch()
    terms = train_one_step(method, batch)
    assert set(terms) == names | {"total", "fg_size"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["total"].item() == pytest.approx(sum(terms[k].item() for k in names), rel=1e-5)
    # both networks received gradients (C through X+, M through the mask and its own CE)
    for prefix in ("backbone.", "head.", "cls_head.") + (() if params.get("share_backbone") else ("cls_backbone.",)):
        grads = [p.grad for n, p in method.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None for g in grads), prefix
        assert any(g.abs().sum() > 0 for g in grads), prefix
    assert_cam_contract(method, batch.images)


def test_maxmin_share_backbone_and_param_groups():
    shared, two = build("maxmin", share_backbone=True), build("maxmin", share_backbone=False)
    n_shared = sum(p.numel() for p in shared.parameters())
    n_two = sum(p.numel() for p in two.parameters())
    assert n_two - n_shared == sum(p.numel() for p in two.cls_backbone.parameters())
    groups = {g["name"]: g for g in two.param_groups(0.1, 10.0)}
    n_back = sum(p.numel() for p in groups["backbone"]["params"])
    assert n_back == 2 * sum(p.numel() for p in two.backbone.parameters())
    assert groups["head"]["lr"] == pytest.approx(1.0)


def test_maxmin_forward_localize_binary_and_per_image_masks():
    method = build("maxmin")
    method.eval()
    images = tiny_batch(4).images
    images[1] = images[1] * 0.1  # a dim image: another activation range
    with torch.no_grad():
        out = method(images)
        assert out.logits.shape == (4, 2) and out.maps.shape[:2] == (4, 2) and out.maps.shape[-1] > 1
        assert out.extras["mask"].shape == (4, 32, 32)
        both = method.masks(images)
        alone = [method.masks(images[i : i + 1]) for i in range(4)]
        for key in ("fg", "mask"):
            assert torch.allclose(both[key], torch.cat([a[key] for a in alone]), atol=1e-5)
        binary = method.localize_binary(images)
        assert set(binary.unique().tolist()) <= {0.0, 1.0}
        fg = both["fg"]
        clear = (fg - method.params.sigma).abs() > 1e-4  # Eq. 12 at 0.5 <=> M+ >= σ
        assert torch.equal(binary[clear], (fg[clear] >= method.params.sigma).float())
        assert torch.allclose(method.localize(images), fg, atol=1e-6)  # graded M+, before the sigmoid


def test_maxmin_t_schedule_via_on_epoch_start():
    method = build("maxmin", t0=5.0, t_factor=1.01, t_max=10.0)
    assert method.t == 5.0
    for e in range(8):
        method.on_epoch_start(e)
    fresh = build("maxmin", t0=5.0, t_factor=1.01, t_max=10.0)
    fresh.on_epoch_start(7)  # a resumed run lands on the same t
    assert method.t == fresh.t == pytest.approx(5 * 1.01**7)
    method.on_epoch_start(500)
    assert method.t == 10.0
    # training_step uses the epoch's t: in eval mode the mask is deterministic
    method.eval()
    batch = tiny_batch(2)
    terms = method.training_step(batch, TrainState(epoch=500))
    with torch.no_grad():
        mask = method.masks(batch.images)["mask"]
    fg_t, bg_t = absolute_size_constraint(mask, 10.0)
    assert terms["size_fg"].item() == pytest.approx(fg_t.item(), rel=1e-5)
    assert terms["size_bg"].item() == pytest.approx(bg_t.item(), rel=1e-5)
    with pytest.raises(Exception, match="t_max"):
        build("maxmin", t0=5.0, t_max=1.0)


def test_pn_bounds_and_step_by_hand():
    lower, upper = presence_bounds(torch.tensor([0, 1, 2]), 3, n_cells=4, negative_class=0, min_size=1.0)
    inf = math.inf
    assert lower.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert upper.tolist() == [[inf, 0, 0], [inf, 4, 0], [inf, 0, 4]]
    lower_n, upper_n = presence_bounds(torch.tensor([0, 1]), 2, 4, None, 1.0)
    assert lower_n.tolist() == [[1, 0], [0, 1]] and upper_n.tolist() == [[4, 0], [0, 4]]
    # zero head -> every class map is 0, sigmoid 1/2, size s = n/2 of the n map cells, logits 0
    method = build("pn", num_classes=3, size_weight=1.0)
    torch.nn.init.zeros_(method.head.conv.weight)
    torch.nn.init.zeros_(method.head.conv.bias)
    batch = Batch(images=tiny_batch(3).images, labels=torch.tensor([0, 1, 2]), image_ids=["a", "b", "c"])
    terms = method.training_step(batch, TrainState())
    s = method(batch.images).maps[0, 0].numel() / 2
    assert terms["ce"].item() == pytest.approx(math.log(3.0), rel=1e-5)
    # image 0 (negative): classes 1, 2 absent -> 2·s²; images 1, 2: one absent class -> s² each
    assert terms["size"].item() == pytest.approx((2 * s**2 + s**2 + s**2) / 3, rel=1e-5)
    assert terms["total"].item() == pytest.approx(terms["ce"].item() + terms["size"].item())
    with pytest.raises(ConfigError, match="negative_class"):
        build("pn", num_classes=2, negative_class=2)


def test_pn_trains_one_step():
    method = build("pn")
    batch = tiny_batch()
    terms = train_one_step(method, batch)
    assert set(terms) == {"ce", "size", "total"} and all(torch.isfinite(v) for v in terms.values())
    assert_cam_contract(method, batch.images)


def test_erase_function_by_hand():
    img = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [0.0, 4.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    region = torch.tensor([[[False, False], [False, True]]])
    out = erase(img, region, "mean")
    assert out[0, :, 1, 1].tolist() == [4.0, 1.0, 2.0]  # channel means of the image
    assert torch.equal(out[0, :, 0, 0], img[0, :, 0, 0])
    assert erase(img, region, "zero")[0, :, 1, 1].tolist() == [0.0, 0.0, 0.0]


def test_erase_depth_schedule_and_step():
    method = build("erase", max_depth=2, depth_every=3)
    depths = []
    for e in range(9):
        method.on_epoch_start(e)
        depths.append(method.depth)
    assert depths == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert int(method.state_dict()["erase_depth"]) == 2  # saved with a checkpoint
    batch = tiny_batch()
    terms0 = train_one_step(build("erase"), batch, epoch=0)
    assert terms0["ce_erased"].item() == 0.0 and terms0["erased_frac"].item() == 0.0
    terms = train_one_step(method, batch, epoch=8)
    assert set(terms) == {"ce", "ce_erased", "total", "erased_frac"}
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["ce_erased"].item() > 0 and 0 < terms["erased_frac"].item() <= 1
    assert_cam_contract(method, batch.images)
    # depth 0: the union is the plain class CAM
    plain = build("erase")
    plain.eval()
    with torch.no_grad():
        x = batch.images
        out = plain(x)
        t = out.logits.argmax(1)
        ref = plain.class_cam(out.maps, t, (32, 32))
        assert torch.allclose(plain.localize(x), ref)


@pytest.mark.parametrize(
    "name, method, reg, asc",
    [
        ("maxmin-fg-only", "maxmin", "none", False),
        ("maxmin-fg-bg-eem", "maxmin", "eem", False),
        ("maxmin-fg-bg-sem", "maxmin", "sem", False),
        ("maxmin-fg-bg-asc", "maxmin", "sem", True),
        ("maxmin-fg-bg-eem-asc", "maxmin", "eem", True),
        ("maxmin-glas", "maxmin", "sem", True),
        ("maxmin-camelyon", "maxmin", "sem", True),
        ("pn", "pn", None, None),
        ("erase", "erase", None, None),
    ],
)
def test_method_configs_validate(name, method, reg, asc):
    # the model section lives in methods/; a paper's full settings (optim, data) in recipes/
    recipe = CONFIGS.parent / "recipes" / f"{name}.yaml"
    cfg = load_config([recipe if recipe.is_file() else CONFIGS / f"{name}.yaml"])
    assert cfg.model.method.name == method
    from wsol.methods.base import get_method_class

    params = get_method_class(method).Params.model_validate(cfg.model.method.params)
    if reg is not None:
        assert params.regularizer == reg and params.size_constraint == asc
    if name == "maxmin-camelyon":
        assert (params.t0, params.t_factor, params.t_max, params.modalities) == (10.0, 1.1, 30.0, 4)
        assert BarrierSchedule(params.t0, params.t_factor, params.t_max).t_at(19) == 30.0
        assert cfg.optim.epochs == 20 and cfg.optim.batch_size == 8 and cfg.optim.lr == 0.001
    if name == "maxmin-glas":
        assert (params.reg_weight, params.sigma, params.omega, params.kmax, params.kmin) == (1e-7, 0.15, 5.0, 0.3, 0)
        assert cfg.optim.epochs == 80 and cfg.optim.batch_size == 4
