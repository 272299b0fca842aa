"""``wsol bench``: the typer sub-app the main CLI mounts (``app.add_typer(bench_app,
name="bench")``). One command per shipped suite (``wsol bench survey --dataset ...``),
``wsol bench run SUITE_OR_YAML`` for any suite file, ``wsol bench list``.

Human output (progress bars, the summary table) is drawn with the main CLI's console and
progress callbacks, imported when a command runs (the main CLI imports this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from wsol.bench.suites import SUITES_DIR, available_suites
from wsol.errors import WSOLError

bench_app = typer.Typer(no_args_is_help=True, help="Benchmark suites: the papers' tables and figures as one command "
                        "(resumable grids of method × backbone × extractor through the normal engine).")

Dataset = Annotated[str | None, typer.Option(help="dataset name (default: the suite's, e.g. synthetic-glas)")]
Root = Annotated[Path | None, typer.Option(help="data root (default: OUT/data/<dataset> for tiny, data/<dataset> for paper; "
                                                "embedded sets are written there when missing)")]
Backbones = Annotated[list[str] | None, typer.Option(help="random-init backbones (repeatable or comma-separated; "
                                                          "default: the budget's, resnet18)")]
Budget = Annotated[str, typer.Option(help="tiny (minutes on CPU, synthetic data) | long (the full synthetic sets, for a "
                                          "GPU) | paper (the papers' recipes)")]
Track = Annotated[str, typer.Option(help="random (random-init backbones) | pretrained (EfficientNet-Lite0, ImageNet "
                                         "weights offline) | both | auto (both on CUDA, random on CPU)")]
Out = Annotated[Path | None, typer.Option(help="suite folder (default runs/bench/<suite>-<dataset>-<budget>)")]
Only = Annotated[list[str] | None, typer.Option(help="run only these cells (and the cells they need); repeatable or "
                                                     "comma-separated")]
Sets = Annotated[list[str], typer.Option("--set", help="override every cell's config, e.g. optim.epochs=20")]
Overwrite = Annotated[bool, typer.Option(help="re-run every cell (default: finished cells are reused)")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda")]
Verbose = Annotated[bool, typer.Option("-v", help="log at INFO level")]


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _run(suite: str, dataset: str | None, root: Path | None, backbones: list[str] | None, budget: str, track: str,
         out: Path | None, only: list[str] | None, set_: list[str], overwrite: bool, device: str,
         verbose: bool) -> None:
    from rich.table import Table

    from wsol.bench.runner import run_suite
    from wsol.cli import RichCallbacks, _progress, _setup_logging, console

    _setup_logging(verbose)
    with _progress() as progress:
        result = run_suite(suite, dataset=dataset, root=root, budget=budget, track=track,  # type: ignore[arg-type]
                           backbones=_split(backbones), out=out, overrides=list(set_), only=_split(only),
                           overwrite=overwrite, device=device, callbacks=RichCallbacks(progress))
    table = Table(title=f"wsol bench {result.suite.name} — {result.dataset} ({result.budget})")
    for col in ("cell", "backbone", "status", "seconds", "note"):
        table.add_column(col)
    for o in result.outcomes:
        table.add_row(o.plan.cell.id, "any" if o.plan.cell.baseline else o.plan.backbone.key, o.status,
                      f"{o.seconds:.1f}" if o.status == "ran" else "", o.error)
    console.print(table)
    for name, path in {**result.tables, **result.figures}.items():
        console.print(f"{name}: {path}")
    for name, why in result.skipped_outputs.items():
        console.print(f"[dim]{name}: not produced ({why})[/dim]")
    console.print(f"page: {result.out / 'index.html'}")
    if result.failed:
        raise WSOLError(f"{len(result.failed)} cell(s) failed: "
                        + "; ".join(f"{o.plan.name}: {o.error}" for o in result.failed)
                        + f" — see {result.out / 'suite.json'}; fix and run the same command again (finished cells are kept)")


def _suite_command(name: str) -> Any:
    def command(dataset: Dataset = None, root: Root = None, backbones: Backbones = None, budget: Budget = "tiny",
                track: Track = "auto", out: Out = None, only: Only = None, set_: Sets = [],  # noqa: B006
                overwrite: Overwrite = False, device: Device = "auto", verbose: Verbose = False) -> None:
        _run(name, dataset, root, backbones, budget, track, out, only, set_, overwrite, device, verbose)

    return command


def _title(name: str) -> str:
    from wsol.config import load_yaml

    try:
        return str(load_yaml(SUITES_DIR / f"{name}.yaml").get("title", name))
    except WSOLError:
        return name


for _name in available_suites():
    bench_app.command(_name, help=_title(_name))(_suite_command(_name))


@bench_app.command("run")
def run(suite: Annotated[str, typer.Argument(help="a shipped suite name or the path of a suite YAML")],
        dataset: Dataset = None, root: Root = None, backbones: Backbones = None, budget: Budget = "tiny",
        track: Track = "auto", out: Out = None, only: Only = None, set_: Sets = [],  # noqa: B006
        overwrite: Overwrite = False, device: Device = "auto", verbose: Verbose = False) -> None:
    """Run any suite, shipped or from a YAML file."""
    _run(suite, dataset, root, backbones, budget, track, out, only, set_, overwrite, device, verbose)


@bench_app.command("list")
def list_suites() -> None:
    """The shipped suites: their cells, tables and figures."""
    from rich.table import Table

    from wsol.bench.suites import load_suite
    from wsol.cli import console

    table = Table(title="wsol bench suites")
    for col in ("suite", "title", "dataset", "cells", "tables / figures"):
        table.add_column(col)
    for name in available_suites():
        s = load_suite(name)
        table.add_row(name, s.title, s.dataset, str(len(s.cells)),
                      ", ".join([t.id for t in s.tables] + [f.id for f in s.figures]))
    console.print(table)
