"""Paper-shaped tables from a suite's cell folders: rows are methods (cells, a cell seen
through an extractor or the CRF, derived rows), columns are backbone × metric ×
checkpoint, the last column the device(s) that ran the row. Written as Markdown and CSV;
a value that does not exist (a classification metric of a classification-free row, a
skipped or failed cell) is "—" in Markdown and empty in CSV, never NaN.

``cl_error`` is 100 − top-1 accuracy (max-min / min-max-entropy "Cl. error").
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsol.bench.runner import (
    CLASSIFICATION_METRICS,
    COMPLEXITY_JSON,
    BackboneChoice,
    CellPlan,
    SuiteRun,
    column_name,
    finite,
    load_curves,
    load_metrics,
    read_bench,
)
from wsol.bench.suites import CellSpec, DerivedRow, TableSpec
from wsol.fileio import atomic_write_text
from wsol.runs import read_json

METRIC_LABELS = {
    "pxap": "PxAP", "tp_star": "TP*", "fn_star": "FN*", "fp_star": "FP*", "tn_star": "TN*",
    "top1_acc": "accuracy", "cl_error": "cl. error", "f1_fg_mean": "F1+", "f1_bg_mean": "F1−",
    "dice_fg_pooled": "Dice+", "dice_bg_pooled": "Dice−", "miou": "mIoU", "max_box_acc": "MaxBoxAcc",
    "max_box_acc_v2": "MaxBoxAccV2", "top1_loc": "top-1 loc", "top5_loc": "top-5 loc",
    "gt_known_loc": "GT-known loc", "weight_map_box_acc": "GT-known loc (box rule of Eq. 5)",
    "weight_map_score_s": "score S", "epoch": "epoch",
}
CHECKPOINT_LABELS = {"best_loc": "B-LOC", "best_cls": "B-CL"}
#: metrics where lower is better (derived "best" rows take the minimum)
LOWER_IS_BETTER = frozenset({"cl_error", "fn_star", "fp_star"})
EXTRACTOR_LABELS = {"gradcam": "GradCAM", "gradcamplusplus": "GradCAM++", "smoothgradcamplusplus": "Smooth-GradCAM++",
                    "xgradcam": "XGradCAM", "layercam": "LayerCAM", "scorecam": "ScoreCAM", "sscam": "SS-CAM",
                    "iscam": "IS-CAM", "ablationcam": "Ablation-CAM"}


@dataclass
class CellData:
    plan: CellPlan
    metrics: dict[str, dict[str, Any]]
    record: dict[str, Any]
    classifies: bool


def classifies(cell: CellSpec) -> bool:
    """Whether a cell predicts image classes (baselines and the U-Net do not)."""
    if cell.baseline is not None:
        return False
    from wsol.methods import METHODS

    return bool(getattr(METHODS.get(cell.method or ""), "classifies", True))


class Results:
    """The finished cells of a suite run, looked up by (cell id, backbone key)."""

    def __init__(self, run: SuiteRun):
        self.run, self.suite, self.backbones, self.loc_kind = run, run.suite, run.backbones, run.loc_kind
        self.cells: dict[tuple[str, str], CellData] = {}
        for plan in run.plans:
            metrics = load_metrics(plan.dir) if plan.config is not None else {}
            if not metrics:
                continue
            data = CellData(plan, metrics, read_bench(plan.dir), classifies(plan.cell))
            for key in plan.columns:
                self.cells[(plan.cell.id, key)] = data
        #: the cells with results in the folder (rows of other cells are left out)
        self.present: set[str] = {cid for cid, _ in self.cells}
        #: why a (cell, backbone) has no numbers: skipped by the suite, or failed in this run
        self.missing: dict[tuple[str, str], str] = {}
        for plan in run.plans:
            if plan.skip:
                for key in plan.columns:
                    self.missing[(plan.cell.id, key)] = f"not run ({plan.skip})"
            if not plan.cell.uses_backbone and plan.cell.baseline is None:
                for b in self.backbones:
                    if b.key not in plan.columns:
                        self.missing[(plan.cell.id, b.key)] = (f"its own network (model.backbone not used), run once: "
                                                               f"under {plan.backbone.label}")
        for o in run.outcomes:
            if o.status == "failed":
                for key in o.plan.columns:
                    self.missing[(o.plan.cell.id, key)] = f"failed ({o.error})"

    def notes(self, refs: list[str]) -> list[str]:
        """A line per (row, backbone) without numbers, saying why."""
        out = []
        for ref in refs:
            cell, _ = self.suite.resolve(ref)
            for b in self.backbones:
                why = self.missing.get((cell.id, b.key))
                if why and self.data(cell.id, b.key) is None:
                    out.append(f"{self.label(ref)} — {b.label}: {why}")
        return list(dict.fromkeys(out))

    def data(self, cell_id: str, key: str) -> CellData | None:
        return self.cells.get((cell_id, key))

    def label(self, ref: str) -> str:
        cell, suffix = self.suite.resolve(ref)
        if suffix is None:
            return cell.display
        if suffix == "crf":
            return f"{cell.display} + CRF"
        ex = EXTRACTOR_LABELS.get(suffix, suffix)
        return ex if cell.method == "cam" else f"{cell.display} · {ex}"

    def group(self, ref: str) -> str:
        cell, suffix = self.suite.resolve(ref)
        if suffix is not None and suffix != "crf":
            return "Top-down WSOL"
        return cell.group

    def value(self, ref: str, key: str, metric: str, checkpoint: str) -> float | None:
        cell, suffix = self.suite.resolve(ref)
        data = self.data(cell.id, key)
        if data is None or (metric in CLASSIFICATION_METRICS and not data.classifies):
            return None
        m = data.metrics.get(column_name(cell, checkpoint, suffix))
        if m is None:
            return None
        if metric == "cl_error":
            acc = finite(m.get("top1_acc"))
            return None if acc is None else 100.0 - acc
        return finite(m.get(metric))

    def curves(self, ref: str, key: str, checkpoint: str) -> dict[str, Any] | None:
        cell, suffix = self.suite.resolve(ref)
        data = self.data(cell.id, key)
        return None if data is None else load_curves(data.plan.dir, column_name(cell, checkpoint, suffix))

    def devices(self, refs: list[str]) -> str:
        seen: list[str] = []
        for ref in refs:
            cell, _ = self.suite.resolve(ref)
            for b in self.backbones:
                d = self.data(cell.id, b.key)
                dev = d.record.get("device") if d is not None else None
                if dev and dev not in seen:
                    seen.append(dev)
        return "; ".join(seen) if seen else "—"

    def rows(self, spec_rows: list[str | DerivedRow] | str) -> list[str | DerivedRow]:
        """The table's rows restricted to cells of this run (``all``: every cell's rows)."""
        rows = self.suite.all_rows() if isinstance(spec_rows, str) else list(spec_rows)
        out: list[str | DerivedRow] = []
        for r in rows:
            refs = [r] if isinstance(r, str) else (r.best_of or r.improvement or [])
            present = [x for x in refs if self.suite.resolve(x)[0].id in self.present]
            if isinstance(r, str) and present:
                out.append(r)
            elif isinstance(r, DerivedRow) and (present == refs if r.improvement else present):
                out.append(r.model_copy(update={"best_of": present}) if r.best_of else r)
        return out


@dataclass
class Table:
    spec: TableSpec
    header: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)  # ref, label, group, values, device
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.spec.title


def metric_columns(spec: TableSpec, loc_kind: str) -> list[str] | None:
    """The table's metric keys for this dataset's localisation kind (None: not applicable)."""
    return spec.metrics.get(loc_kind) or spec.metrics.get("any")  # type: ignore[call-overload]


def build_metrics_table(spec: TableSpec, res: Results) -> Table | str:
    metrics = metric_columns(spec, res.loc_kind)
    if not metrics:
        kinds = ", ".join(k for k in spec.metrics)
        return f"its metrics are defined for {kinds} datasets; {res.run.dataset} has {res.loc_kind} labels"
    checkpoints = spec.checkpoints or [res.suite.checkpoint]
    multi_ck = len(checkpoints) > 1
    cols = [(b, m, ck) for b in res.backbones for m in metrics for ck in checkpoints]
    header = ["Method"] + [
        f"{b.label} · {METRIC_LABELS.get(m, m)}" + (f" ({CHECKPOINT_LABELS[ck]})" if multi_ck else "")
        for b, m, ck in cols] + ["Device"]
    table = Table(spec, header)
    values_by_ref: dict[str, list[float | None]] = {}
    for r in res.rows(spec.rows):
        if isinstance(r, str):
            vals = [res.value(r, b.key, m, ck) for b, m, ck in cols]
            values_by_ref[r] = vals
            table.rows.append({"ref": r, "label": res.label(r), "group": res.group(r), "values": vals,
                               "device": res.devices([r])})
            continue
        refs = r.best_of or r.improvement or []
        per_ref = [values_by_ref.get(x) or [res.value(x, b.key, m, ck) for b, m, ck in cols] for x in refs]
        vals = []
        for j, (_, m, _) in enumerate(cols):
            got = [v[j] for v in per_ref]
            if r.improvement:
                vals.append(None if got[0] is None or got[1] is None else got[1] - got[0])
            else:
                have = [v for v in got if v is not None]
                vals.append((min(have) if m in LOWER_IS_BETTER else max(have)) if have else None)
        table.rows.append({"ref": r.label, "label": r.label, "group": "", "values": vals, "device": res.devices(refs)})
    table.notes += res.notes([r["ref"] for r in table.rows if r["ref"] in values_by_ref])
    if spec.note:
        table.notes.append(spec.note)
    return table


def complexity_keys(batch_sizes: list[int]) -> list[tuple[str, str]]:
    keys = [("params", "#params (M)"), ("trainable", "trainable (M)")]
    keys += [(f"forward_ms_b{b}", f"forward ms/img (b={b})") for b in batch_sizes]
    keys += [(f"cam_ms_b{b}", f"CAM ms/img (b={b})") for b in batch_sizes]
    return keys


def complexity_entry(res: Results, ref: str, key: str) -> dict[str, Any] | None:
    cell, suffix = res.suite.resolve(ref)
    data = res.data(cell.id, key)
    if data is None:
        return None
    path = data.plan.dir / COMPLEXITY_JSON
    entries = read_json(path) if path.is_file() else {}
    return entries.get(suffix or "own")


def build_complexity_table(spec: TableSpec, res: Results, registered: dict[str, dict[str, dict]] | None = None) -> Table:
    batch_sizes = res.suite.budgets[res.run.budget].complexity.batch_sizes
    keys = complexity_keys(batch_sizes)
    header = ["Method"] + [f"{b.label} · {label}" for b in res.backbones for _, label in keys] + ["Device"]
    table = Table(spec, header)
    if spec.rows == "registered":
        assert registered is not None
        names = list(next(iter(registered.values()), {}))
        for name in names:
            vals, devs, errors = [], [], []
            for b in res.backbones:
                e = registered.get(b.key, {}).get(name, {})
                if "error" in e:
                    errors.append(f"{b.label}: {e['error']}")
                vals += [_complexity_value(e, k) for k, _ in keys]
                if e.get("device") and e["device"] not in devs:
                    devs.append(e["device"])
            cell_id, _, ex = name.partition("+")
            label = EXTRACTOR_LABELS.get(ex, ex) if ex else cell_id
            table.rows.append({"ref": name, "label": label, "group": "", "values": vals,
                               "device": "; ".join(devs) or "—"})
            table.notes += [f"{label}: not measured on {err}" for err in errors]
    else:
        for r in res.rows(spec.rows):
            if not isinstance(r, str):
                continue
            vals, devs = [], []
            for b in res.backbones:
                e = complexity_entry(res, r, b.key) or {}
                vals += [_complexity_value(e, k) for k, _ in keys]
                if e.get("device") and e["device"] not in devs:
                    devs.append(e["device"])
            table.rows.append({"ref": r, "label": res.label(r), "group": res.group(r), "values": vals,
                               "device": "; ".join(devs) or "—"})
    size = res.suite.budgets[res.run.budget].complexity.image_size
    table.notes.append("inference time per image, warm-up excluded, on random "
                       f"{f'{size}²' if size else 'input-size'} images; #params in millions")
    if spec.note:
        table.notes.append(spec.note)
    return table


def _complexity_value(entry: dict[str, Any], key: str) -> float | None:
    v = finite(entry.get(key))
    if v is None:
        return None
    return v / 1e6 if key in ("params", "trainable") else v


# --- writing ------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def table_markdown(table: Table) -> str:
    lines = [f"### {table.title}", "", "| " + " | ".join(table.header) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(table.header) - 2) + [":---"]) + "|"]
    groups = [r["group"] for r in table.rows]
    show_groups = len({g for g in groups if g}) > 1
    last = None
    for r in table.rows:
        if show_groups and r["group"] and r["group"] != last:
            lines.append("| **" + r["group"] + "** |" + " |" * (len(table.header) - 1))
            last = r["group"]
        lines.append("| " + " | ".join([r["label"], *(_fmt(v) for v in r["values"]), r["device"]]) + " |")
    for n in table.notes:
        lines += ["", f"*{n}*"]
    return "\n".join(lines) + "\n"


def table_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "group", *table.header])
    for r in table.rows:
        w.writerow([r["ref"], r["group"], r["label"], *("" if v is None else f"{v:.4f}" for v in r["values"]),
                    r["device"]])
    return buf.getvalue()


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for r in table.rows:
        cells = [r["label"], *(_fmt(v) for v in r["values"]), r["device"]]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    notes = "".join(f"<p class='muted'>{html.escape(n)}</p>" for n in table.notes)
    return (f"<h3>{html.escape(table.title)}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{notes}")


def write_table(table: Table, folder: Path) -> tuple[Path, Path]:
    md, csv_path = folder / f"{table.spec.id}.md", folder / f"{table.spec.id}.csv"
    atomic_write_text(md, table_markdown(table))
    atomic_write_text(csv_path, table_csv(table))
    return md, csv_path


def backbone_labels(backbones: list[BackboneChoice]) -> str:
    return ", ".join(b.label for b in backbones)
