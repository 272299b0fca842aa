"""Command-line interface (typer + rich). The only module that parses arguments or prints
for humans. Every user error becomes one readable line (``error: ...``), exit code 2."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from wsol.engine.callbacks import Callbacks, LogCallbacks
from wsol.errors import ConfigError, WSOLError

console = Console(stderr=False)
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="wsol: weakly-supervised object localization — train, localize, evaluate.")
data_app = typer.Typer(no_args_is_help=True, help="Embedded datasets, preparation and verification.")
app.add_typer(data_app, name="data")

# metrics shown in tables (those present are shown, in this order)
TABLE_KEYS = [
    ("top1_acc", "accuracy (%)"), ("top5_acc", "top-5 accuracy (%)"), ("pxap", "PxAP"), ("tp_star", "TP*"),
    ("fn_star", "FN*"), ("fp_star", "FP*"), ("tn_star", "TN*"), ("dice_fg_pooled", "Dice+ pooled @τ*"),
    ("dice_bg_pooled", "Dice- pooled @τ*"), ("f1_fg_mean", "F1+ mean @0.5"), ("f1_bg_mean", "F1- mean @0.5"),
    ("pr_auc_fg", "PR-AUC+ (Fig. 6)"), ("pr_auc_bg", "PR-AUC- (Fig. 6)"), ("tau", "τ*"),
    ("max_box_acc", "MaxBoxAcc"), ("max_box_acc_v2", "MaxBoxAccV2"), ("top1_loc", "top-1 loc"),
    ("top5_loc", "top-5 loc"), ("epoch", "epoch"),
]
#: meaningless with five classes or fewer (the label is always in the top five)
TOP5_KEYS = ("top5_acc", "top5_loc")


def _version(value: bool) -> None:
    if value:
        from wsol import __version__

        console.print(f"wsol {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print wsol's version and exit")] = False,
) -> None:
    """wsol: weakly-supervised object localization — train, localize, evaluate."""


class RichCallbacks(Callbacks):
    """Progress bars for the engine's stages and a line per epoch."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: TaskID | None = None

    def on_stage(self, name: str, total: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(name, total=total)

    def on_advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def on_epoch_end(self, row: dict) -> None:
        shown = {k: v for k, v in row.items() if k in ("train/total", "valcl/top1_acc", "valpx/pxap",
                                                        "valpx/max_box_acc_v2")}
        txt = "  ".join(f"{k}={v:.4g}" for k, v in shown.items())
        self.progress.console.print(f"[dim]epoch {int(row['epoch'])}[/dim]  {txt}")


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)


def _print_line(line: str) -> None:
    print(line, flush=True)  # noqa: T201 — progress lines for logs without a terminal


@contextlib.contextmanager
def progress_callbacks(epochs: int | None = None) -> Iterator[Callbacks]:
    """Progress bars on a terminal; without one (SLURM, CI, a notebook, a pipe) one plain
    line per epoch and per evaluation, with elapsed time and ETA (LogCallbacks)."""
    if console.is_terminal:
        with _progress() as progress:
            yield RichCallbacks(progress)
    else:
        yield LogCallbacks(epochs=epochs, emit=_print_line)


def _n_classes(run_dir: Path | str) -> int | None:
    from wsol.runs import read_run_info

    try:
        info = read_run_info(Path(run_dir))
    except WSOLError:
        return None
    return len(info.class_names) if info is not None else None


def metrics_table(metrics: dict[str, dict], title: str, n_classes: int | None = None) -> Table:
    """Columns side by side; top-5 rows only with more than five classes."""
    table = Table(title=title)
    table.add_column("metric")
    for name in metrics:
        table.add_column(escape(name), justify="right")
    for key, label in TABLE_KEYS:
        if n_classes is not None and n_classes <= 5 and key in TOP5_KEYS:
            continue
        if any(key in m for m in metrics.values()):
            vals = []
            for m in metrics.values():
                v = m.get(key)
                vals.append("—" if v is None else (f"{v:.3f}" if key == "tau" else f"{v:.2f}" if isinstance(v, float) else str(v)))
            table.add_row(label, *vals)
    return table


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def load_config_blaming(paths: Sequence[Path], overrides: list[str], blame: Sequence[str] | None = None):
    """``load_config(paths, overrides)``; when it fails but the YAML files alone validate,
    the ``--set`` values are to blame and the error says so (``--set optim.epoch=3:
    optim.epoch: unknown key``) instead of naming the files. ``blame``: the overrides the
    user typed (default: all)."""
    from wsol.config import load_config

    try:
        return load_config(paths, overrides)
    except ConfigError as e:
        msg = str(e)
        if not overrides or msg.startswith("--set"):
            raise
        try:
            load_config(paths, [])
        except WSOLError:
            raise e from None  # the files themselves are wrong: keep naming them
        source = " + ".join(str(p) for p in paths) or "config"
        msg = msg.removeprefix(source + ": ")
        candidates = list(blame) if blame is not None else list(overrides)
        named = [o for o in candidates if all(part in msg for part in o.split("=", 1)[0].strip().split("."))]
        culprits = named or candidates or overrides
        raise ConfigError(f"--set {', '.join(culprits)}: {msg}") from None


# ------------------------------------------------------------------------------------------
@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help="embedded dataset to run on")] = "synthetic-glas",
    out: Annotated[Path | None, typer.Option(help="run folder (default: the demo config's, runs/demo...)")] = None,
    data_root: Annotated[Path | None, typer.Option(help="where the embedded data is written")] = None,
    epochs: Annotated[int | None, typer.Option(help="override the number of epochs")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a config value, e.g. optim.lr=0.01")] = [],
) -> None:
    """Generate the embedded data, train CAM (ResNet-18, random init), evaluate, write the report."""
    from wsol.config import CONFIGS
    from wsol.data import ensure_dataset
    from wsol.engine.pipeline import train_and_evaluate

    demo_file = CONFIGS / "demo" / f"{dataset}.yaml"
    if not demo_file.is_file():
        valid = sorted(p.stem for p in demo_file.parent.glob("*.yaml"))
        raise WSOLError(f"demo: no demo for dataset {dataset!r}; valid: {', '.join(valid)}")
    root = data_root or Path("data") / dataset
    overrides = [f"data.root={root}"] + ([f"run_dir={out}"] if out else []) + ([f"optim.epochs={epochs}"] if epochs else [])
    overrides += list(set_)
    cfg = load_config_blaming([CONFIGS / "datasets" / f"{dataset}.yaml", demo_file], overrides, blame=set_)
    console.print(f"[bold]wsol demo[/bold]: {dataset} → {cfg.run_dir}")
    ensure_dataset(cfg.data.name, Path(cfg.data.root))
    with progress_callbacks(cfg.optim.epochs) as cb:  # the demo replaces its own previous run folder
        _, evals = train_and_evaluate(cfg, cb, overwrite=True)
    console.print(metrics_table({k: v.result.metrics for k, v in evals.items()}, f"test split — {dataset}",
                                _n_classes(cfg.run_dir)))
    console.print(f"report: {Path(cfg.run_dir) / 'report.html'}")


@app.command()
def train(
    config: Annotated[list[Path], typer.Option("--config", "-c", help="YAML config; several are merged in order")] = [],
    set_: Annotated[list[str], typer.Option("--set", help="override a config value, e.g. optim.lr=0.01")] = [],
    resume: Annotated[bool, typer.Option(help="continue from RUN/checkpoints/last.pt")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace a previous run in run_dir (its own files only)")] = False,
    no_eval: Annotated[bool, typer.Option("--no-eval", help="train only; skip test evaluation and report")] = False,
    verbose: Annotated[bool, typer.Option("-v")] = False,
) -> None:
    """Train a method; then evaluate best_loc and best_cls on the test split and write the report."""
    from wsol.config import config_path
    from wsol.engine.pipeline import train_and_evaluate
    from wsol.engine.trainer import Trainer

    _setup_logging(verbose)
    paths = [config_path(c) for c in config]
    overrides = list(set_)
    if resume and len(paths) == 1 and (paths[0].parent / "run.json").is_file() and paths[0].name == "config.yaml":
        overrides.insert(0, f"run_dir={paths[0].parent}")  # a moved or copied run resumes where it is now
    cfg = load_config_blaming(paths, overrides, blame=set_)
    with progress_callbacks(cfg.optim.epochs) as cb:
        if no_eval:
            Trainer(cfg, callbacks=cb, overwrite=overwrite).fit(resume=resume)
            return
        _, evals = train_and_evaluate(cfg, cb, resume=resume, overwrite=overwrite)
    if not evals:  # a non-zero rank under torchrun: rank 0 prints and writes
        return
    console.print(metrics_table({k: v.result.metrics for k, v in evals.items()}, f"test split — {cfg.run_dir}",
                                _n_classes(cfg.run_dir)))
    console.print(f"report: {Path(cfg.run_dir) / 'report.html'}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `wsol train`")],
    checkpoint: Annotated[list[str] | None, typer.Option(
        help="best_loc | best_cls | best_s | last (repeatable; default: every selection criterion the run kept)")] = None,
    split: Annotated[str, typer.Option(help="train | valcl | valpx | test")] = "test",
    extractor: Annotated[str | None, typer.Option(help="evaluate through a top-down extractor (e.g. gradcam)")] = None,
    layer: Annotated[str | None, typer.Option(help="extractor target layer, e.g. backbone.layer4")] = None,
    eval_size: Annotated[str, typer.Option(help="input (model input size) | original (each image's size)")] = "input",
    crf: Annotated[str | None, typer.Option(
        help="refine the CAMs with a dense CRF before scoring: glas | natural (min-max-entropy App. B.3.3); "
             "own column <checkpoint>[+extractor]+crf-<preset>")] = None,
    crf_iters: Annotated[int | None, typer.Option(
        help="with --crf: mean-field iterations instead of the preset's (column tag gets -it<N>)")] = None,
) -> None:
    """Evaluate checkpoints of a run with every metric of the protocol.

    Results go to RUN/eval/<checkpoint>[+extractor][+crf-preset]/<split>/ and are merged into
    the split's summary (RUN/metrics.json for test, RUN/metrics-<split>.json otherwise)."""
    from wsol.engine.pipeline import evaluate_selected

    factory, tag = _localizer_factory(extractor, layer)
    if crf is not None:
        from wsol.postprocess import with_crf

        factory, tag = with_crf(factory, tag, crf, **({} if crf_iters is None else {"iterations": crf_iters}))
    elif crf_iters is not None:
        raise WSOLError("--crf-iters goes with --crf glas|natural")
    with progress_callbacks() as cb:
        evals = evaluate_selected(run_dir, split, cb, tuple(checkpoint) if checkpoint else None,
                                  localizer_factory=factory, eval_size=eval_size, tag=tag)
    console.print(metrics_table({v.column: v.result.metrics for v in evals.values()},
                                f"{split} split — {run_dir}" + (f" — {tag}" if tag else ""),
                                _n_classes(run_dir)))


def _localizer_factory(extractor: str | None, layer: str | None):
    if extractor is None:
        if layer is not None:
            raise WSOLError("--layer needs --extractor")
        return None, None
    from wsol.explain import build_extractor

    def factory(method):
        return build_extractor(extractor, method, layer or _default_layer(method))

    return factory, f"{extractor}-{layer}" if layer else extractor


def _default_layer(method) -> str:
    """The last stage of the backbone (the layer CAMs are usually taken from)."""
    from wsol.engine.infer import default_layer

    return default_layer(method)


@app.command()
def cam(
    inputs: Annotated[list[str], typer.Argument(
        help="a run folder then images; with --model, images only. Images: files, folders, glob patterns")],
    out: Annotated[Path, typer.Option(help="output folder: <stem>_heatmap.png, <stem>_overlay.png, <stem>_cam.npy")]
    = Path("cams"),
    model: Annotated[str | None, typer.Option(
        help="instead of a run: a registered backbone's full classifier, e.g. efficientnet_lite0")] = None,
    weights: Annotated[str | None, typer.Option(
        help="with --model: imagenet-offline (efficientnet_lite0), a local state-dict file of the whole "
             "network (head included), or a torchvision weights name")] = None,
    classes: Annotated[Path | None, typer.Option(
        help="with --model: class names, one per line (default: ImageNet's for a 1000-way head)")] = None,
    image_size: Annotated[int, typer.Option(help="with --model: the square input size")] = 224,
    checkpoint: Annotated[str, typer.Option(help="with a run: best_loc | best_cls | last")] = "best_loc",
    target: Annotated[str | None, typer.Option(help="class name or id (default: predicted)")] = None,
    extractor: Annotated[str | None, typer.Option(
        help="top-down extractor, e.g. gradcam (default: the method's own CAM; gradcam with --model)")] = None,
    layer: Annotated[str | None, typer.Option(help="extractor target layer (default: the backbone's last stage)")]
    = None,
    topk: Annotated[int, typer.Option(help="predicted classes printed per image")] = 5,
) -> None:
    """CAMs of your own images, at their original size, from a run or a pretrained classifier.

    Writes a heatmap and an overlay PNG and the raw CAM (.npy, float32) per image and prints
    the top-k predicted classes. From a trained run (`wsol cam RUN img.png`) or a pretrained
    classifier with no training (`wsol cam --model efficientnet_lite0 --weights
    imagenet-offline photo.jpg`)."""
    from wsol.engine.infer import cam_files, pretrained_cam_model, run_cam_model

    if topk < 1:
        raise WSOLError("--topk must be at least 1")
    if model is not None:
        if weights is None:
            raise WSOLError(f"--model {model} needs --weights (e.g. imagenet-offline for efficientnet_lite0, or a "
                            "local state-dict file of the full classifier)")
        names = None
        if classes is not None:
            if not classes.is_file():
                raise WSOLError(f"--classes {classes}: no such file (one class name per line)")
            names = [ln.strip() for ln in classes.read_text().splitlines() if ln.strip()]
        cm = pretrained_cam_model(model, weights, extractor=extractor or "gradcam", layer=layer,
                                  image_size=image_size, class_names=names)
        images, source = inputs, f"{model} ({weights})"
    else:
        for flag, value in (("--weights", weights), ("--classes", classes)):
            if value is not None:
                raise WSOLError(f"{flag} goes with --model (a pretrained classifier); a run folder has its own")
        run = Path(inputs[0])
        if not (run / "config.yaml").is_file():
            raise WSOLError(f"{run}: not a run folder. Give a run folder first (`wsol cam RUN images...`) or a "
                            "pretrained classifier (`wsol cam --model efficientnet_lite0 --weights imagenet-offline "
                            "images...`)")
        if len(inputs) < 2:
            raise WSOLError(f"no image given after the run folder {run}")
        factory, _ = _localizer_factory(extractor, layer)
        cm = run_cam_model(run, checkpoint, factory)
        images, source = inputs[1:], f"{run} ({checkpoint})"
    rows = cam_files(cm, images, out, target=target, topk=topk)
    k = min(topk, len(cm.class_names))
    table = Table(title=f"CAMs of {escape(source)} → {escape(str(out))}/<stem>_{{heatmap,overlay}}.png, <stem>_cam.npy")
    for col in ("image", "W×H", f"top-{k} (p)", "CAM of", "stem"):
        table.add_column(col)
    for r in rows:
        top = "\n".join(f"{p:.3f} {escape(name)}" for name, p in r["topk"])
        stem = Path(r["heatmap"]).name.removesuffix("_heatmap.png")
        table.add_row(escape(r["image"]), f"{r['size'][0]}×{r['size'][1]}", top, escape(r["target"]), escape(stem))
    console.print(table)


@app.command()
def score(
    cams_dir: Annotated[Path, typer.Argument(help="folder of CAMs: <image_id>.npy per image (wsolevaluation's layout)")],
    dataset: Annotated[str, typer.Option(help="registered dataset name (wsol data list)")],
    root: Annotated[Path, typer.Option(help="the dataset's root folder")],
    split: Annotated[str, typer.Option(help="train | valcl | valpx | test")] = "test",
    option: Annotated[list[str], typer.Option("--option", help="reader option KEY=VALUE")] = [],
    cam_curve_interval: Annotated[float, typer.Option(
        help="threshold step: 0.001 (the protocol's 1000 thresholds) or a coarser multiple, e.g. 0.01")] = 0.001,
    image_size: Annotated[int | None, typer.Option(
        help="score with every image resized to this square size (wsolevaluation: 224); default: each "
             "image's own size")] = None,
    normalize: Annotated[bool, typer.Option(help="min-max normalise every CAM (for CAMs outside [0, 1])")] = False,
    out: Annotated[Path | None, typer.Option(help="also write the metrics to this JSON file")] = None,
) -> None:
    """Score CAMs made by any other code (CAMS_DIR/<image_id>.npy) with the exact protocol.

    PxAP, confusion*, Dice on mask sets; MaxBoxAcc, MaxBoxAccV2 on box sets. A CAM of another
    size than its image is resized bilinearly to it (then min-max normalised), as
    wsolevaluation does."""
    from wsol.config import parse_override
    from wsol.engine.score import score_cams

    opts = {}
    for o in option:
        k, v = parse_override(o)
        opts[".".join(k)] = v
    with progress_callbacks() as cb:
        res = score_cams(cams_dir, dataset, root, split, opts, cam_curve_interval=cam_curve_interval,
                         image_size=image_size, normalize=normalize, callbacks=cb)
    console.print(metrics_table({str(cams_dir): res.metrics},
                                f"{dataset} {split}: {res.n_images} CAMs, thresholds every {res.metrics['cam_curve_interval']:g}"))
    if out is not None:
        from wsol.fileio import write_json

        write_json(out, res.metrics)
        console.print(f"metrics: {out}")


methods_app = typer.Typer(invoke_without_command=True, help="Registered methods (and extractors).")
app.add_typer(methods_app, name="methods")


@methods_app.callback()
def methods(ctx: typer.Context) -> None:
    """List the registered methods (and extractors); `wsol methods show NAME` for one."""
    if ctx.invoked_subcommand is not None:
        return
    from wsol.explain.registry import EXTRACTORS
    from wsol.methods import METHODS

    table = Table(title="methods")
    table.add_column("name")
    table.add_column("description")
    for name in METHODS.names():
        cls = METHODS.get(name)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        table.add_row(name, " ".join(doc.split("\n\n")[0].split()))  # first paragraph
    console.print(table)
    console.print("extractors (wsol evaluate --extractor NAME): " + ", ".join(EXTRACTORS.names()))


@methods_app.command("show")
def methods_show(name: Annotated[str, typer.Argument(help="method name, e.g. wildcat")]) -> None:
    """Print a method's parameters (model.method.params) with defaults and descriptions."""
    from wsol.methods import METHODS

    cls = METHODS.get(name)
    console.print(schema_table(cls.Params, f"{name}: model.method.params"))


def schema_table(model: type, title: str) -> Table:
    """A pydantic model's fields: name, type, default, description."""
    table = Table(title=title)
    for col in ("field", "type", "default", "description"):
        table.add_column(col)
    for fname, f in model.model_fields.items():  # type: ignore[attr-defined]
        ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        table.add_row(fname, escape(ann), escape(default), escape(f.description or ""))
    return table


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """Rebuild RUN/report.html from the run's saved evaluations."""
    from wsol.report.html import write_report

    console.print(f"report: {write_report(run_dir)}")


# ------------------------------------------------------------------------------------------
@data_app.command("list")
def data_list() -> None:
    """List the registered datasets."""
    from wsol.data.registry import DATASETS, EMBEDDED

    table = Table(title="datasets")
    for col in ("name", "labels", "embedded", "description"):
        table.add_column(col)
    for name in DATASETS.names():
        spec = DATASETS.get(name)
        table.add_row(name, spec.loc, "yes" if name in EMBEDDED else "", spec.description)
    console.print(table)


@data_app.command("show")
def data_show(name: Annotated[str, typer.Argument(help="dataset name, e.g. glas")]) -> None:
    """Print a dataset's reader options (data.options) with defaults and descriptions."""
    from wsol.data.registry import DATASETS

    spec = DATASETS.get(name)
    console.print(f"[bold]{escape(name)}[/bold] ({spec.loc} labels): {escape(spec.description)}")
    console.print(schema_table(spec.Options, f"{name}: data.options"))


@data_app.command("synth")
def data_synth(
    name: Annotated[str, typer.Argument(help="embedded dataset name, e.g. synthetic-glas")],
    out: Annotated[Path, typer.Option(help="output folder")],
    n: Annotated[int | None, typer.Option(help="number of training images (other splits scale)")] = None,
    size: Annotated[int | None, typer.Option(help="image side in pixels")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace a previous output of this generator in OUT (a folder "
                                                 "holding other files is always refused)")] = False,
) -> None:
    """Write an embedded (synthetic or skimage-derived) dataset to disk in the metadata layout."""
    from wsol.data import synthesize

    path = synthesize(name, out, n=n, size=size, seed=seed, overwrite=overwrite)
    console.print(f"wrote {name} to {path}")


@data_app.command("verify")
def data_verify(
    name: Annotated[str, typer.Argument(help="dataset name")],
    root: Annotated[Path, typer.Argument(help="dataset root folder")],
    option: Annotated[list[str], typer.Option("--option", help="reader option KEY=VALUE")] = [],
) -> None:
    """Check everything a reader relies on; print a summary and every problem at once."""
    from wsol.config import parse_override
    from wsol.data.verify import verify_dataset

    opts = {}
    for o in option:
        k, v = parse_override(o)
        opts[".".join(k)] = v
    rep = verify_dataset(name, root, opts)
    table = Table(title=f"{name} at {root} ({rep.checked} images checked)")
    for col in ("split", "class", "images", "with mask", "with boxes"):
        table.add_column(col)
    for r in rep.rows:
        table.add_row(r.split, "all" if r.class_id == -1 else r.class_name, str(r.images), str(r.with_mask),
                      str(r.with_boxes))
    console.print(table)
    for p in rep.problems:
        color = "red" if p.severity == "error" else "yellow"
        where = "" if not p.where or p.message.startswith(p.where) else f"{p.where}: "  # messages often name it
        err_console.print(f"[{color}]{p.severity}[/{color}] {p.split}: {where}{p.message}", highlight=False)
    if not rep.ok:
        err_console.print(f"[red]{len(rep.errors)} error(s)[/red], {len(rep.warnings)} warning(s)")
        raise typer.Exit(1)
    console.print(f"[green]no error[/green], {len(rep.warnings)} warning(s)")


@data_app.command("prepare")
def data_prepare(
    name: Annotated[str, typer.Argument(help="camelyon16")],
    wsi: Annotated[Path, typer.Option(help="folder of WSIs (.tif)")],
    annotations: Annotated[Path, typer.Option(help="folder of ASAP XML annotations")],
    out: Annotated[Path, typer.Option(help="output folder (metadata layout)")],
    seed: Annotated[int, typer.Option()] = 0,
    workers: Annotated[int, typer.Option(help="processes (one slide each)")] = 2,
    split: Annotated[str | None, typer.Option(help="official (default: the challenge's train/test slides; valcl "
                                                   "from training slides) | csv | random")] = None,
    split_csv: Annotated[Path | None, typer.Option(help="CSV of 'slide,split' rows (implies --split csv)")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="official split: share of training slides per kind "
                                                            "moved to valcl (default 0.267, the survey's counts)")] = None,
) -> None:
    """Sample the patch dataset from whole-slide images (CAMELYON16 protocol, survey App. B)."""
    if name != "camelyon16":
        raise WSOLError(f"data prepare: unknown dataset {name!r}; valid: camelyon16")
    from wsol.data.wsi import prepare_camelyon16

    with _progress() as progress:
        tasks: dict[str, TaskID] = {}

        def cb(stage: str, done: int, total: int, name: str) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(f"{stage}", total=total)
            progress.update(tasks[stage], completed=done, total=total, description=f"{stage} {name}"[:28])

        summary = prepare_camelyon16(wsi, annotations, out, seed=seed, workers=workers, progress=cb,
                                     split=split, split_csv=split_csv, val_fraction=val_fraction)
    table = Table(title=f"camelyon16 patches → {out}")
    for col in summary.COLUMNS:
        table.add_column(col)
    for row in summary.rows():
        table.add_row(*[str(v) for v in row])
    console.print(table)


# Sub-commands defined in other modules, mounted here one line each. Their module-level
# imports stay light: this module is imported by every command.
def _mount_subcommands() -> None:
    from wsol.bench.cli import bench_app
    from wsol.cli_scale import slide_cmd, sweep_cmd

    app.add_typer(bench_app, name="bench")
    app.command("sweep")(sweep_cmd)
    app.command("slide")(slide_cmd)


_mount_subcommands()


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the typer app; a user error (WSOLError) prints one line, exit 2."""
    try:
        app(args=argv, prog_name="wsol")
    except SystemExit as e:  # typer/click exit (normal end, --help, usage error)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except WSOLError as e:  # user text may hold [brackets]: escape it from rich's markup
        err_console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
