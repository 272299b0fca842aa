"""Benchmark suites: the typed schema of ``configs/suites/<name>.yaml`` and its loader.

A suite is a grid of **cells** (a method with its config, a no-training baseline), run for
every backbone of the chosen track, and the paper-shaped **tables** and **figures** built
from what the cells wrote. One YAML per paper (``survey``, ``fcam``, ``maxmin``,
``minmax-entropy``, ``weightmap``) plus ``complexity`` (no cell: #params and inference time
of every registered method).

Cell configs are assembled from the dataset file (``configs/datasets/<dataset>.yaml`` when
shipped), the budget and the cell's shipped config files (``configs`` entries such as
``methods/cam`` or ``recipes/maxmin-glas``):

- budget ``tiny`` (``use_configs: model``): only the ``model`` section of the cell's files
  is used, the budget's small optim / data / eval sections apply over it;
- budget ``paper`` (``use_configs: all``): the budget's sections (the paper's general
  settings, e.g. the survey's Table 6) first, then the whole files (the papers' recipes,
  with their own optim / data), then the cell's ``paper`` section and its
  ``paper_datasets[<dataset>]`` section.

Then the cell's ``set``, ``budget_set[<budget>]`` and ``dataset_set[<dataset>]`` overrides, the grid (backbone, weights, run folder, data root,
device), the stage-1 run folders of ``needs`` and the command line's ``--set``.

Row references in tables and figures: ``cell`` (its own CAMs), ``cell+extractor`` (the
cell's classifier seen through a top-down extractor listed in its ``extractors``),
``cell+crf`` (its CAMs refined by the dense CRF preset ``crf``); ``all`` lists every cell,
then the extractor rows, then the CRF rows. Derived rows: ``{label, best_of: [refs]}`` (the
best value of the refs, per column) and ``{label, improvement: [from, to]}`` (to − from).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from wsol.config import CONFIGS, format_validation_error, load_yaml
from wsol.errors import ConfigError

SUITES_DIR = CONFIGS / "suites"

CHECKPOINTS = ("best_loc", "best_cls")
BASELINES = ("all-ones", "center-gaussian")
LocKey = Literal["mask", "box", "any"]
_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SynthSpec(_Strict):
    n: int = Field(16, ge=2, description="training images of an embedded set written for the suite")
    size: int = Field(32, ge=16, description="their side in pixels")


class ComplexitySpec(_Strict):
    image_size: int | None = Field(None, gt=0, description="input side for timing (None: the cell's data.image_size)")
    batch_sizes: list[int] = Field([1, 32], min_length=1, description="batch sizes timed (ms per image each)")
    warmup: int = Field(2, ge=0, description="untimed calls first")
    repeats: int = Field(5, ge=1, description="timed calls averaged")


class BudgetSpec(_Strict):
    description: str = ""
    use_configs: Literal["model", "all"] = Field(
        "model", description="model: only the model section of the cells' config files; all: the whole files")
    config: dict[str, Any] = Field(default_factory=dict, description="RunConfig sections for every cell")
    datasets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per dataset: sections over config")
    synth: SynthSpec = Field(default_factory=SynthSpec, description="size of an embedded set written when missing")
    data_root: Literal["suite", "shared"] = Field(
        "suite", description="default data root: suite (OUT/data/<dataset>) or shared (data/<dataset>)")
    backbones: list[str] = Field(["resnet18"], min_length=1, description="random-init track backbones")
    cam_friendly: bool = False
    complexity: ComplexitySpec = Field(default_factory=ComplexitySpec)


class CellSpec(_Strict):
    id: str
    label: str | None = None
    group: str = ""
    method: str | None = Field(None, description="registered method trained by the engine")
    baseline: Literal["all-ones", "center-gaussian"] | None = Field(None, description="no-training localiser")
    sigma: float = Field(0.25, gt=0, description="center-gaussian: σ as a fraction of the image's shorter side")
    configs: list[str] = Field(default_factory=list, description="shipped config files, e.g. methods/cam")
    dataset_configs: dict[str, list[str]] = Field(
        default_factory=dict, description="per dataset name: config files used instead of configs")
    set: list[str] = Field(default_factory=list, description="overrides KEY=VALUE for this cell")
    budget_set: dict[str, list[str]] = Field(default_factory=dict, description="overrides per budget name")
    dataset_set: dict[str, list[str]] = Field(default_factory=dict, description="overrides per dataset name")
    paper: dict[str, Any] = Field(default_factory=dict, description="config sections of the paper budget")
    paper_datasets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="paper budget: config sections per dataset name, over paper")
    needs: dict[str, str] = Field(default_factory=dict,
                                  description="param path of a stage-1 run folder -> cell id, e.g. classifier.run: cam")
    extractors: list[str] = Field(default_factory=list, description="also evaluate through these extractors")
    crf: Literal["glas", "natural", "auto"] | None = Field(
        None, description="also evaluate with dense-CRF refinement (preset; auto: glas on histology sets, else natural)")
    checkpoint: str | None = Field(None, description="this cell's B-LOC checkpoint (default best_loc; weight map: best_s)")
    uses_backbone: bool = Field(True, description="false: the method ignores model.backbone (TS-CAM): run once")
    skip_backbones: list[str] = Field(default_factory=list, description="backbones the method cannot take")
    histogram: bool = Field(False, description="record the test CAM activation histogram (f-cam Fig. 6)")

    @model_validator(mode="after")
    def _check(self) -> CellSpec:
        if not _ID.match(self.id):
            raise ValueError(f"cell id {self.id!r}: use lower-case letters, digits, '-' and '_'")
        if (self.method is None) == (self.baseline is None):
            raise ValueError(f"cell {self.id!r}: give exactly one of method and baseline")
        return self

    @property
    def display(self) -> str:
        return self.label or self.id


class DerivedRow(_Strict):
    label: str
    best_of: list[str] | None = None
    improvement: list[str] | None = Field(None, min_length=2, max_length=2)

    @model_validator(mode="after")
    def _check(self) -> DerivedRow:
        if (self.best_of is None) == (self.improvement is None):
            raise ValueError(f"derived row {self.label!r}: give exactly one of best_of and improvement")
        return self


RowRef = str | DerivedRow


class TableSpec(_Strict):
    id: str
    title: str
    kind: Literal["metrics", "complexity"] = "metrics"
    metrics: dict[LocKey, list[str]] = Field(default_factory=dict, description="metric keys per localisation kind")
    checkpoints: list[Literal["best_loc", "best_cls"]] | None = Field(
        None, min_length=1, description="model selections shown side by side (default: the suite's checkpoint)")
    rows: list[RowRef] | Literal["all", "registered"] = "all"
    extractors: list[str] = Field(default_factory=list, description="complexity of 'registered': extractor rows on cam")
    note: str = ""

    @model_validator(mode="after")
    def _check(self) -> TableSpec:
        if not _ID.match(self.id):
            raise ValueError(f"table id {self.id!r}: use lower-case letters, digits, '-' and '_'")
        if self.kind == "metrics" and not self.metrics:
            raise ValueError(f"table {self.id!r}: a metrics table needs metrics")
        if self.rows == "registered" and self.kind != "complexity":
            raise ValueError(f"table {self.id!r}: rows 'registered' is for complexity tables")
        return self


FigureKind = Literal["threshold_curves", "selection_epochs", "tau_curves", "histograms", "downscale", "confusion",
                     "region_sizes", "pr_curves"]


class FigureSpec(_Strict):
    id: str
    title: str
    kind: FigureKind
    rows: list[str] | Literal["all"] = "all"
    reference: str | None = Field(None, description="a row drawn apart (threshold_curves: the U-Net)")
    factors: list[int] = Field([1, 2, 4, 8, 16, 32], description="downscale: factors z")
    note: str = ""

    @model_validator(mode="after")
    def _check(self) -> FigureSpec:
        if not _ID.match(self.id):
            raise ValueError(f"figure id {self.id!r}: use lower-case letters, digits, '-' and '_'")
        return self


class Suite(_Strict):
    name: str
    title: str
    paper: str = ""
    description: str = ""
    dataset: str = Field(description="default --dataset")
    checkpoint: Literal["best_loc", "best_cls"] = "best_loc"
    budgets: dict[str, BudgetSpec]
    cells: list[CellSpec] = Field(default_factory=list)
    tables: list[TableSpec] = Field(default_factory=list)
    figures: list[FigureSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Suite:
        for b in ("tiny", "paper"):
            if b not in self.budgets:
                raise ValueError(f"suite {self.name!r}: budgets must define {b!r}")
        seen: set[str] = set()
        for c in self.cells:
            if c.id in seen:
                raise ValueError(f"cell id {c.id!r} used twice")
            for path, dep in c.needs.items():
                if dep not in seen:
                    raise ValueError(f"cell {c.id!r}: needs {path}: {dep!r} is not a cell listed before it")
            seen.add(c.id)
        ids = [t.id for t in self.tables] + [f.id for f in self.figures]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"table/figure ids used twice: {dup}")
        for t in self.tables:
            if isinstance(t.rows, list):
                for r in t.rows:
                    refs = [r] if isinstance(r, str) else (r.best_of or r.improvement or [])
                    for ref in refs:
                        self.resolve(ref)
        for f in self.figures:
            for ref in ([] if f.rows == "all" else f.rows) + ([f.reference] if f.reference else []):
                self.resolve(ref)
        return self

    # --- rows -----------------------------------------------------------------------
    def cell(self, cell_id: str) -> CellSpec:
        for c in self.cells:
            if c.id == cell_id:
                return c
        raise ValueError(f"unknown cell {cell_id!r}; cells: {', '.join(c.id for c in self.cells)}")

    def resolve(self, ref: str) -> tuple[CellSpec, str | None]:
        """``cell`` or ``cell+suffix`` -> (cell, suffix), checking the suffix is one of the
        cell's extractors or ``crf`` with a CRF preset."""
        cell_id, _, suffix = ref.partition("+")
        cell = self.cell(cell_id)
        if suffix and suffix not in cell.extractors and not (suffix == "crf" and cell.crf):
            raise ValueError(f"row {ref!r}: cell {cell_id!r} has no extractor or crf {suffix!r}")
        return cell, suffix or None

    def all_rows(self) -> list[str]:
        rows = [c.id for c in self.cells]
        rows += [f"{c.id}+{e}" for c in self.cells for e in c.extractors]
        rows += [f"{c.id}+crf" for c in self.cells if c.crf]
        return rows


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def suite_path(name_or_path: str | Path) -> Path:
    """A shipped suite name (``survey``) or a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    shipped = SUITES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"unknown suite {str(name_or_path)!r}; shipped suites: {', '.join(available_suites())} "
                      "(or give the path of a suite YAML)")


def load_suite(name_or_path: str | Path) -> Suite:
    """Load and validate a suite (schema, ids, row references, registered methods /
    extractors, shipped config files)."""
    path = suite_path(name_or_path)
    data = load_yaml(path)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from None
    check_names(suite, str(path))
    return suite


def check_names(suite: Suite, source: str) -> None:
    """Methods, extractors, datasets and config files a suite names exist."""
    from wsol.bench import ensure_registered
    from wsol.explain.registry import EXTRACTORS
    from wsol.methods import METHODS

    ensure_registered()
    for c in suite.cells:
        if c.method is not None and c.method not in METHODS:
            raise ConfigError(f"{source}: cell {c.id!r}: unknown method {c.method!r}; valid: {', '.join(METHODS.names())}")
        for e in c.extractors:
            if e not in EXTRACTORS:
                raise ConfigError(f"{source}: cell {c.id!r}: unknown extractor {e!r}; valid: {', '.join(EXTRACTORS.names())}")
        for f in [*c.configs, *(x for fs in c.dataset_configs.values() for x in fs)]:
            if not (CONFIGS / f"{f}.yaml").is_file():
                raise ConfigError(f"{source}: cell {c.id!r}: config {f!r} not found under {CONFIGS}")
    for t in suite.tables:
        for e in t.extractors:
            if e not in EXTRACTORS:
                raise ConfigError(f"{source}: table {t.id!r}: unknown extractor {e!r}")
