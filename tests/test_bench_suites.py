"""Suites without training: every shipped suite loads and plans; cell configs are assembled
in the documented order per budget; the grid (tracks, shared baselines, skipped backbones,
stage-1 dependencies); schema errors; and the tables built from hand-written cell folders
(derived rows, classification-free rows, B-LOC vs B-CL columns)."""

from pathlib import Path

import pytest

from wsol.bench import ensure_registered
from wsol.bench.runner import SuiteRun, plan_suite, track_backbones
from wsol.bench.suites import Suite, available_suites, load_suite
from wsol.bench.tables import Results, build_metrics_table, table_csv, table_markdown
from wsol.errors import ConfigError
from wsol.fileio import write_json

SHIPPED = ["complexity", "fcam", "maxmin", "minmax-entropy", "survey", "weightmap"]


def test_every_shipped_suite_loads_and_plans_on_both_tracks(tmp_path):
    assert available_suites() == SHIPPED
    for name in SHIPPED:
        suite = load_suite(name)
        assert {"tiny", "paper"} <= set(suite.budgets)
        for budget in suite.budgets:
            cols = track_backbones("both", suite.budgets[budget])
            plans = plan_suite(suite, dataset=suite.dataset, root=tmp_path / "data", budget=budget, backbones=cols,
                               out=tmp_path / name)
            for p in plans:
                assert (p.config is None) == (p.skip is not None), p.name


def test_the_survey_suite_covers_every_registered_method():
    from wsol.methods import METHODS

    ensure_registered()
    survey = load_suite("survey")
    assert set(METHODS.names()) <= {c.method for c in survey.cells if c.method}
    assert {c.baseline for c in survey.cells if c.baseline} == {"all-ones", "center-gaussian"}
    fsl = survey.cell("unet-fsl")
    assert "model.method.params.train_split=valpx" in fsl.set


def _plan(name, budget, dataset=None, track="random", tmp=Path("/tmp/unused"), **kw):
    suite = load_suite(name)
    cols = track_backbones(track, suite.budgets[budget])
    plans = plan_suite(suite, dataset=dataset or suite.dataset, root=tmp / "data", budget=budget, backbones=cols,
                       out=tmp / "out", **kw)
    return {p.name: p for p in plans}


def test_tiny_takes_the_model_section_only_and_paper_the_whole_recipe():
    tiny = _plan("maxmin", "tiny")["maxmin-sem/resnet18"].config
    paper = _plan("maxmin", "paper")["maxmin-sem/resnet18"].config
    assert (tiny.optim.epochs, tiny.data.image_size, tiny.optim.batch_size) == (3, 32, 8)
    assert (paper.optim.epochs, paper.data.image_size, paper.optim.batch_size) == (80, 416, 4)  # recipes/maxmin-glas
    for cfg in (tiny, paper):
        assert cfg.model.method.params["sigma"] == 0.15 and cfg.model.method.params["regularizer"] == "sem"
    # a later file overrides an earlier one: the ablation's model section over the recipe's
    assert _plan("maxmin", "tiny")["fg-only/resnet18"].config.model.method.params["regularizer"] == "none"
    # cell paper sections, and per dataset (U-Net: max-min §3.3 (c))
    unet = _plan("maxmin", "paper")["unet/resnet18"].config
    assert (unet.optim.epochs, unet.sched.step_size, unet.optim.lr) == (960, 320, 0.1)
    unet_c = _plan("maxmin", "paper", dataset="synthetic-camelyon")["unet/resnet18"].config
    assert (unet_c.optim.epochs, unet_c.sched.step_size) == (90, 30)
    # the grid sets the backbone whatever the files say; --set comes last
    wm = _plan("weightmap", "paper", overrides=["optim.epochs=2"])["wm1/resnet18"].config
    assert (wm.model.backbone.name, wm.model.backbone.weights, wm.optim.epochs) == ("resnet18", "none", 2)


def test_grid_tracks_baselines_dependencies_and_skips(tmp_path):
    plans = _plan("survey", "tiny", track="both", tmp=tmp_path)
    keys = {"resnet18", "efficientnet_lite0-imagenet-offline"}
    assert set(plans["all-ones/any"].columns) == keys  # one shared run fills every column
    assert [n for n in plans if n.startswith("tscam/")] == ["tscam/resnet18"]  # its own DeiT: one run
    lite = plans["cam/efficientnet_lite0-imagenet-offline"].config.model.backbone
    assert (lite.name, lite.weights) == ("efficientnet_lite0", "imagenet-offline")
    assert plans["adl/efficientnet_lite0-imagenet-offline"].skip
    fcam = plans["fcam/resnet18"]
    assert fcam.config.model.method.params["classifier"]["run"] == str((tmp_path / "out/cells/cam/resnet18").resolve())
    assert fcam.needs == [plans["cam/resnet18"]]
    assert plans["unet-fsl/resnet18"].config.model.method.params["train_split"] == "valpx"
    # --only keeps the cells it names and the cells they need, in order
    only = _plan("survey", "tiny", tmp=tmp_path, only=["fcam", "all-ones"])
    assert list(only) == ["cam/resnet18", "fcam/resnet18", "all-ones/any"]
    with pytest.raises(ConfigError, match="unknown cell"):
        _plan("survey", "tiny", only=["nope"])


def _suite(cells, tables=(), **extra):
    data = {"name": "t", "title": "t", "dataset": "synthetic-glas",
            "budgets": {"tiny": {"config": {"data": {"image_size": 32}}}, "paper": {}},
            "cells": list(cells), "tables": list(tables), **extra}
    return Suite.model_validate(data)


def test_schema_errors_name_the_problem():
    from pydantic import ValidationError

    cam = {"id": "cam", "method": "cam", "extractors": ["gradcam"]}
    with pytest.raises(ValidationError, match="no extractor or crf 'layercam'"):
        _suite([cam], [{"id": "t1", "title": "x", "metrics": {"mask": ["pxap"]}, "rows": ["cam+layercam"]}])
    with pytest.raises(ValidationError, match="not a cell listed before it"):
        _suite([{"id": "f", "method": "fcam", "needs": {"classifier.run": "cam"}}, cam])
    with pytest.raises(ValidationError, match="exactly one of method and baseline"):
        _suite([{"id": "x", "method": "cam", "baseline": "all-ones"}])
    with pytest.raises(ValidationError, match="used twice"):
        _suite([cam, cam])
    with pytest.raises(ConfigError, match="unknown suite"):
        load_suite("no-such-suite")


def test_tables_from_hand_written_cell_folders(tmp_path):
    ensure_registered()
    suite = _suite(
        [{"id": "a", "label": "A", "method": "cam", "extractors": ["gradcam"]},
         {"id": "b", "label": "B", "method": "max_pool"},
         {"id": "u", "label": "U-Net", "method": "unet"},
         {"id": "ones", "label": "All-ones", "baseline": "all-ones"},
         {"id": "never", "method": "lse"}],
        [{"id": "t1", "title": "T", "metrics": {"mask": ["pxap", "cl_error"], "box": ["max_box_acc"]},
          "checkpoints": ["best_loc", "best_cls"],
          "rows": ["a", "a+gradcam", "b", {"label": "Best", "best_of": ["a", "b"]},
                   {"label": "Gain", "improvement": ["a", "b"]}, "u", "ones", "never"]}])
    cols = track_backbones("random", suite.budgets["tiny"])
    plans = plan_suite(suite, dataset="synthetic-glas", root=tmp_path / "d", budget="tiny", backbones=cols,
                       out=tmp_path / "out", only=["a", "b", "u", "ones"])
    by = {p.cell.id: p.dir for p in plans}
    m = {
        "a": {"best_loc": {"pxap": 40.0, "top1_acc": 90.0}, "best_cls": {"pxap": 30.0, "top1_acc": 95.0},
              "best_loc+gradcam": {"pxap": 45.0, "top1_acc": 90.0}, "best_cls+gradcam": {"pxap": 33.0, "top1_acc": 95.0}},
        "b": {"best_loc": {"pxap": 50.0, "top1_acc": 80.0}, "best_cls": {"pxap": 20.0, "top1_acc": 85.0}},
        "u": {"best_loc": {"pxap": 70.0, "top1_acc": 50.0}, "best_cls": {"pxap": 60.0, "top1_acc": 50.0}},
        "ones": {"baseline": {"pxap": 25.0, "top1_acc": 50.0}},
    }
    for cid, cols_ in m.items():
        write_json(by[cid] / "metrics.json", {"split": "test", **cols_})
        write_json(by[cid] / "bench.json", {"device": "cpu (1 threads)"})
    run = SuiteRun(suite, tmp_path / "out", "synthetic-glas", "mask", "tiny", cols, plans)
    table = build_metrics_table(suite.tables[0], Results(run))
    assert table.header == ["Method", "ResNet-18 · PxAP (B-LOC)", "ResNet-18 · PxAP (B-CL)",
                            "ResNet-18 · cl. error (B-LOC)", "ResNet-18 · cl. error (B-CL)", "Device"]
    rows = {r["label"]: r["values"] for r in table.rows}
    assert list(rows) == ["A", "GradCAM", "B", "Best", "Gain", "U-Net", "All-ones"]  # "never" did not run
    assert rows["A"] == [40.0, 30.0, 10.0, 5.0]
    assert rows["GradCAM"] == [45.0, 33.0, 10.0, 5.0]
    assert rows["B"] == [50.0, 20.0, 20.0, 15.0]
    assert rows["Best"] == [50.0, 30.0, 10.0, 5.0]  # the lowest classification error is the best
    assert rows["Gain"] == [10.0, -10.0, 10.0, 10.0]
    assert rows["U-Net"] == [70.0, 60.0, None, None]  # classification-free
    assert rows["All-ones"] == [25.0, 25.0, None, None]  # one baseline column for every selection
    md, csv = table_markdown(table), table_csv(table)
    assert "| U-Net | 70.00 | 60.00 | — | — | cpu (1 threads) |" in md
    assert "u,,U-Net,70.0000,60.0000,,,cpu (1 threads)" in csv
    assert "nan" not in (md + csv).lower()
    # the same table on a box dataset reads its box metrics; a mask-only table is not applicable there
    box_run = SuiteRun(suite, tmp_path / "out", "synthetic-cub", "box", "tiny", cols, plans)
    mask_only = suite.tables[0].model_copy(update={"metrics": {"mask": ["pxap"]}})
    assert "defined for mask datasets" in build_metrics_table(mask_only, Results(box_run))


def test_an_fsl_cell_trained_on_the_wrong_split_is_refused(tmp_path):
    """The FSL U-Net must train on valpx: a run whose epochs went over another number of
    images (an engine ignoring Method.train_split) fails loudly instead of reporting the
    full-supervision numbers as FSL."""
    from wsol.bench.runner import _check_train_split
    from wsol.data import synthesize
    from wsol.data.registry import build_dataset
    from wsol.errors import WSOLError

    root = synthesize("synthetic-glas", tmp_path / "data", n=8, size=32, seed=1)
    suite = load_suite("survey")
    cols = track_backbones("random", suite.budgets["tiny"])
    plans = {p.cell.id: p for p in plan_suite(suite, dataset="synthetic-glas", root=root, budget="tiny",
                                                backbones=cols, out=tmp_path / "out", only=["unet-fsl", "unet"])}
    n_valpx = len(build_dataset(plans["unet-fsl"].config.data, "valpx"))
    n_train = len(build_dataset(plans["unet-fsl"].config.data, "train"))
    _check_train_split(plans["unet-fsl"], {n_valpx})
    _check_train_split(plans["unet-fsl"], set())  # nothing trained now (a finished run resumed)
    _check_train_split(plans["unet"], {n_train})
    with pytest.raises(WSOLError, match="does not honour Method.train_split"):
        _check_train_split(plans["unet-fsl"], {n_train})
