"""minmax_entropy as a method (ResNet-18, tiny batches): one training step in the engine's
order, where the gradients go (A.2), step-by-step accumulation of M's term (Alg. 1) without
graphs kept across steps, the CAM contract, state-dict round trip, shipped configs."""

import copy
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import wsol.methods.minmax_entropy as mme
from wsol.cams import check_cams
from wsol.config import BackboneConfig, RunConfig, load_yaml
from wsol.data.sample import Batch
from wsol.methods.base import TrainState
from wsol.methods.minmax_entropy import MinMaxEntropy, MinMaxEntropyParams

BACKBONE = BackboneConfig(name="resnet18")
CONFIGS = Path(__file__).resolve().parents[1] / "src" / "wsol" / "configs"


def build(num_classes: int = 2, seed: int = 0, **params) -> MinMaxEntropy:
    torch.manual_seed(seed)
    return MinMaxEntropy(MinMaxEntropyParams(**params), BACKBONE, num_classes)


def tiny_batch(n: int = 2, size: int = 64, num_classes: int = 2) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(images=torch.rand(n, 3, size, size, generator=g), labels=torch.arange(n) % num_classes,
                 image_ids=[str(i) for i in range(n)])


def engine_step(method, batch, opt=None):
    """The engine's order: zero_grad -> training_step -> total.backward -> step."""
    method.train()
    opt = opt or torch.optim.SGD(method.param_groups(0.01, 1.0), lr=0.01, momentum=0.9, nesterov=True)
    opt.zero_grad(set_to_none=True)
    terms = method.training_step(batch, TrainState())
    terms["total"].backward()
    opt.step()
    return terms


def grads(method, prefix):
    return [p.grad for n, p in method.named_parameters() if n.startswith(prefix)]


def nonzero(gs):
    return any(g is not None and g.abs().sum() > 0 for g in gs)


def always_trusted(monkeypatch):
    """Ψ(t, i) = exp(−t/σ) for every sample: every step of the recursion runs on every sample."""

    def trust(t, logits, labels, ce0, sigma, alive=None):
        gamma = torch.ones(len(labels), device=logits.device)
        return torch.exp(torch.tensor(-t / sigma)) * gamma, gamma

    monkeypatch.setattr(mme, "trust_coefficients", trust)


@pytest.mark.parametrize("u, dropout", [(0, 0.75), (4, 0.75), (4, 0.0)])
def test_one_training_step(u, dropout):
    method = build(u=u, dropout=dropout)
    terms = engine_step(method, tiny_batch())
    names = {"fg_ce", "bg_ce", "loc_ce", "loc_ce_erased", "total", "objective", "fg_size", "m_steps", "m_passes"}
    assert set(terms) == names
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["total"].requires_grad and not terms["loc_ce"].requires_grad
    assert terms["total"].item() == pytest.approx(terms["fg_ce"].item() + terms["bg_ce"].item(), rel=1e-6)
    parts = ("fg_ce", "bg_ce", "loc_ce", "loc_ce_erased")
    assert terms["objective"].item() == pytest.approx(sum(terms[k].item() for k in parts), rel=1e-6)
    assert 1.0 <= terms["m_passes"].item() <= terms["m_steps"].item() <= u + 1
    # M's head learnt from its own term (left in .grad by training_step), C's head from C's
    # terms. (With dropout 0.75 on these 2×2 maps the top-1 position WILDCAT scores may be a
    # dropped one: a zero gradient is then right, so only its presence is checked.)
    for prefix in ("head.", "cls_head.", "backbone."):
        gs = grads(method, prefix)
        assert gs and all(g is not None for g in gs), prefix
        if dropout == 0:
            assert nonzero(gs), prefix


def test_loss_terms_match_equations_on_the_real_networks():
    method = build(u=0, dropout=0.0)
    batch = tiny_batch(4)
    method.train()
    terms = method.training_step(batch, TrainState())
    with torch.no_grad():  # recompute in train mode (batch statistics, no dropout): same numbers
        m = method.masks(batch.images)
        loc = F.cross_entropy(m["loc_logits"], batch.labels)  # Eq. 7
        pos = method.classify(batch.images * m["mask"][:, None])
        neg = method.classify(batch.images * (1 - m["mask"])[:, None])
        fg = -F.log_softmax(pos, 1).gather(1, batch.labels[:, None]).mean()  # Eq. 3
        bg = -F.log_softmax(neg, 1).mean(1).mean()  # Eq. 5
    assert terms["loc_ce"].item() == pytest.approx(loc.item(), rel=1e-5)
    assert terms["fg_ce"].item() == pytest.approx(fg.item(), rel=1e-5)
    assert terms["bg_ce"].item() == pytest.approx(bg.item(), rel=1e-5)
    assert terms["objective"].item() == pytest.approx((fg + bg + loc).item(), rel=1e-5)  # Eq. 8


@pytest.mark.parametrize("detach", [True, False])
def test_classifier_terms_reach_the_localizer_only_without_detach(detach):
    method = build(u=0, dropout=0.0, detach_mask=detach, share_backbone=False)
    method.train()
    terms = method.training_step(tiny_batch(), TrainState())
    method.zero_grad(set_to_none=True)  # drop M's own term: only C's terms below
    terms["total"].backward()
    assert nonzero(grads(method, "cls_head.")) and nonzero(grads(method, "cls_backbone."))
    for prefix in ("head.", "backbone."):
        assert nonzero(grads(method, prefix)) == (not detach), prefix


def test_classifier_terms_do_not_reach_the_localizer_head_with_recursion(monkeypatch):
    always_trusted(monkeypatch)
    method = build(u=3, dropout=0.0)  # shared backbone (default): C's terms train it, not M's head
    method.train()
    terms = method.training_step(tiny_batch(), TrainState())
    method.zero_grad(set_to_none=True)
    terms["total"].backward()
    assert not nonzero(grads(method, "head.")) and nonzero(grads(method, "cls_head."))
    assert nonzero(grads(method, "backbone."))


def test_gradients_are_the_sum_of_the_steps(monkeypatch):
    """M's gradients after the recursion equal those of Σ_t (term_t) computed at once on the
    same erased inputs, so the per-step backward loses nothing."""
    always_trusted(monkeypatch)
    method = build(u=3, dropout=0.0, share_backbone=False)
    method.train()
    x, y = tiny_batch(2).images, tiny_batch(2).labels
    method.zero_grad(set_to_none=True)
    rec = method.erase_recursively(x, y, trace=True)
    assert rec.steps == 4
    got = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    ref = copy.deepcopy(method)
    ref.zero_grad(set_to_none=True)
    total = 0
    for step in rec.trace:  # all graphs alive at once, one backward
        logits, _ = ref.localizer(step["inputs"])
        total = total + (F.cross_entropy(logits, y[step["idx"]], reduction="none") * step["weights"]).sum() / 2
    total.backward()
    want = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert set(got) == set(want) and all(n.startswith(("backbone.", "head.")) for n in got)
    for n in want:
        assert torch.allclose(got[n], want[n], rtol=1e-4, atol=1e-6), n
    # the recursion's inputs were erased: X̃_t = X⊙(1 − R+,★) differs from X after t = 0
    assert not torch.equal(rec.trace[1]["inputs"], x)


class SavedTensors:
    """Counts the bytes autograd holds for backward (saved tensors of live graphs)."""

    def __init__(self):
        self.live: dict[int, int] = {}

    def pack(self, t):
        box = _Box(t)
        key = id(box)
        self.live[key] = t.numel() * t.element_size()
        weakref.finalize(box, self.live.pop, key, None)
        return box

    @staticmethod
    def unpack(box):
        return box.t

    def bytes(self):
        return sum(self.live.values())


class _Box:
    def __init__(self, t):
        self.t = t


@pytest.mark.parametrize("detach", [True, False])
def test_no_graph_is_kept_across_steps(monkeypatch, detach):
    always_trusted(monkeypatch)
    method = build(u=3, dropout=0.0, detach_mask=detach)
    method.train()
    saved = SavedTensors()
    at_step: list[int] = []
    inner = method.localizer

    def localizer(x):
        at_step.append(saved.bytes())  # what earlier steps still hold when a step starts
        return inner(x)

    monkeypatch.setattr(method, "localizer", localizer)
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        method.erase_recursively(tiny_batch().images, tiny_batch().labels)
    assert len(at_step) == 4
    if detach:  # each step's graph is freed by its backward: nothing carried over
        assert at_step == [0, 0, 0, 0]
    else:  # the mask keeps every step's graph for C's terms: memory grows with the steps
        assert at_step[0] == 0 and at_step[1] > 0 and at_step[3] > at_step[2] > at_step[1]


def test_localize_obeys_the_cam_contract_and_binary_threshold():
    method = build(u=4)
    images = tiny_batch(3).images
    method.eval()
    with torch.no_grad():
        cams = method.localize(images)
        same = method.localize(images, torch.tensor([1, 0, 1]))
        masks = method.masks(images)
        binary = method.localize_binary(images)
    assert cams.shape == (3, 64, 64)
    check_cams(cams)
    assert torch.equal(cams, same)  # class-agnostic map
    # R+ ≥ 0.5 ⇔ T̂↑ ≥ σ0: the evaluator's threshold on the CAM gives the paper's binary mask
    assert method.binary_threshold == 0.5
    assert torch.equal(binary, (cams >= method.binary_threshold).float())
    assert torch.equal(binary, (masks["mask"] >= 0.5).float())


def test_evaluation_is_one_pass(monkeypatch):
    method = build(u=4)
    calls = []
    inner = method.localizer
    monkeypatch.setattr(method, "localizer", lambda x: calls.append(1) or inner(x))
    method.eval()
    with torch.no_grad():
        out = method(tiny_batch().images)
    assert len(calls) == 1 and out.logits.shape == (2, 2) and out.maps.shape[:2] == (2, 2)


def test_state_dict_round_trip():
    a, b = build(seed=0), build(seed=1)
    images = tiny_batch().images
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(images).logits, b(images).logits)
        assert torch.equal(a.localize(images), b.localize(images))
    assert not any(k.startswith("cls_backbone.") for k in a.state_dict())  # shared backbone
    assert any(k.startswith("cls_backbone.") for k in build(share_backbone=False).state_dict())


def test_rejects_a_single_class():
    from wsol.errors import ConfigError

    with pytest.raises(ConfigError, match="need >= 2"):
        build(num_classes=1)


@pytest.mark.parametrize(
    "path",
    sorted((CONFIGS / "methods").glob("minmax-entropy*.yaml"))
    + sorted((CONFIGS / "recipes").glob("minmax-entropy-*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_configs(path):
    data = load_yaml(path)
    assert data["model"]["method"]["name"] == "minmax_entropy"
    params = MinMaxEntropyParams.model_validate(data["model"]["method"]["params"])
    assert (params.kmax, params.kmin, params.alpha, params.modalities) == (0.09, 0.09, 0.0, 5)  # B.2
    assert (params.sigma, params.sigma0, params.omega) == (10.0, 0.5, 8.0)
    natural = "natural" in path.name or "cub5" in path.name
    assert params.dropout == (0.85 if natural else 0.75)
    if path.parent.name == "recipes":
        cfg = RunConfig.model_validate({k: v for k, v in data.items() if k != "model"})
        assert params.u == int(path.stem[-1])
        o = cfg.optim
        assert (o.name, o.epochs, o.batch_size, o.lr, o.momentum, o.nesterov, o.weight_decay) == (
            "sgd", 400, 8, 1e-3, 0.9, True, 1e-5)
        assert (cfg.sched.name, cfg.sched.step_size, cfg.sched.gamma, cfg.sched.min_lr) == ("step", 40, 0.1, 1e-7)
        assert cfg.data.crop_size == 480
    else:
        assert set(data) == {"model"}  # method files: the model section only


def test_engine_keeps_the_localizer_gradients(tmp_path):
    """Through the engine (zero_grad -> training_step -> total.backward -> step), M's head
    moves: the gradients training_step leaves in .grad reach the optimiser (weight decay 0,
    dropout 0, detached mask: M's own term is their only source)."""
    from wsol.config import load_config
    from wsol.data import synthesize
    from wsol.engine.trainer import Trainer, build_model, seed_everything
    from wsol.runs import load_checkpoint

    root = tmp_path / "synthetic-glas"
    synthesize("synthetic-glas", root, n=16, size=48, seed=1)
    cfg = load_config(None, [
        "data.name=synthetic-glas", f"data.root={root}", "data.image_size=48", f"run_dir={tmp_path / 'run'}",
        "model.backbone.name=resnet18", "model.method.name=minmax_entropy", "model.method.params.u=2",
        "model.method.params.dropout=0.0", "optim.epochs=1", "optim.batch_size=8", "optim.lr=0.01",
        "optim.weight_decay=0.0", "eval.batch_size=16", "eval.gallery=0",
    ])
    seed_everything(cfg.seed)
    start = build_model(cfg)[0].state_dict()
    result = Trainer(cfg).fit()
    row = result.history[-1]
    assert {"train/loc_ce", "train/loc_ce_erased", "train/m_steps", "train/total"} <= set(row)
    trained = load_checkpoint(tmp_path / "run", "last")["model"]
    assert not torch.equal(trained["head.conv.weight"], start["head.conv.weight"])
