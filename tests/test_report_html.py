"""The HTML report from a run folder: one column when best_loc and best_cls are one epoch,
extractor evaluations as extra columns, top-5 rows only with more than five classes, a
gallery of the best / median / worst images, and one readable error for a damaged file."""

import numpy as np
import pytest

from wsol.cli import main
from wsol.config import dump_config, load_config
from wsol.engine.pipeline import save_gallery
from wsol.fileio import atomic_write_text, write_json
from wsol.report import figures
from wsol.report.html import merge_same_epoch, write_report
from wsol.runs import RunInfo, eval_dir, update_summary, write_run_info

MASK = np.zeros((16, 16), np.uint8)
MASK[4:12, 4:12] = 1


def _item(i, shift):
    """A gallery item whose CAM is the mask's 8×8 square moved right by ``shift`` pixels
    (cut at the image border): IoU at τ = 0.5 worked out by hand in the tests."""
    cam = np.zeros((16, 16), np.float32)
    cam[4:12, 4 + shift:12 + shift] = 1
    return {"image": np.full((16, 16, 3), 60 * i % 255, np.uint8), "cam": cam, "label": i % 2,
            "image_id": f"img_{i}.png", "mask": MASK}


def make_evaluated_run(path, n_classes=2, epochs=None, extra_columns=()):
    """A run folder holding what training and `wsol evaluate` write (no training needed)."""
    epochs = epochs or {"best_loc": 3, "best_cls": 3}
    cfg = load_config(None, [f"run_dir={path}", "data.name=synthetic-glas", "model.backbone.cam_friendly=false"])
    atomic_write_text(path / "config.yaml", dump_config(cfg))
    write_run_info(path, RunInfo(method="cam", class_names=[f"c{i}" for i in range(n_classes)], loc_kind="mask",
                                 image_size=16, data_root=str(path), dataset="synthetic-glas"))
    atomic_write_text(path / "history.csv", "epoch,train/total,valpx/pxap\n1,1.0,40\n2,0.5,50\n3,0.4,60\n")
    columns = {}
    for col in [*epochs, *extra_columns]:
        ckpt = col.partition("+")[0]
        metrics = {"top1_acc": 90.0, "top5_acc": 100.0, "pxap": 70.0 + len(col), "tau": 0.5, "epoch": epochs[ckpt]}
        d = eval_dir(path, col, "test")
        write_json(d / "metrics.json", metrics)
        write_json(d / "curves.json", {})
        save_gallery(d / "gallery.npz", [_item(i, s) for i, s in enumerate((0, 4, 2, 1, 6))])
        columns[col] = metrics
    update_summary(path, "test", columns)
    return path


def _header(html):
    return html.split("<thead>")[1].split("</thead>")[0]


def test_same_epoch_is_one_column_and_extractors_are_extra_columns(tmp_path):
    run = make_evaluated_run(tmp_path / "run", extra_columns=("best_loc+gradcam", "best_cls+gradcam"))
    html = write_report(run).read_text()
    head = _header(html)
    assert "best_loc = best_cls</th>" in head and "best_loc = best_cls+gradcam</th>" in head
    assert head.count("<th>") == 3  # metric + two columns
    assert "<h2>best_loc = best_cls+gradcam: localisation</h2>" in html


def test_different_epochs_keep_both_columns(tmp_path):
    run = make_evaluated_run(tmp_path / "run", epochs={"best_loc": 2, "best_cls": 3})
    head = _header(write_report(run).read_text())
    assert "best_loc</th>" in head and "best_cls</th>" in head and " = " not in head


def test_merge_keeps_the_first_columns_numbers():
    evals = {"best_loc": {"metrics": {"epoch": 4, "pxap": 1.0}}, "best_cls": {"metrics": {"epoch": 4, "pxap": 1.0}},
             "last": {"metrics": {"epoch": 9, "pxap": 2.0}}}
    merged = merge_same_epoch(evals)
    assert list(merged) == ["best_loc = best_cls", "last"] and merged["last"]["metrics"]["pxap"] == 2.0


@pytest.mark.parametrize("n_classes,shown", [(2, False), (5, False), (6, True)])
def test_top5_rows_only_with_more_than_five_classes(tmp_path, n_classes, shown):
    html = write_report(make_evaluated_run(tmp_path / "run", n_classes=n_classes)).read_text()
    assert ("Top-5 accuracy" in html) is shown


def test_gallery_shows_best_median_worst_with_their_iou(tmp_path, monkeypatch):
    shown = []
    real = figures._png

    def spy(fig):
        fig.canvas.draw()
        shown.append([ax.get_title() for ax in fig.axes])
        return real(fig)

    monkeypatch.setattr(figures, "_png", spy)
    items = [_item(i, s) for i, s in enumerate((0, 4, 2, 1, 6))]
    figures.gallery(items, 0.5, ["benign", "malignant"])
    firsts = [t for t in shown[0] if "IoU" in t]
    # IoU by hand (intersection / union of pixels): shift 0 -> 64/64; 1 -> 56/72; 2 -> 48/80 = 0.6;
    # 4 -> 32/96; 6 -> the CAM keeps 6 columns (10..15): 16/(64 + 48 - 16) = 0.17. Median: 0.6
    assert [t.split("\n")[0] for t in firsts] == ["best · IoU 1.00", "median · IoU 0.60", "worst · IoU 0.17"]
    assert "img_0.png" in firsts[0] and "class: benign" in firsts[0]


def test_titles_do_not_overlap(tmp_path, monkeypatch):
    """Constrained layout: no two axis titles of a gallery (long image ids, 3 lines) overlap."""
    boxes = []
    real = figures._png

    def spy(fig):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        boxes.extend(ax.title.get_window_extent(r) for ax in fig.axes if ax.get_title())
        return real(fig)

    monkeypatch.setattr(figures, "_png", spy)
    items = [dict(_item(i, s), image_id="a/very/long/folder/name/of/the/image_" + "x" * 40 + f"{i}.png")
             for i, s in enumerate((0, 3, 6))]
    figures.gallery(items, 0.5, ["a", "b"])
    assert len(boxes) == 12
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)


def test_box_gallery_draws_gt_and_predicted_boxes(monkeypatch):
    drawn = []
    real = figures._draw_boxes

    def spy(ax, boxes, color, label=None):
        drawn.append((color, np.asarray(boxes, float).reshape(-1, 4).tolist()))
        real(ax, boxes, color, label)

    monkeypatch.setattr(figures, "_draw_boxes", spy)
    cam = np.zeros((16, 16), np.float32)
    cam[2:8, 3:10] = 1
    item = {"image": np.zeros((16, 16, 3), np.uint8), "cam": cam, "label": 0, "image_id": "b.png",
            "boxes": np.array([[3, 2, 10, 8]], np.float32)}
    assert figures.gallery([item], None, None, box_tau=0.5) is not None
    assert ("lime", [[3, 2, 10, 8]]) in drawn
    assert ("red", [[3, 2, 10, 8]]) in drawn  # the CAM's rectangle: boundingRect (3, 2, w=7, h=6)


@pytest.mark.parametrize("damage,name", [
    ("history.csv", "history.csv"),
    ("metrics.json", "metrics.json"),
    ("eval/best_loc/test/metrics.json", "eval/best_loc/test/metrics.json"),
    ("eval/best_loc/test/gallery.npz", "gallery.npz"),
])
def test_damaged_files_give_one_readable_error(tmp_path, capsys, damage, name):
    run = make_evaluated_run(tmp_path / "run", epochs={"best_loc": 2, "best_cls": 3})
    path = run / damage
    if damage == "history.csv":
        path.write_text("epoch,loss\n1,0.5\n2,not-a-number\n")
    elif damage.endswith(".npz"):
        path.write_bytes(path.read_bytes()[:100])  # truncated zip
    else:
        path.write_text('{"best_loc": {"pxap": 1')  # truncated JSON
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and name in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2


def test_a_json_summary_of_the_wrong_shape_is_named(tmp_path, capsys):
    run = make_evaluated_run(tmp_path / "run")
    (run / "eval/best_cls/test/metrics.json").write_text("[1, 2, 3]")
    assert main(["report", str(run)]) == 2
    assert "eval/best_cls/test/metrics.json: damaged metrics" in capsys.readouterr().err


def test_columns_are_found_without_a_summary(tmp_path):
    """The evaluated folders alone (eval/<column>/test/) give the columns when RUN/metrics.json
    is gone: every column of eval/, each named by its folder."""
    run = make_evaluated_run(tmp_path / "run", epochs={"best_loc": 2, "best_cls": 3}, extra_columns=("best_loc+gradcam",))
    (run / "metrics.json").unlink()
    head = _header(write_report(run).read_text())
    assert all(f"{c}</th>" in head for c in ("best_loc", "best_cls", "best_loc+gradcam")) and "test</th>" not in head
