"""The U-Net full-supervision baseline (wsol.methods.unet): pixel targets from masks and
boxes, the per-pixel cross-entropy with 255 ignored, classification-free outputs, its CAMs,
and the FSL variant that trains on valpx."""

import pytest
import torch
import torch.nn.functional as F

import wsol.methods.unet  # noqa: F401  (registers unet)
from wsol.config import BackboneConfig, MethodConfig, load_config
from wsol.data.sample import collate
from wsol.errors import ConfigError
from wsol.methods.base import TrainState, build_method
from wsol.methods.unet import UNet, pixel_targets

SIZE = 32


def _unet(**params):
    params = {"decoder_channels": [16, 16, 8, 8, 8], **params}
    return build_method(MethodConfig(name="unet", params=params), BackboneConfig(name="resnet18"), 2)


def _sample(i, mask=None, boxes=None):
    g = torch.Generator().manual_seed(i)
    s = {"image": torch.rand(3, SIZE, SIZE, generator=g), "label": i % 2, "image_id": f"im{i}"}
    if mask is not None:
        s["mask"] = mask
    if boxes is not None:
        s["boxes"] = torch.tensor(boxes, dtype=torch.float32)
    return s


def test_pixel_targets_masks_boxes_and_ignore():
    m = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    m[4:8, 4:8] = 1
    m[0, 0] = 255
    batch = collate([_sample(0, mask=m), _sample(1, boxes=[[2.0, 3.0, 5.0, 7.0]]), _sample(2)])
    t = pixel_targets(batch, box_masks=True)
    assert t.dtype == torch.long and t.shape == (3, SIZE, SIZE)
    assert torch.equal(t[0], m.long())  # the mask as it is, 255 kept
    # box [2, 5) × [3, 7): pixel centres x + 0.5 in [2, 5) -> columns 2..4, rows 3..6
    expect = torch.zeros(SIZE, SIZE, dtype=torch.long)
    expect[3:7, 2:5] = 1
    assert torch.equal(t[1], expect)
    assert bool((t[2] == 255).all())  # no mask, no box: ignored
    assert bool((pixel_targets(batch, box_masks=False)[1] == 255).all())


def test_training_step_is_pixel_cross_entropy_with_ignore():
    torch.manual_seed(0)
    net = _unet()
    m = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    m[8:20, 8:20] = 1
    m[:2] = 255
    batch = collate([_sample(0, mask=m), _sample(1, mask=torch.zeros(SIZE, SIZE, dtype=torch.uint8))])
    net.train()
    torch.manual_seed(1)
    terms = net.training_step(batch, TrainState())
    assert set(terms) == {"pixel_ce", "total"}
    net.eval()  # same BN statistics path for the reference: recompute in eval mode on both sides
    with torch.no_grad():
        seg = net.segment(batch.images)
        target = batch.masks.long()
        valid = target != 255
        logp = F.log_softmax(seg, 1)
        ref = -logp.gather(1, target.clamp(max=1)[:, None])[:, 0][valid].mean()
        again = net.training_step(batch, TrainState())["total"]
    torch.testing.assert_close(again, ref)
    assert terms["total"].requires_grad


def test_no_labelled_pixel_gives_zero_loss_with_graph():
    net = _unet()
    batch = collate([_sample(0), _sample(1)])  # no mask, no box
    total = net.training_step(batch, TrainState())["total"]
    assert float(total.detach()) == 0.0 and total.requires_grad
    total.backward()  # the graph exists: the engine's step runs


def test_forward_is_classification_free_and_localize_is_the_foreground_probability():
    net = _unet().eval()
    images = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        out = net(images)
        assert torch.equal(out.logits, torch.zeros(3, 2))
        assert out.maps is None and out.extras["segmentation"].shape == (3, 2, SIZE, SIZE)
        cams = net.localize(images, torch.tensor([0, 1, 0]))
        fg = torch.softmax(net.segment(images), 1)[:, 1]
    torch.testing.assert_close(cams, fg)
    assert cams.min() >= 0 and cams.max() <= 1
    assert UNet.classifies is False
    net_mm = _unet(minmax=True).eval()
    net_mm.load_state_dict(net.state_dict())
    with torch.no_grad():
        mm = net_mm.localize(images)
    flat = mm.flatten(1)
    torch.testing.assert_close(flat.min(1).values, torch.zeros(3))
    torch.testing.assert_close(flat.max(1).values, torch.ones(3))


def test_a_few_steps_fit_a_fixed_mask():
    """Full supervision learns: 15 SGD steps on one batch lower the pixel cross-entropy."""
    torch.manual_seed(0)
    net = _unet()
    m = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    m[8:24, 8:24] = 1
    batch = collate([_sample(i, mask=m) for i in range(4)])
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = net.training_step(batch, TrainState())["total"]
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_train_split_param():
    assert _unet().train_split == "train"
    assert _unet(train_split="valpx").train_split == "valpx"
    with pytest.raises(ConfigError, match="train_split"):
        _unet(train_split="test")


def test_fsl_trains_on_valpx_through_the_engine(tmp_path):
    """The FSL baseline: the trainer reads ``method.train_split`` (engine: Trainer._fit makes
    its training loader from it), so an FSL epoch sees the valpx images only."""
    from wsol.data import synthesize
    from wsol.data.registry import build_dataset
    from wsol.engine.callbacks import Callbacks
    from wsol.engine.trainer import Trainer

    root = synthesize("synthetic-glas", tmp_path / "data", n=8, size=SIZE, seed=1)

    class Stages(Callbacks):
        def __init__(self):
            self.totals = {}

        def on_stage(self, name, total):
            self.totals[name] = total

    cfg = load_config(None, [
        "data.name=synthetic-glas", f"data.root={root}", f"data.image_size={SIZE}", f"run_dir={tmp_path / 'fsl'}",
        "model.method.name=unet", "model.method.params.train_split=valpx",
        "model.method.params.decoder_channels=[16, 16, 8, 8, 8]", "optim.epochs=1", "optim.batch_size=4",
        "eval.gallery=0", "device=cpu",
    ])
    cb = Stages()
    Trainer(cfg, callbacks=cb).fit()
    n_valpx = len(build_dataset(cfg.data, "valpx"))
    n_train = len(build_dataset(cfg.data, "train"))
    assert n_valpx != n_train
    assert cb.totals["epoch 1/1"] == n_valpx
