"""A suite's outputs, computed from its cell folders after the cells ran: the complexity
figures its tables need (measured once per cell and kept in ``complexity.json``), the
down-scale simulation of f-cam App. E, the tables (Markdown + CSV), the figures (PNG),
``README.md`` and the self-contained ``index.html``. Everything here can be rebuilt from
the folder at any time (what is measured is cached, never recomputed)."""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wsol.bench.runner import (
    COMPLEXITY_JSON,
    CellPlan,
    SuiteRun,
    base_config,
    crf_factory,
    crf_preset,
    read_bench,
    selection_progress,
    table_checkpoint,
)
from wsol.bench.suites import FigureSpec, TableSpec
from wsol.bench.tables import (
    Results,
    Table,
    build_complexity_table,
    build_metrics_table,
    table_html,
    table_markdown,
    write_table,
)
from wsol.config import build_config
from wsol.errors import WSOLError
from wsol.fileio import atomic_write_bytes, atomic_write_text, write_json
from wsol.runs import METRICS, read_json, resolve_device

log = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1250px;color:#222}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.05em;margin-top:1.4em}table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th:first-child,td:first-child{text-align:left}
thead th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}.muted{color:#777;font-size:.9em}
code{background:#f5f5f5;padding:.1em .3em}
"""


# --- measurements --------------------------------------------------------------------------
def _cell_complexity(plan: CellPlan, suffix: str | None, run: SuiteRun) -> dict[str, Any]:
    from wsol.bench.baselines import build_baseline
    from wsol.bench.complexity import extractor_localizer, measure
    from wsol.runs import load_run

    c = run.suite.budgets[run.budget].complexity
    cfg = plan.config
    assert cfg is not None
    size = c.image_size or cfg.data.image_size
    kw: dict[str, Any] = {"image_size": size, "batch_sizes": c.batch_sizes, "warmup": c.warmup, "repeats": c.repeats}
    if plan.cell.baseline is not None:
        model: Any = build_baseline(plan.cell.baseline, 2, plan.cell.sigma)
        return measure(model, device=resolve_device(cfg.device), num_classes=2, **kw)
    loaded = load_run(plan.dir, table_checkpoint(plan.cell, run.suite.checkpoint))
    model, n = loaded.method, len(loaded.class_names)
    if suffix == "crf":
        assert plan.cell.crf is not None
        preset = crf_preset(plan.cell.crf, cfg.data.name)
        return measure(model, device=loaded.device, num_classes=n, localize=crf_factory(preset)(model),
                       own_localize=False, **kw)
    if suffix:
        return measure(model, device=loaded.device, num_classes=n, localize=extractor_localizer(suffix, model),
                       own_localize=False, **kw)
    return measure(model, device=loaded.device, num_classes=n, **kw)


def ensure_complexity(run: SuiteRun, specs: list[TableSpec]) -> dict[str, dict[str, dict]]:
    """Measure what the complexity tables need and is not measured yet: per cell folder
    (``complexity.json``, keyed ``own`` / extractor / ``crf``), and for ``rows:
    registered`` every registered method per backbone (``OUT/complexity/<backbone>.json``)."""
    from wsol.bench.complexity import registered_complexity

    registered: dict[str, dict[str, dict]] = {}
    c = run.suite.budgets[run.budget].complexity
    for spec in specs:
        if spec.rows == "registered":
            for b in run.backbones:
                path = run.out / "complexity" / f"{b.key}.json"
                data = read_json(path) if path.is_file() else {}
                if not data or any(f"cam+{e}" not in data for e in spec.extractors):
                    data = registered_complexity(backbone=b.name, image_size=c.image_size or 224,
                                                 device=resolve_device(run.device), extractors=spec.extractors,
                                                 batch_sizes=c.batch_sizes, warmup=c.warmup, repeats=c.repeats)
                    write_json(path, data)
                registered[b.key] = data
            continue
        refs = [r for r in (spec.rows if isinstance(spec.rows, list) else run.suite.all_rows()) if isinstance(r, str)]
        for ref in refs:
            cell, suffix = run.suite.resolve(ref)
            for plan in run.plans:
                if plan.cell.id != cell.id or plan.config is None or not (plan.dir / METRICS).is_file():
                    continue
                path = plan.dir / COMPLEXITY_JSON
                entries = read_json(path) if path.is_file() else {}
                key = suffix or "own"
                if key in entries:
                    continue
                try:
                    entries[key] = _cell_complexity(plan, suffix, run)
                except (WSOLError, RuntimeError) as e:
                    log.warning("complexity of %s (%s): %s", plan.name, key, e)
                    entries[key] = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
                write_json(path, entries)
    return registered


def downscale_pxap(loader: Any, factors: list[int]) -> dict[str, Any]:
    """f-cam App. E (Fig. D.3): each test mask down-scaled by z (bilinear, antialiased) and
    up-scaled back (bilinear) stands for an ideal low-resolution CAM; its PxAP against the
    mask, per z. Ignored pixels count as background in the input and are left out of the
    metric."""
    from wsol.metrics import PixelAccumulator

    accs = {z: PixelAccumulator(track_regions=False) for z in factors}
    for batch in loader:
        if batch.masks is None or batch.has_mask is None or not bool(batch.has_mask.any()):
            continue
        masks = batch.masks[batch.has_mask]
        x = (masks == 1).float()[:, None]
        h, w = masks.shape[-2:]
        for z in factors:
            if z == 1:
                cams = x
            else:
                small = F.interpolate(x, size=(max(1, math.ceil(h / z)), max(1, math.ceil(w / z))), mode="bilinear",
                                      align_corners=False, antialias=True)
                cams = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
            accs[z].update(cams[:, 0].clamp(0, 1), masks)
    out: dict[str, Any] = {"factors": [], "pxap": []}
    for z, acc in accs.items():
        if acc.n_images and int(acc.hist[1].sum()):
            out["factors"].append(z)
            out["pxap"].append(acc.compute()["pxap"])
    return out


def ensure_downscale(run: SuiteRun, spec: FigureSpec) -> dict[str, Any]:
    from wsol.engine.trainer import make_loader

    path = run.out / f"simulation-{spec.id}.json"
    if path.is_file():
        data = read_json(path)
        if data.get("requested") == spec.factors:
            return data
    budget = run.suite.budgets[run.budget]
    root = Path(read_json(run.out / "suite.json")["data_root"])
    cfg = build_config(base_config(run.dataset, root, budget), f"suite {run.suite.name}: {spec.id}")
    size = cfg.data.image_size
    factors = [z for z in spec.factors if z <= size]
    data = {"requested": spec.factors, "image_size": size, **downscale_pxap(make_loader(cfg, "test", train=False),
                                                                            factors)}
    write_json(path, data)
    return data


# --- writing --------------------------------------------------------------------------------
def write_outputs(run: SuiteRun) -> None:
    """Tables, figures, README.md and index.html of ``run`` (into ``run.out``)."""
    from wsol.bench.figures import build_figure

    suite = run.suite
    registered = ensure_complexity(run, [t for t in suite.tables if t.kind == "complexity"])
    res = Results(run)
    tables: list[Table] = []
    for spec in suite.tables:
        built = build_complexity_table(spec, res, registered) if spec.kind == "complexity" \
            else build_metrics_table(spec, res)
        if isinstance(built, str):
            run.skipped_outputs[spec.id] = built
            continue
        if not built.rows:
            run.skipped_outputs[spec.id] = "none of its rows is a cell of this run"
            continue
        md, _ = write_table(built, run.out / "tables")
        run.tables[spec.id] = md
        tables.append(built)
    figures: list[tuple[FigureSpec, bytes]] = []
    for fspec in suite.figures:
        ctx: dict[str, Any] = {}
        if fspec.kind == "downscale":
            ctx["downscale"] = ensure_downscale(run, fspec)
        png = build_figure(fspec, res, ctx)
        if isinstance(png, str):
            run.skipped_outputs[fspec.id] = png
            continue
        path = run.out / "figures" / f"{fspec.id}.png"
        atomic_write_bytes(path, png)
        run.figures[fspec.id] = path
        figures.append((fspec, png))
    atomic_write_text(run.out / "README.md", _markdown(run, tables, figures))
    atomic_write_text(run.out / "index.html", _html(run, tables, figures))


def _status_rows(run: SuiteRun) -> list[list[str]]:
    by_plan = {id(o.plan): o for o in run.outcomes}
    rows = []
    for p in run.plans:
        o = by_plan.get(id(p))
        rec = read_bench(p.dir)
        if o is None and not rec:
            continue  # not run now (--only) and never finished here
        prog = selection_progress(p.dir, run.loc_kind) if p.config is not None else None
        curve = "—" if prog is None else (f"best {prog['best']:.2f} @ epoch {prog['best_epoch']}, "
                                          f"last {prog['last']:.2f} @ {prog['last_epoch']}")
        secs = rec.get("seconds")
        rows.append([p.cell.display, p.dir.name if p.cell.baseline is None else "any",
                     o.status if o else "done earlier", rec.get("device") or "—",
                     "—" if secs is None else f"{secs:.1f}", curve, (o.error if o else "") or p.skip or ""])
    return rows


STATUS_HEADER = ["cell", "backbone", "status", "device", "seconds", "validation localisation (valpx)", "note"]


def _meta(run: SuiteRun) -> list[tuple[str, str]]:
    info = read_json(run.out / "suite.json") if (run.out / "suite.json").is_file() else {}
    return [("suite", f"{run.suite.name} — {run.suite.title}"), ("paper", run.suite.paper or "—"),
            ("dataset", f"{run.dataset} ({run.loc_kind} labels) at {info.get('data_root', '?')}"),
            ("budget", f"{run.budget}: {run.suite.budgets[run.budget].description}"),
            ("track", f"{info.get('track', '?')}: " + ", ".join(b.label for b in run.backbones)),
            ("cells", f"{run.count('ran')} run now, {run.count('done')} reused, {run.count('skipped')} skipped, "
                      f"{run.count('failed')} failed"),
            ("command", run.command), ("wsol / torch", f"{info.get('wsol', '?')} / {torch.__version__}")]


def _markdown(run: SuiteRun, tables: list[Table], figures: list[tuple[FigureSpec, bytes]]) -> str:
    lines = [f"# wsol bench {run.suite.name} — {run.dataset}", ""]
    lines += [f"- **{k}**: {v if k != 'command' else '`' + v + '`'}" for k, v in _meta(run)]
    if run.suite.description:
        lines += ["", run.suite.description.strip()]
    lines += ["", "## Tables", ""]
    for t in tables:
        lines += [table_markdown(t), f"([CSV](tables/{t.spec.id}.csv))", ""]
    if figures:
        lines += ["## Figures", ""]
        for spec, _ in figures:
            lines += [f"### {spec.title}", "", f"![{spec.id}](figures/{spec.id}.png)", ""]
            if spec.note:
                lines += [f"*{spec.note}*", ""]
    if run.skipped_outputs:
        lines += ["## Not produced", ""] + [f"- `{k}`: {v}" for k, v in run.skipped_outputs.items()] + [""]
    lines += ["## Cells", "", "| " + " | ".join(STATUS_HEADER) + " |", "|" + "---|" * len(STATUS_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _status_rows(run)]
    return "\n".join(lines) + "\n"


def _html(run: SuiteRun, tables: list[Table], figures: list[tuple[FigureSpec, bytes]]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>wsol bench {e(run.suite.name)}</title>"
             f"<style>{CSS}</style></head><body><h1>wsol bench {e(run.suite.name)} — {e(run.dataset)}</h1><table>"]
    parts += [f"<tr><th>{e(k)}</th><td>{'<code>' + e(v) + '</code>' if k == 'command' else e(v)}</td></tr>"
              for k, v in _meta(run)]
    parts.append("</table>")
    if run.suite.description:
        parts.append(f"<p>{e(run.suite.description.strip())}</p>")
    parts.append("<h2>Tables</h2>")
    parts += [table_html(t) for t in tables]
    if figures:
        parts.append("<h2>Figures</h2>")
        for spec, png in figures:
            parts.append(f"<h3>{e(spec.title)}</h3><img alt='{e(spec.id)}' "
                         f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
            if spec.note:
                parts.append(f"<p class='muted'>{e(spec.note)}</p>")
    if run.skipped_outputs:
        parts.append("<h2>Not produced</h2><ul>" + "".join(
            f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in run.skipped_outputs.items()) + "</ul>")
    head = "".join(f"<th>{e(h)}</th>" for h in STATUS_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in _status_rows(run))
    parts.append(f"<h2>Cells</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>")
    return "\n".join(parts)
