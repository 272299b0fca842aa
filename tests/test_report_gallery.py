"""wsol.report.gallery (per-image IoU, best / median / worst) and wsol.report.tb
(TensorBoard overlays, hyper-parameters, counters kept out of the scalars)."""

import numpy as np
import pytest

from wsol.report.gallery import GalleryPool, item_iou, mask_iou, pick, predicted_box
from wsol.report.tb import flat_hparams, scalar_items, tb_hparams, tb_images


def test_mask_iou_by_hand():
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 1  # 4 ROI pixels
    mask[3, 3] = 255  # ignored
    cam = np.zeros((4, 4), np.float32)
    cam[:2, :3] = 0.9  # 6 predicted, 4 of them right
    cam[3, 3] = 1.0  # on an ignored pixel: not counted
    assert mask_iou(cam, mask, 0.5) == pytest.approx(4 / 6)
    # an image without ROI is judged on its background: 15 valid pixels, 6 predicted as ROI
    empty = np.where(mask == 255, 255, 0).astype(np.uint8)
    assert mask_iou(cam, empty, 0.5) == pytest.approx(9 / 15)
    assert mask_iou(np.zeros((4, 4), np.float32), empty, 0.5) == 1.0


def test_predicted_box_is_the_largest_contour():
    cam = np.zeros((20, 20), np.float32)
    cam[2:5, 2:5] = 1.0  # 3×3 blob
    cam[8:16, 6:18] = 0.8  # 8×12 blob: the largest
    box = predicted_box(cam, 0.5)
    assert box.tolist() == [6, 8, 18, 16]  # (x, y, x + w, y + h), boundingRect
    item = {"cam": cam, "boxes": np.array([[6, 8, 18, 16], [0, 0, 3, 3]], np.float32)}
    assert item_iou(item, 0.5) == pytest.approx(1.0)


def test_pick_orders_by_iou_and_keeps_three():
    items = [{"cam": np.ones((2, 2), np.float32), "iou": v, "image_id": str(v)} for v in (0.3, 0.9, 0.1, 0.5, 0.7)]
    got = pick(items, 0.5)
    assert [(it["rank"], it["iou"]) for it in got] == [("best", 0.9), ("median", 0.5), ("worst", 0.1)]
    assert [it["rank"] for it in pick(items[:1], 0.5)] == ["best"]  # one image: one row


def test_pool_over_a_split_finds_the_extremes_and_the_median():
    pool = GalleryPool(candidates=8, seed=0)
    rng = np.random.default_rng(0)
    ious = rng.random(500)
    for i, v in enumerate(ious):
        pool.add({"image_id": i}, float(v))
    best, median, worst = pool.items()
    assert best["iou"] == ious.max() and worst["iou"] == ious.min()
    assert best["rank"] == "best" and worst["rank"] == "worst"
    assert abs(median["iou"] - np.median(ious)) < 0.1  # the sampled image nearest the split's median
    # items chosen by the pool keep their rank when the report picks from them
    assert [it["rank"] for it in pick(pool.items()[::-1], None)] == ["best", "median", "worst"]


class FakeWriter:
    def __init__(self):
        self.images = []

    def add_image(self, tag, img, step, dataformats):
        self.images.append((tag, img.shape, step, dataformats))


def test_tb_images_logs_overlays_side_by_side():
    w = FakeWriter()
    mask = np.zeros((8, 10), np.uint8)
    items = [{"image": np.zeros((8, 10, 3), np.uint8), "cam": np.ones((8, 10), np.float32), "image_id": f"i{k}",
              "mask": mask if k == 0 else None} for k in range(6)]
    assert tb_images(w, items, step=3, max_images=4) == 4
    assert w.images[0] == ("cams/0_i0", (8, 30, 3), 3, "HWC")  # image | overlay | mask
    assert w.images[1][1] == (8, 20, 3)  # no mask: image | overlay


def test_counters_stay_out_of_the_scalars_and_hparams_are_flat(tmp_path):
    row = {"epoch": 2, "train/total": 0.5, "valpx/pxap": 60.0, "valpx/n_pixels_fg": 1000, "valcl/n_images": 50,
           "valpx/f1_fg_images": 3, "lr": 0.01}
    assert scalar_items(row) == {"train/total": 0.5, "valpx/pxap": 60.0, "lr": 0.01}
    assert flat_hparams({"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "data": {"options": {}}, "seed": 0}) == {
        "optim.lr": 0.1, "optim.betas": "[0.9, 0.99]", "data.options": "{}", "seed": 0}
    tb = pytest.importorskip("torch.utils.tensorboard")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with tb.SummaryWriter(str(tmp_path)) as w:
        tb_hparams(w, {"seed": 1, "optim": {"lr": 0.1}}, {"pxap": 55.0, "n_images": 10, "tau": 0.3}, step=4)
    acc = ea.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["hparam/pxap", "hparam/tau"]  # the counter is left out
    assert [(e.step, e.value) for e in acc.Scalars("hparam/pxap")] == [(4, 55.0)]
    assert len(list(tmp_path.rglob("events.out.tfevents.*"))) == 1


def test_tb_helpers_with_a_real_summary_writer(tmp_path):
    tb = pytest.importorskip("torch.utils.tensorboard")
    from wsol.config import RunConfig

    writer = tb.SummaryWriter(str(tmp_path))
    items = [{"image": np.zeros((8, 8, 3), np.uint8), "cam": np.ones((8, 8), np.float32), "image_id": "x"}]
    assert tb_images(writer, items, 0) == 1
    tb_hparams(writer, RunConfig(), {"pxap": 50.0})
    writer.close()
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_training_logs_overlays_hparams_and_no_counters(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from wsol.config import load_config
    from wsol.data import synthesize
    from wsol.engine.trainer import TB_IMAGES, Trainer

    root = synthesize("synthetic-glas", tmp_path / "d", n=4, size=32, seed=0)
    cfg = load_config(None, ["data.name=synthetic-glas", f"data.root={root}", "data.image_size=32",
                             f"run_dir={tmp_path / 'run'}", "optim.epochs=2", "optim.batch_size=4",
                             "data.num_workers=0", "eval.gallery=0"])
    Trainer(cfg).fit()
    acc = ea.EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    overlays = [t for t in tags["images"] if t.startswith("cams/")]
    assert 0 < len(overlays) <= TB_IMAGES
    assert [e.step for e in acc.Images(overlays[0])] == [0, 1]  # one per validation
    assert "valpx/pxap" in tags["scalars"] and "train/total" in tags["scalars"]
    assert not [t for t in tags["scalars"] if t.rsplit("/", 1)[-1].startswith("n_")]  # counters left out
    events = list((tmp_path / "run" / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 1 and b"hparams" in events[0].read_bytes()  # one event file holds everything
    assert "hparam/valpx/pxap" in tags["scalars"]


def test_evaluator_gallery_is_the_split_best_median_and_worst():
    """With τ known (test split, τ* from valpx) the gallery is chosen over the whole split,
    not among the first images: CAM k covers the first c_k columns, the ROI the left half."""
    import torch

    from wsol.data.sample import Batch
    from wsol.engine.evaluate import Evaluator

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return self.w.expand(len(x), 2)

    cols = [2, 3, 5, 6, 7, 8, 4, 1, 3, 6]  # IoU with cols < 4: min(c, 4) / max(c, 4)
    images = torch.zeros(len(cols), 3, 8, 8)
    for k, c in enumerate(cols):
        images[k, 0, :, :c] = 1.0
    masks = torch.zeros(len(cols), 8, 8, dtype=torch.uint8)
    masks[:, :, :4] = 1
    batches = [Batch(images=images[i:i + 5], labels=torch.zeros(5, dtype=torch.long),
                     image_ids=[f"im{k}" for k in range(i, i + 5)], masks=masks[i:i + 5],
                     has_mask=torch.ones(5, dtype=torch.bool)) for i in (0, 5)]
    ev = Evaluator(Fixed(), loc_kind="mask", device=torch.device("cpu"), localizer=lambda x, t: x[:, 0])
    res = ev.run(batches, tau=0.5, gallery=8)
    ranks = {it["rank"]: (it["image_id"], round(it["iou"], 3)) for it in res.gallery}
    assert ranks["best"] == ("im6", 1.0) and ranks["worst"] == ("im7", 0.25)
    assert ranks["median"][1] == 0.667  # the split's median IoU (two images at 2/3)
    assert [it["image_id"] for it in ev.run(batches, gallery=3).gallery] == ["im0", "im1", "im2"]  # τ unknown
