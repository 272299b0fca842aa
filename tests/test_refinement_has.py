"""HaS: exactly the drawn grid cells are hidden (filled with the mean), per axis on
non-square images, only in training."""

from __future__ import annotations

import pytest
import torch

from wsol.config import BackboneConfig, MethodConfig
from wsol.data.sample import Batch
from wsol.errors import ConfigError
from wsol.methods import TrainState, build_method
from wsol.methods.has import HaSParams, cells_to_pixels, hidden_cells, hide_patches
from wsol.nn.backbones import IMAGENET_MEAN

FILL = (0.1, 0.2, 0.3)


def test_cells_to_pixels_by_hand():
    cells = torch.tensor([[[True, False], [False, True]]])
    # 3×5 image, patches 2 rows × 3 columns: cell (0,0) = rows 0-1 × cols 0-2, cell (1,1) = row 2 × cols 3-4
    want = torch.tensor([[[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]]], dtype=torch.bool)
    assert torch.equal(cells_to_pixels(cells, (3, 5), (2, 3)), want)


@pytest.mark.parametrize(
    "size,grid,n_cells", [((32, 32), 8, (4, 4)), ((40, 24), 16, (3, 2)), ((40, 24), (8, 12), (5, 2))]
)
def test_hides_exactly_the_drawn_cells(size, grid, n_cells):
    h, w = size
    images = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(0))
    out, cells = hide_patches(images, grid, 0.4, FILL, generator=torch.Generator().manual_seed(7))
    # the same seed drawn by hand: one uniform per cell, hidden when < p
    want_cells = torch.rand(3, *n_cells, generator=torch.Generator().manual_seed(7)) < 0.4
    assert torch.equal(cells, want_cells)
    assert 0 < int(cells.sum()) < cells.numel()
    sh, sw = (grid, grid) if isinstance(grid, int) else grid
    fill = torch.tensor(FILL).view(3, 1, 1)
    for b in range(3):
        for i in range(n_cells[0]):
            for j in range(n_cells[1]):
                ys, xs = slice(i * sh, min((i + 1) * sh, h)), slice(j * sw, min((j + 1) * sw, w))
                patch = out[b, :, ys, xs]
                if want_cells[b, i, j]:
                    assert torch.equal(patch, fill.expand_as(patch))
                else:
                    assert torch.equal(patch, images[b, :, ys, xs])


def test_drop_rate_extremes_and_input_untouched():
    images = torch.rand(2, 3, 20, 30)
    keep = images.clone()
    out0, cells0 = hide_patches(images, 7, 0.0)
    out1, cells1 = hide_patches(images, 7, 1.0)
    assert cells0.shape == cells1.shape == (2, 3, 5)  # ceil(20/7), ceil(30/7)
    assert not cells0.any() and cells1.all()
    assert torch.equal(out0, images)
    assert torch.allclose(out1, torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand_as(images))
    assert torch.equal(images, keep)


def test_hidden_cells_rate():
    cells = hidden_cells(200, (64, 64), 8, 0.3, generator=torch.Generator().manual_seed(0))
    assert abs(cells.float().mean().item() - 0.3) < 0.01  # 12800 cells


def _backbone_input(method, fn):
    seen = []
    hook = method.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        fn()
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("size", [(32, 32), (48, 32)])
def test_training_hides_eval_never(size):
    method = build_method(
        MethodConfig(name="has", params={"grid_size": 8, "drop_rate": 0.5, "fill": list(FILL)}),
        BackboneConfig(name="resnet18"),
        num_classes=2,
    )
    images = torch.rand(2, 3, *size)
    batch = Batch(images=images, labels=torch.tensor([0, 1]), image_ids=["a", "b"])

    method.train()
    torch.manual_seed(5)
    seen = _backbone_input(method, lambda: method.training_step(batch, TrainState()))
    torch.manual_seed(5)
    want, cells = hide_patches(images, 8, 0.5, FILL)
    assert cells.shape == (2, size[0] // 8, size[1] // 8) and cells.any()
    assert len(seen) == 1 and torch.equal(seen[0], want)

    method.eval()  # evaluation: the images reach the backbone untouched
    seen = _backbone_input(
        method, lambda: (method.localize(images), method(images), method.training_step(batch, TrainState()))
    )
    assert len(seen) == 3 and all(torch.equal(s, images) for s in seen)


def test_params_validation():
    assert HaSParams(grid_size=[8, 16]).grid_size == (8, 16)
    for bad in ({"grid_size": 0}, {"drop_rate": 1.5}, {"fill": [0, 0, 2]}):
        with pytest.raises(ConfigError, match="model.method.params"):
            build_method(MethodConfig(name="has", params=bad), BackboneConfig(name="resnet18"), 2)
