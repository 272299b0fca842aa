"""A really tiny suite end to end (2 trained methods — CAM with one extractor, U-Net — plus
the All-ones and centre baselines; 1 epoch, 8 training images of 32²): every table file with
its rows and columns and no NaN, every figure, the HTML page, the device of each cell; a
killed suite resumes without redoing finished cells; the CLI sub-app. The shipped suites'
tiny budgets run in the slow tests."""

import csv
import json

import pytest
import typer
from typer.testing import CliRunner

from wsol.bench.cli import bench_app
from wsol.bench.runner import run_suite
from wsol.bench.suites import Suite
from wsol.config import yaml_load
from wsol.data import synthesize

SUITE = """
name: tiny
title: a really tiny suite
dataset: synthetic-glas
budgets:
  tiny:
    description: 1 epoch
    config:
      data: {image_size: 32, augment: {color_jitter: 0.0}}
      optim: {epochs: 1, batch_size: 4, lr: 0.01}
      eval: {batch_size: 16, gallery: 1}
    complexity: {image_size: 32, batch_sizes: [1, 2], warmup: 0, repeats: 1}
  paper: {}
cells:
  - {id: cam, label: CAM, group: WSOL, method: cam, extractors: [gradcam], histogram: true}
  - {id: ones, label: All-ones, group: Bounds, baseline: all-ones}
  - {id: center, label: Center, group: Bounds, baseline: center-gaussian}
  - {id: unet, label: U-Net, group: Bounds, method: unet,
     set: ["model.method.params.decoder_channels=[16, 16, 8, 8, 8]"]}
tables:
  - {id: loc, title: PxAP, metrics: {mask: [pxap], box: [max_box_acc_v2]},
     rows: [cam, cam+gradcam, {label: Best WSOL, best_of: [cam, cam+gradcam]}, ones, center, unet]}
  - {id: confusion, title: confusion, metrics: {mask: [tp_star, fn_star, fp_star, tn_star]}}
  - {id: selection, title: B-LOC vs B-CL, metrics: {any: [top1_acc, cl_error]}, checkpoints: [best_loc, best_cls],
     rows: [cam, cam+gradcam, unet]}
  - {id: f1, title: F1, metrics: {mask: [f1_fg_mean, f1_bg_mean]}}
  - {id: boxes-only, title: not for masks, metrics: {box: [top1_loc]}}
  - {id: cost, title: complexity, kind: complexity, rows: [cam, cam+gradcam, unet, ones]}
figures:
  - {id: thresholds, title: t, kind: threshold_curves, rows: [cam, cam+gradcam], reference: unet}
  - {id: epochs, title: e, kind: selection_epochs, rows: [cam, cam+gradcam]}
  - {id: tau, title: tau, kind: tau_curves, rows: [cam, unet]}
  - {id: hist, title: h, kind: histograms, rows: [cam]}
  - {id: down, title: d, kind: downscale, factors: [1, 2, 4]}
  - {id: conf, title: c, kind: confusion, rows: [cam, unet]}
  - {id: regions, title: r, kind: region_sizes, rows: [unet]}
  - {id: pr, title: p, kind: pr_curves, rows: [cam, unet]}
"""

ALL_ROWS = ["cam", "ones", "center", "unet", "cam+gradcam"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return synthesize("synthetic-glas", tmp_path_factory.mktemp("data") / "glas", n=8, size=32, seed=1)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def done(data_root, suite_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    result = run_suite(suite_file, root=data_root, out=out, track="random", device="cpu", command="wsol bench (test)")
    return out, result


def _csv(path):
    return list(csv.reader(path.open()))


def test_every_table_file_with_its_rows_and_columns(done):
    out, result = done
    assert [o.status for o in result.outcomes] == ["ran"] * 4
    assert set(result.tables) == {"loc", "confusion", "selection", "f1", "cost"}
    assert "boxes-only" in result.skipped_outputs  # defined for box sets only
    for tid in result.tables:
        md, rows = (out / "tables" / f"{tid}.md").read_text(), _csv(out / "tables" / f"{tid}.csv")
        assert "nan" not in md.lower() and all("nan" not in c.lower() for r in rows for c in r), tid
        assert all(len(r) == len(rows[0]) for r in rows), tid
    loc = _csv(out / "tables" / "loc.csv")
    assert loc[0] == ["row", "group", "Method", "ResNet-18 · PxAP", "Device"]
    assert [r[0] for r in loc[1:]] == ["cam", "cam+gradcam", "Best WSOL", "ones", "center", "unet"]
    vals = {r[0]: float(r[3]) for r in loc[1:]}
    assert all(0 < v <= 100 for v in vals.values())
    assert vals["Best WSOL"] == max(vals["cam"], vals["cam+gradcam"])
    assert all(r[4].startswith("cpu") for r in loc[1:])  # the device that ran each row
    conf = _csv(out / "tables" / "confusion.csv")
    assert conf[0][3:7] == ["ResNet-18 · TP*", "ResNet-18 · FN*", "ResNet-18 · FP*", "ResNet-18 · TN*"]
    assert [r[0] for r in conf[1:]] == ALL_ROWS
    for r in conf[1:]:  # TP* + FN* = 100 and FP* + TN* = 100
        assert float(r[3]) + float(r[4]) == pytest.approx(100) and float(r[5]) + float(r[6]) == pytest.approx(100)
    ones = next(r for r in conf[1:] if r[0] == "ones")
    assert [float(x) for x in ones[3:7]] == [100.0, 0.0, 100.0, 0.0]
    sel = {r[0]: r for r in _csv(out / "tables" / "selection.csv")[1:]}
    assert sel["unet"][3:7] == ["", "", "", ""]  # the U-Net does not classify
    assert float(sel["cam"][3]) + float(sel["cam"][5]) == pytest.approx(100)  # accuracy + error
    f1 = {r[0]: r for r in _csv(out / "tables" / "f1.csv")[1:]}
    assert float(f1["ones"][4]) == 0.0  # All-ones: F1− = 0
    cost = {r[0]: r for r in _csv(out / "tables" / "cost.csv")[1:]}
    assert float(cost["cam"][3]) == pytest.approx(float(cost["cam+gradcam"][3]))  # same network, another CAM
    assert float(cost["ones"][3]) == 0.0


def test_figures_page_and_records(done):
    out, result = done
    assert set(result.figures) == {"thresholds", "epochs", "tau", "hist", "down", "conf", "regions", "pr"}
    for path in result.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 8 and "http://" not in page and "https://" not in page
    readme = (out / "README.md").read_text()
    assert "wsol bench (test)" in readme and "### PxAP" in readme
    info = json.loads((out / "suite.json").read_text())
    assert [c["status"] for c in info["cells"]] == ["ran"] * 4
    assert all(c["device"].startswith("cpu") for c in info["cells"])
    bench = json.loads((out / "cells/cam/resnet18/bench.json").read_text())
    assert bench["device"].startswith("cpu") and bench["seconds"] > 0
    metrics = json.loads((out / "cells/cam/resnet18/metrics.json").read_text())
    assert {"best_loc", "best_cls", "best_loc+gradcam", "best_cls+gradcam"} <= set(metrics)
    down = json.loads((out / "simulation-down.json").read_text())
    assert down["factors"] == [1, 2, 4] and down["pxap"][0] == pytest.approx(100.0)
    assert down["pxap"][0] >= down["pxap"][1] >= down["pxap"][2]


def test_a_killed_suite_resumes_without_redoing_finished_cells(done, data_root, suite_file):
    out, _ = done
    unet_metrics = out / "cells/unet/resnet18/metrics.json"
    before = unet_metrics.stat().st_mtime_ns
    last = out / "cells/cam/resnet18/checkpoints/last.pt"
    last_before = last.stat().st_mtime_ns
    (out / "cells/cam/resnet18/metrics.json").unlink()  # cam killed after training, before it finished
    result = run_suite(suite_file, root=data_root, out=out, track="random", device="cpu")
    status = {o.plan.cell.id: o.status for o in result.outcomes}
    assert status == {"cam": "ran", "ones": "done", "center": "done", "unet": "done"}
    assert unet_metrics.stat().st_mtime_ns == before
    assert last.stat().st_mtime_ns == last_before  # resumed: its finished epochs were not trained again
    assert (out / "cells/cam/resnet18/metrics.json").is_file()
    assert set(result.tables) == {"loc", "confusion", "selection", "f1", "cost"}


def test_the_suite_folder_is_never_a_foreign_one(tmp_path, suite_file, data_root):
    from wsol.errors import WSOLError

    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(WSOLError, match="holds no wsol suite"):
        run_suite(suite_file, root=data_root, out=tmp_path, track="random", device="cpu")
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_cli_sub_app(tmp_path, suite_file, data_root):
    app = typer.Typer()
    app.add_typer(bench_app, name="bench")  # how the main CLI mounts it
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "run", str(suite_file), "--root", str(data_root), "--out",
                              str(tmp_path / "cli"), "--only", "ones,center", "--track", "random", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli/tables/loc.csv").is_file() and (tmp_path / "cli/index.html").is_file()
    assert [r[0] for r in _csv(tmp_path / "cli/tables/loc.csv")[1:]] == ["ones", "center"]
    res = runner.invoke(app, ["bench", "list"])
    assert res.exit_code == 0 and "survey" in res.output and "fcam" in res.output
    res = runner.invoke(app, ["bench", "survey", "--help"])
    assert res.exit_code == 0 and "--budget" in res.output


def test_the_tiny_suite_yaml_is_a_valid_suite():
    assert Suite.model_validate(yaml_load(SUITE)).name == "tiny"


@pytest.mark.slow
@pytest.mark.parametrize("name,only", [
    ("survey", ["cam", "wildcat", "negev", "fcam", "all-ones", "center", "unet-fsl", "unet"]),
    ("fcam", ["has", "cam", "fcam-cam", "fcam-gradcam", "fcam-sr", "unet-fsl", "center"]),
    ("maxmin", ["pn", "cam", "maxmin-sem", "fg-only", "all-ones", "unet"]),
    ("minmax-entropy", ["cam", "deepmil", "u0", "u4", "all-ones", "unet"]),
    ("weightmap", ["cam", "siamese", "wm1", "wm2", "wm2-no-reg"]),
    ("complexity", None),
])
def test_shipped_suite_tiny_budget(name, only, tmp_path):
    """Each shipped suite's tiny budget on a subset of its cells: every applicable table and
    figure is written, without NaN."""
    result = run_suite(name, out=tmp_path / name, only=only, track="random", device="cpu",
                       overrides=["optim.epochs=1"])
    assert not result.failed, [(o.plan.name, o.error) for o in result.failed]
    assert result.tables
    for t in result.suite.tables:
        if t.id not in result.skipped_outputs:
            text = (tmp_path / name / "tables" / f"{t.id}.csv").read_text()
            assert "nan" not in text.lower(), t.id
