"""Dense-CRF post-processing at evaluation (min-max-entropy App. B.3.3): the CRFLocalizer
wrapper, its column tag, and `wsol evaluate RUN --crf glas` on a tiny trained run (own
column, plain column untouched, PR curves of Fig. 6 in the outputs and the report)."""

from __future__ import annotations

import json

import pytest
import torch

from wsol.cli import main
from wsol.config import load_config
from wsol.data import synthesize
from wsol.engine.trainer import Trainer
from wsol.errors import ConfigError
from wsol.postprocess import CRFLocalizer, crf_tag, dense_crf, with_crf
from wsol.report.html import write_report
from wsol.runs import eval_dir, read_json


def _two_colour(n: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images: left half red, right half blue; a noisy CAM that leaks over the boundary."""
    images = torch.zeros(n, 3, size, size)
    images[:, 0, :, : size // 2] = 1.0
    images[:, 2, :, size // 2 :] = 1.0
    g = torch.Generator().manual_seed(0)
    cams = (torch.rand(n, size, size, generator=g) * 0.5).clamp(0, 1)
    cams[:, :, : size // 2 + 2] += 0.5
    return images, cams.clamp(0, 1)


class _Net(torch.nn.Module):
    def __init__(self, cams: torch.Tensor):
        super().__init__()
        self.cams = cams
        self.seen: list[tuple[bool, torch.Tensor | None]] = []

    def localize(self, images, targets=None):
        self.seen.append((torch.is_grad_enabled(), targets))
        return self.cams


def test_crf_localizer_refines_the_wrapped_cams_with_dense_crf():
    images, cams = _two_colour()
    net = _Net(cams)
    loc = CRFLocalizer(net.localize, "glas")
    targets = torch.tensor([1, 0])
    out = loc(images, targets)
    assert torch.equal(out, dense_crf(images, cams, "glas"))  # the same function, same images
    assert out.shape == cams.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert net.seen[-1][0] is False and torch.equal(net.seen[-1][1], targets)  # a module's localize: no graph
    # the CRF moves the leaking CAM towards the colour boundary (column size/2)
    inside = ((out >= 0.5)[:, :, :8]).float().mean()
    leak = ((out >= 0.5)[:, :, 8:]).float().mean()
    assert leak < ((cams >= 0.5)[:, :, 8:]).float().mean() and inside > 0.9
    # a plain function (an extractor) keeps its gradient handling; overrides reach the CRF
    seen = []

    def extractor(x, t):
        seen.append(torch.is_grad_enabled())
        return cams

    loc5 = CRFLocalizer(extractor, "glas", iterations=5)
    assert loc5.no_grad is False and loc5.params.iterations == 5
    assert torch.equal(loc5(images, targets), dense_crf(images, cams, "glas", iterations=5))
    assert seen == [True]


def test_crf_tag_and_factory():
    assert crf_tag("glas") == "crf-glas"
    assert crf_tag("natural", iterations=10) == "crf-natural-it10"
    with pytest.raises(ConfigError, match="preset"):
        crf_tag("glass")
    with pytest.raises(ConfigError, match="iterations"):
        CRFLocalizer(lambda x, t: x, "glas", iterations=-1)
    images, cams = _two_colour()
    factory, tag = with_crf(None, None, "glas")
    assert tag == "crf-glas" and torch.equal(factory(_Net(cams))(images, None), dense_crf(images, cams, "glas"))
    _, tag = with_crf(lambda m: m.localize, "gradcam", "natural", iterations=2)
    assert tag == "gradcam+crf-natural-it2"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("crf") / "synthetic-glas"
    synthesize("synthetic-glas", root, n=16, size=32, seed=2)
    cfg = load_config(None, [
        "data.name=synthetic-glas", f"data.root={root}", "data.image_size=32",
        f"run_dir={tmp_path_factory.mktemp('crf_run') / 'run'}", "model.backbone.name=resnet18",
        "model.backbone.cam_friendly=false", "model.method.name=cam", "optim.epochs=1", "optim.batch_size=8",
        "eval.batch_size=8", "eval.gallery=3", "data.num_workers=0", "device=cpu",
    ])
    return Trainer(cfg).fit().run_dir


def test_cli_crf_writes_its_own_column_and_leaves_the_plain_one(run, capsys):
    assert main(["evaluate", str(run), "--checkpoint", "best_loc"]) == 0
    plain = eval_dir(run, "best_loc", "test")
    before = {p.name: p.read_bytes() for p in plain.iterdir()}
    m_plain = read_json(plain / "metrics.json")
    curves = read_json(plain / "curves.json")
    # Fig. 6 curves in the plain evaluation's outputs
    assert {"pr_auc_fg", "pr_auc_bg"} <= set(m_plain) and 0 < m_plain["pr_auc_fg"] <= 100
    assert len(curves["pr"]["recall"]) == 1001 and len(curves["pr"]["precision_fg"]) == 1001
    assert curves["pr"]["auc_fg"] == pytest.approx(m_plain["pr_auc_fg"] / 100)

    assert main(["evaluate", str(run), "--checkpoint", "best_loc", "--crf", "glas"]) == 0
    assert "best_loc+crf-glas" in capsys.readouterr().out
    crf = eval_dir(run, "best_loc+crf-glas", "test")
    assert {p.name: p.read_bytes() for p in plain.iterdir()} == before  # plain column untouched
    m_crf = read_json(crf / "metrics.json")
    assert (crf / "curves.json").is_file() and "pr" in read_json(crf / "curves.json")
    assert m_crf["pxap"] != m_plain["pxap"] and m_crf["pr_auc_fg"] != m_plain["pr_auc_fg"]
    assert m_crf["top1_acc"] == m_plain["top1_acc"]  # the classifier is the same
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["best_loc"]["pxap"] == m_plain["pxap"] and summary["best_loc+crf-glas"]["pxap"] == m_crf["pxap"]

    # the report: an extra column, the PR-AUC rows and the fg/bg PR figure
    html = write_report(run).read_text()
    assert "<th>best_loc+crf-glas</th>" in html and "PR-AUC+" in html
    assert "Precision–recall per image (foreground / background)" in html


def test_cli_crf_options_are_checked(run, capsys):
    assert main(["evaluate", str(run), "--checkpoint", "best_loc", "--crf-iters", "3"]) == 2
    assert "--crf-iters goes with --crf" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--checkpoint", "best_loc", "--crf", "glass"]) == 2
    assert "unknown dense-CRF preset 'glass'" in capsys.readouterr().err
    assert not eval_dir(run, "best_loc+crf-glass", "test").exists()
