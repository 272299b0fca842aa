"""``wsol sweep`` and ``wsol slide`` (typer commands; :mod:`wsol.cli` mounts them, so
several sweep workers are started as ``wsol sweep ...`` or ``python -m wsol sweep ...``).
Human output only here; the work is done by :mod:`wsol.sweep` and :mod:`wsol.slide`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(stderr=False)
err_console = Console(stderr=True, soft_wrap=True)

def sweep_cmd(
    config: Annotated[list[Path], typer.Option("--config", "-c", help="base run config; several are merged in order")],
    space: Annotated[str, typer.Option(help="search space YAML, or a shipped one by name: cam, wildcat, "
                                       "spg, ... (configs/spaces/)")],
    trials: Annotated[int | None, typer.Option(help="trials this worker runs (grid sampler: default until the "
                                               "grid is done)")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna RDB URL shared by workers (default: "
                                                "sqlite:///OUT/study.db)")] = None,
    sampler: Annotated[str, typer.Option(help="tpe | grid | random")] = "tpe",
    study: Annotated[str | None, typer.Option(help="study name (default: the name of --out)")] = None,
    out: Annotated[Path, typer.Option(help="sweep folder: trial-<n>/ run folders, study.db, sweep.json")] = Path(
        "sweeps/default"),
    select: Annotated[str, typer.Option(help="objective: best_loc (B-LOC) | best_cls (B-CL) | a method's own "
                                        "criterion")] = "best_loc",
    pruner: Annotated[str, typer.Option(help="median (prune from per-epoch validation) | none")] = "median",
    seed: Annotated[int | None, typer.Option(help="sampler seed (give each worker its own)")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a base config value, e.g. optim.epochs=5")] = [],  # noqa: B006
    verbose: Annotated[bool, typer.Option("-v")] = False,
) -> None:
    """Hyper-parameter search with Optuna: each trial trains a run folder OUT/trial-<n>, scored by
    the selection criterion on the validation split. Several workers on one --storage cooperate."""
    from wsol.sweep import optuna_verbosity, run_sweep

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    optuna_verbosity(verbose)

    def on_trial(row: dict) -> None:
        value = "—" if row["value"] is None else f"{row['value']:.4g}"
        params = "  ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in row["params"].items())
        console.print(f"trial {row['number']:>4}  {row['state']:<8} {value:>8}  {escape(params)}")

    from wsol.config import config_path

    result = run_sweep([config_path(c) for c in config], space, trials=trials, out=out, storage=storage,
                       sampler=sampler, study=study, overrides=list(set_), select=select, pruner=pruner, seed=seed,
                       on_trial=on_trial)
    done = sum(r["state"] == "COMPLETE" for r in result.trials)
    console.print(f"study {result.study_name!r} ({result.storage}): {len(result.trials)} trials, {done} complete; "
                  f"this worker ran {len(result.ran)}")
    if result.best is not None:
        b = result.best
        console.print(f"best: trial {b['number']} {result.criterion}={b['value']:.4g}  run: {b['run_dir']}")
        for k, v in b["params"].items():
            console.print(f"  --set {k}={v}")
    console.print(f"summary: {Path(out) / 'sweep.json'}")


def slide_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run folder written by `wsol train`")],
    slide: Annotated[Path, typer.Argument(help="whole-slide image (pyramidal TIFF, SVS, ... read by tiffslide)")],
    out: Annotated[Path, typer.Option(help="heatmap (pyramidal TIFF); OUT.png and OUT.json are written "
                                      "next to it")] = Path("heatmap.tif"),
    level: Annotated[int, typer.Option(help="pyramid level the tiles are read at (0 = full resolution)")] = 0,
    tile: Annotated[int, typer.Option(help="tile side in level pixels (resized to the run's input size)")] = 512,
    stride: Annotated[int | None, typer.Option(help="tile step (default: --tile; smaller = overlapping, "
                                               "blended tiles)")] = None,
    checkpoint: Annotated[str, typer.Option(help="best_loc | best_cls | last")] = "best_loc",
    batch: Annotated[int, typer.Option(help="tiles per batch")] = 16,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes reading tiles")] = 2,
    target: Annotated[str | None, typer.Option(help="class name or id (default: the last class)")] = None,
    min_tissue: Annotated[float, typer.Option(help="skip tiles with less tissue than this fraction "
                                              "(0 = keep every tile)")] = 0.05,
    posterior_weight: Annotated[bool, typer.Option(help="heatmap = CAM × tile posterior of the target "
                                                   "(--no-posterior-weight: the CAM alone)")] = True,
    work: Annotated[Path | None, typer.Option(help="work folder of the bands (default: OUT.work); an "
                                              "interrupted run resumes from it")] = None,
    keep_work: Annotated[bool, typer.Option(help="keep the work folder after success")] = False,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda (default: the run's)")] = None,
) -> None:
    """Slide-level CAM heatmap of a whole-slide image: tissue tiles through the run's localize,
    blended into a pyramidal TIFF, with a thumbnail overlay and the slide-level class score."""
    from wsol.slide import slide_heatmap

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]:.1f} tiles/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        task = progress.add_task(f"{slide.name}", total=None, rate=0.0)

        def cb(done: int, total: int, rate: float) -> None:
            progress.update(task, completed=done, total=total, rate=rate)

        result = slide_heatmap(run_dir, slide, out, checkpoint=checkpoint, device=device, level=level, tile=tile,
                               stride=stride, batch=batch, workers=workers, target=target, min_tissue=min_tissue,
                               posterior_weight=posterior_weight, work=work, keep_work=keep_work, progress=cb)
    table = Table(title=f"{slide.name} → {out}")
    table.add_column("")
    table.add_column("")
    s = result.score
    rows = [
        ("level / size", f"{result.level} / {result.size[0]}×{result.size[1]}"),
        ("tiles (tissue / all)", f"{result.tissue_tiles} / {result.tiles}"),
        ("computed now", str(result.computed_tiles) + (f" (resumed at band {result.resumed_from_band})"
                                                       if result.resumed_from_band else "")),
        ("tiles/s", f"{result.tiles_per_s:.1f}"),
        (f"p({s['target']}) max", "—" if s["max"] is None else f"{s['max']:.4f}"),
        (f"p({s['target']}) mean", "—" if s["mean"] is None else f"{s['mean']:.4f}"),
        ("thumbnail", str(result.thumbnail)),
        ("summary", str(result.summary)),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
