"""Command-line interface (typer + rich). The only module that parses arguments or prints
for humans. Every user error becomes one readable line (``error: ...``), exit code 2."""

from __future__ import annotations

import logging
import sys
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

from wsol.engine.callbacks import Callbacks
from wsol.errors import WSOLError

console = Console(stderr=False)
CONFIGS = Path(__file__).parent / "configs"  # shipped configs (the repo's configs/ links here)
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="wsol: weakly-supervised object localization — train, localize, evaluate.")
data_app = typer.Typer(no_args_is_help=True, help="Embedded datasets, preparation and verification.")
app.add_typer(data_app, name="data")

# metrics shown in tables (those present are shown, in this order)
TABLE_KEYS = [
    ("top1_acc", "accuracy (%)"), ("pxap", "PxAP"), ("tp_star", "TP*"), ("fn_star", "FN*"), ("fp_star", "FP*"),
    ("tn_star", "TN*"), ("dice_fg_pooled", "Dice+ pooled @τ*"), ("dice_bg_pooled", "Dice- pooled @τ*"),
    ("f1_fg_mean", "F1+ mean @0.5"), ("f1_bg_mean", "F1- mean @0.5"), ("tau", "τ*"),
    ("max_box_acc", "MaxBoxAcc"), ("max_box_acc_v2", "MaxBoxAccV2"), ("top1_loc", "top-1 loc"),
    ("top5_loc", "top-5 loc"), ("epoch", "epoch"),
]


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


def metrics_table(metrics: dict[str, dict], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    for name in metrics:
        table.add_column(name, justify="right")
    for key, label in TABLE_KEYS:
        if any(key in m for m in metrics.values()):
            vals = []
            for m in metrics.values():
                v = m.get(key)
                vals.append("—" if v is None else (f"{v:.3f}" if key == "tau" else f"{v:.2f}" if isinstance(v, float) else str(v)))
            table.add_row(label, *vals)
    return table


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


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
    from wsol.config import load_config
    from wsol.data import ensure_dataset
    from wsol.engine.pipeline import train_and_evaluate

    demo_file = CONFIGS / "demo" / f"{dataset}.yaml"
    if not demo_file.is_file():
        valid = sorted(p.stem for p in demo_file.parent.glob("*.yaml"))
        raise WSOLError(f"demo: no demo for dataset {dataset!r}; valid: {', '.join(valid)}")
    root = data_root or Path("data") / dataset
    overrides = [f"data.root={root}"] + ([f"run_dir={out}"] if out else []) + ([f"optim.epochs={epochs}"] if epochs else [])
    overrides += list(set_)
    cfg = load_config([CONFIGS / "datasets" / f"{dataset}.yaml", demo_file], overrides)
    console.print(f"[bold]wsol demo[/bold]: {dataset} → {cfg.run_dir}")
    ensure_dataset(cfg.data.name, Path(cfg.data.root))
    with _progress() as progress:  # the demo replaces its own previous run folder
        _, evals = train_and_evaluate(cfg, RichCallbacks(progress), overwrite=True)
    console.print(metrics_table({k: v.result.metrics for k, v in evals.items()}, f"test split — {dataset}"))
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
    from wsol.config import load_config
    from wsol.engine.pipeline import train_and_evaluate
    from wsol.engine.trainer import Trainer

    _setup_logging(verbose)
    paths = [_config_path(c) for c in config]
    overrides = list(set_)
    if resume and len(paths) == 1 and (paths[0].parent / "run.json").is_file() and paths[0].name == "config.yaml":
        overrides.insert(0, f"run_dir={paths[0].parent}")  # a moved or copied run resumes where it is now
    cfg = load_config(paths, overrides)
    with _progress() as progress:
        cb = RichCallbacks(progress)
        if no_eval:
            Trainer(cfg, callbacks=cb, overwrite=overwrite).fit(resume=resume)
            return
        _, evals = train_and_evaluate(cfg, cb, resume=resume, overwrite=overwrite)
    console.print(metrics_table({k: v.result.metrics for k, v in evals.items()}, f"test split — {cfg.run_dir}"))
    console.print(f"report: {Path(cfg.run_dir) / 'report.html'}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `wsol train`")],
    checkpoint: Annotated[list[str], typer.Option(help="best_loc | best_cls | last (repeatable)")] = ["best_loc", "best_cls"],
    split: Annotated[str, typer.Option(help="train | valcl | valpx | test")] = "test",
    extractor: Annotated[str | None, typer.Option(help="evaluate through a top-down extractor (e.g. gradcam)")] = None,
    layer: Annotated[str | None, typer.Option(help="extractor target layer, e.g. backbone.layer4")] = None,
    eval_size: Annotated[str, typer.Option(help="input (model input size) | original (each image's size)")] = "input",
) -> None:
    """Evaluate checkpoints of a run with every metric of the protocol; results go to
    RUN/eval/<checkpoint>[+extractor]/<split>/ and are merged into the split's summary."""
    from wsol.engine.pipeline import evaluate_selected

    factory, tag = _localizer_factory(extractor, layer)
    with _progress() as progress:
        evals = evaluate_selected(run_dir, split, RichCallbacks(progress), tuple(checkpoint),
                                  localizer_factory=factory, eval_size=eval_size, tag=tag)
    console.print(metrics_table({v.column: v.result.metrics for v in evals.values()},
                                f"{split} split — {run_dir}" + (f" — {extractor}" if extractor else "")))


def _config_path(path: Path) -> Path:
    """A config file, or the name of a shipped one (``methods/wildcat`` -> configs/methods/wildcat.yaml)."""
    if path.is_file():
        return path
    shipped = CONFIGS / (path if path.suffix else path.with_suffix(".yaml"))
    return shipped if shipped.is_file() else path


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
    from wsol.nn.backbones import FeatureBackbone

    backbone = getattr(method, "backbone", None)
    if not isinstance(backbone, FeatureBackbone):
        raise WSOLError("--layer is required for this method (no standard backbone found)")
    return f"backbone.{backbone.stage_names[-1]}"


@app.command()
def cam(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `wsol train`")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    out: Annotated[Path, typer.Option(help="output folder for heatmap and overlay PNGs")] = Path("cams"),
    checkpoint: Annotated[str, typer.Option(help="best_loc | best_cls | last")] = "best_loc",
    target: Annotated[str | None, typer.Option(help="class name or id (default: predicted)")] = None,
    extractor: Annotated[str | None, typer.Option(help="top-down extractor, e.g. gradcam")] = None,
    layer: Annotated[str | None, typer.Option(help="extractor target layer")] = None,
) -> None:
    """Write the CAM heatmap and overlay of each image (and print the predicted class)."""
    from wsol.engine.infer import cam_images

    factory, _ = _localizer_factory(extractor, layer)
    rows = cam_images(run_dir, images, out, checkpoint=checkpoint, target=target, localizer_factory=factory)
    table = Table(title=f"CAMs → {out}")
    for col in ("image", "predicted", "p", "target", "heatmap", "overlay"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["image"], r["predicted"], f"{r['prob']:.3f}", r["target"], r["heatmap"], r["overlay"])
    console.print(table)


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
) -> None:
    """Write an embedded (synthetic or skimage-derived) dataset to disk in the metadata layout."""
    from wsol.data import synthesize

    path = synthesize(name, out, n=n, size=size, seed=seed)
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
        err_console.print(f"[{color}]{p.severity}[/{color}] {p.split}: {p.where}: {p.message}", highlight=False)
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

        summary = prepare_camelyon16(wsi, annotations, out, seed=seed, workers=workers, progress=cb)
    table = Table(title=f"camelyon16 patches → {out}")
    for col in summary.COLUMNS:
        table.add_column(col)
    for row in summary.rows():
        table.add_row(*[str(v) for v in row])
    console.print(table)


# scale-out commands (wsol.cli_scale): hyper-parameter sweeps on Optuna, whole-slide heatmaps
def _mount_scale() -> None:
    from wsol.cli_scale import slide_cmd, sweep_cmd

    app.command("sweep")(sweep_cmd)
    app.command("slide")(slide_cmd)


_mount_scale()


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
