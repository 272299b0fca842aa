"""Hyper-parameter sweeps on Optuna storage (``wsol sweep``).

A sweep searches a space of config values (a *space* YAML, below) for the run that maximises
a selection criterion on the validation split: ``best_loc`` (B-LOC: PxAP on ``valpx`` for
mask sets, MaxBoxAccV2 for box sets, or ``eval.selection_metric``) or ``best_cls`` (B-CL:
top-1 accuracy on ``valcl``), or a method's own criterion (the weight map's ``best_s``). The
objective of a trial is the best score of that criterion over the trial's epochs, exactly
the number the engine keeps the criterion's checkpoint for (``TrainResult.best``).

Each trial is a normal run folder, ``OUT/trial-<number>`` (trained by
:class:`wsol.engine.trainer.Trainer`, usable by ``wsol evaluate`` / ``wsol cam`` /
``wsol slide``). The study lives in an Optuna storage: by default a SQLite file
``OUT/study.db``; any Optuna RDB URL (``postgresql://...``, ``mysql://...``) lets workers on
several machines share one study. Workers started on the same storage and study name
cooperate: every trial gets a distinct number from the storage, and the sampler sees every
finished trial. Trials are pruned from the per-epoch validation score (Optuna's median rule
by default): the pruning hook reports the criterion's score after each validated epoch and
stops a trial that does worse than the median of earlier trials at the same epoch.

Space YAML (one mapping; keys are dotted config paths, as for ``--set``)::

    optim.lr:                      {type: categorical, choices: [0.01, 0.001, 0.1]}
    model.method.params.q:         {type: int, low: 1, high: 10}          # step 1 by default
    model.method.params.drop_rate: {type: float, low: 0.2, high: 0.6, step: 0.1}
    optim.weight_decay:            {type: float, low: 1.0e-6, high: 1.0e-3, log: true}

- ``type: categorical`` + ``choices`` (a list of numbers, strings, booleans or null; a single
  choice fixes a value for every trial);
- ``type: int`` + ``low``, ``high`` (inclusive), optional ``step`` (default 1) or ``log``;
- ``type: float`` + ``low``, ``high``, optional ``step`` (a grid) or ``log: true``.

The grid sampler (``sampler="grid"``) enumerates every combination and needs finite
parameters: categorical, int, or float with a ``step``. The survey's Table 7 grids ship in
``configs/spaces/<method>.yaml`` as categorical lists (exact values, no float steps).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from wsol.config import load_config, yaml_load
from wsol.engine.callbacks import Callbacks
from wsol.errors import CheckpointError, ConfigError, MetricError, WSOLError
from wsol.fileio import write_json

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

ParamType = Literal["float", "int", "categorical"]
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "none")
#: protocol names accepted for ``select`` (survey §3.4) -> selection criteria
PROTOCOLS = {"b-loc": "best_loc", "b-cl": "best_cls"}
STUDY_DB = "study.db"
SUMMARY = "sweep.json"
SHIPPED_SPACES = Path(__file__).parent / "configs" / "spaces"


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("sweeps need Optuna: pip install 'wsol[sweep]'") from None
    return optuna


def optuna_verbosity(verbose: bool) -> None:
    """Optuna's own log lines (one per trial) only when ``verbose``."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


# --- the space --------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched config value (see the module docstring for the YAML form)."""

    path: str
    type: ParamType
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.path, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.path, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid(self) -> list[Any]:
        """Every value the grid sampler tries (finite spaces only)."""
        if self.type == "categorical":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.type == "int":
            if self.log:
                raise ConfigError(f"space: {self.path}: a log-scaled int has no grid; list the values "
                                  "(type: categorical) to use --sampler grid")
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            raise ConfigError(f"space: {self.path}: a float without 'step' has no grid; add a step or list the "
                              "values (type: categorical) to use --sampler grid")
        n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        # rounded to the step's decimals: 0.2 + 1·0.1 is 0.3, not 0.30000000000000004
        decimals = max(0, -math.floor(math.log10(self.step)) + 6)
        return [round(self.low + i * self.step, decimals) for i in range(n)]

    @property
    def first(self) -> Any:
        """A valid value (used to check the space against the config before any trial)."""
        if self.type == "categorical":
            return self.choices[0]
        return int(self.low) if self.type == "int" else float(self.low)  # type: ignore[arg-type]


_KEYS = {"type", "low", "high", "step", "log", "choices"}


def parse_space(data: Any, source: str = "space") -> dict[str, Param]:
    """Validate a space mapping (see the module docstring); errors name the key."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: expected a non-empty mapping of dotted config paths to "
                          "{type: float|int|categorical, ...}")
    space: dict[str, Param] = {}
    for path, spec in data.items():
        where = f"{source}: {path}"
        if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
            raise ConfigError(f"{source}: {path!r} is not a dotted config path such as optim.lr")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping like {{type: float, low: 0.001, high: 0.1, log: true}}, "
                              f"got {spec!r}")
        unknown = set(spec) - _KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; valid: "
                              f"{', '.join(sorted(_KEYS))}")
        kind = spec.get("type")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: categorical needs a non-empty list 'choices'")
            bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
            if bad:
                raise ConfigError(f"{where}: choices must be numbers, strings, booleans or null, got {bad[0]!r}")
            if set(spec) - {"type", "choices"}:
                raise ConfigError(f"{where}: categorical takes only 'choices'")
            space[path] = Param(path, "categorical", choices=tuple(choices))
            continue
        if kind not in ("float", "int"):
            raise ConfigError(f"{where}: type must be float, int or categorical, got {kind!r}")
        if "choices" in spec:
            raise ConfigError(f"{where}: 'choices' is for type: categorical")
        num = (int,) if kind == "int" else (int, float)
        vals = {}
        for key in ("low", "high", "step"):
            v = spec.get(key)
            if v is None:
                if key != "step":
                    raise ConfigError(f"{where}: {kind} needs '{key}'")
                continue
            if isinstance(v, bool) or not isinstance(v, num):
                raise ConfigError(f"{where}: '{key}' must be {'an integer' if kind == 'int' else 'a number'}, got {v!r}")
            vals[key] = v
        log_ = spec.get("log", False)
        if not isinstance(log_, bool):
            raise ConfigError(f"{where}: 'log' must be true or false, got {log_!r}")
        low, high, step = vals["low"], vals["high"], vals.get("step")
        if low > high:
            raise ConfigError(f"{where}: low ({low}) > high ({high})")
        if step is not None and step <= 0:
            raise ConfigError(f"{where}: step must be positive, got {step}")
        if log_ and (low <= 0 or step is not None):
            raise ConfigError(f"{where}: log: true needs low > 0 and no step")
        space[path] = Param(path, kind, low=low, high=high, step=step, log=log_)
    return space


def load_space(path: str | Path) -> dict[str, Param]:
    """Read a space YAML: a file, or the name of a shipped one (``cam`` ->
    ``configs/spaces/cam.yaml``)."""
    p = resolve_space(path)
    try:
        data = yaml_load(p.read_text())
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"{p}: invalid YAML ({e})") from None
    return parse_space(data, str(p))


def resolve_space(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        return p
    shipped = SHIPPED_SPACES / (p.name if p.suffix else f"{p.name}.yaml")
    if shipped.is_file():
        return shipped
    names = ", ".join(shipped_spaces())
    raise ConfigError(f"{path}: space file not found; give a YAML file or a shipped space ({names})")


def shipped_spaces() -> list[str]:
    return sorted(p.stem for p in SHIPPED_SPACES.glob("*.yaml"))


def _override(path: str, value: Any) -> str:
    # JSON is YAML: the value is read back with its type (1e-05 float, true bool, "x" str)
    return f"{path}={json.dumps(value)}"


# --- the objective ----------------------------------------------------------------------
def resolve_criterion(select: str) -> str:
    return PROTOCOLS.get(select.lower(), select)


class PruningCallbacks(Callbacks):
    """Engine callbacks that report the criterion's score of every validated epoch to the
    Optuna trial and raise ``optuna.TrialPruned`` when the pruner says so. Raising from
    ``on_epoch_end`` is safe: the epoch's checkpoint and history are written before it, and
    the trainer's run-folder lock is a context manager (released on the way out). Progress
    hooks are forwarded to ``inner``."""

    def __init__(self, trial: optuna.Trial, criterion: str, loc_kind: str, metric: str | None,
                 inner: Callbacks | None = None):
        from wsol.engine.selection import SELECTION

        self.trial, self.criterion = trial, SELECTION.get(resolve_criterion(criterion))
        self.loc_kind, self.metric = loc_kind, metric
        self.inner = inner or Callbacks()

    def on_stage(self, name: str, total: int) -> None:
        self.inner.on_stage(name, total)

    def on_advance(self, n: int) -> None:
        self.inner.on_advance(n)

    def row_score(self, row: dict[str, float]) -> float | None:
        """The criterion's score from an epoch's history row (None: not validated)."""
        prefix = f"{self.criterion.split}/"
        metrics = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}
        if not metrics:
            return None
        try:
            return float(self.criterion.score(metrics, self.loc_kind, self.metric))
        except (MetricError, KeyError):
            return None

    def on_epoch_end(self, row: dict[str, float]) -> None:
        self.inner.on_epoch_end(row)
        score = self.row_score(row)
        if score is None or not math.isfinite(score):
            return
        epoch = int(row["epoch"])
        self.trial.report(score, step=epoch)
        if self.trial.should_prune():
            optuna = _optuna()
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned at epoch {epoch} ({score:.4g})")


class _TrialFailed(Exception):
    """A trial-specific failure (diverged loss, an invalid combination of values): the trial
    is recorded as failed and the sweep goes on."""


@dataclass
class SweepResult:
    study_name: str
    storage: str
    out: Path
    criterion: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    #: trial numbers this worker ran
    ran: list[int] = field(default_factory=list)


def _trial_row(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
            "run_dir": t.user_attrs.get("run_dir"), "error": t.user_attrs.get("error"),
            "epochs": len(t.intermediate_values)}


def default_storage(out: Path) -> str:
    return f"sqlite:///{(Path(out) / STUDY_DB).resolve()}"


def redact(url: str) -> str:
    """A storage URL without its password (never written to disk or printed)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy can parse: keep only the scheme
        return url.split("://", 1)[0] + "://..."


def open_storage(url: str, attempts: int = 10) -> Any:
    """An Optuna RDB storage. SQLite gets a long busy timeout (workers wait for each other's
    writes instead of failing). Concurrent first opens of a new database race on creating its
    tables; such an open is retried."""
    optuna = _optuna()
    from sqlalchemy.exc import SQLAlchemyError

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 120}}
    for i in range(attempts):
        try:
            # heartbeats: a killed worker's RUNNING trial is marked failed (not left running forever)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=60, grace_period=180)
        except SQLAlchemyError:
            if i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1))
    raise ConfigError(f"storage {redact(url)}: could not be opened")  # unreachable


def _sampler(name: str, space: dict[str, Param], seed: int | None):
    optuna = _optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.GridSampler({k: p.grid() for k, p in space.items()}, seed=seed)
    raise ConfigError(f"sampler {name!r} is unknown; valid: {', '.join(SAMPLERS)}")


def _pruner(name: str):
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"pruner {name!r} is unknown; valid: {', '.join(PRUNERS)}")


def grid_size(space: dict[str, Param]) -> int:
    return math.prod(len(p.grid()) for p in space.values())


def run_sweep(
    configs: Sequence[str | Path],
    space: str | Path | dict[str, Param],
    *,
    trials: int | None = None,
    out: str | Path = "sweeps/default",
    storage: str | None = None,
    sampler: str = "tpe",
    study: str | None = None,
    overrides: Sequence[str] = (),
    select: str = "best_loc",
    pruner: str = "median",
    seed: int | None = None,
    callbacks: Callable[[int], Callbacks] | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run ``trials`` trials of a study (this worker's share; ``None`` with the grid sampler:
    until the grid is done) and return the study's state.

    ``configs`` + ``overrides`` are the base run config (as for ``wsol train``); each trial
    adds its sampled values and ``run_dir=OUT/trial-<number>``. ``storage``: an Optuna RDB
    URL (default ``sqlite:///OUT/study.db``); ``study``: the study name (default: the name
    of ``out``). ``callbacks(number)`` gives the engine callbacks of a trial (progress);
    ``on_trial(row)`` is called after each trial this worker finished."""
    opt = _optuna()
    out = Path(out)
    space = space if isinstance(space, dict) else load_space(space)
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler {sampler!r} is unknown; valid: {', '.join(SAMPLERS)}")
    if trials is None and sampler != "grid":
        raise ConfigError("--trials is required (only the grid sampler knows when it is done)")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    criterion = resolve_criterion(select)
    base, loc_kind = check_base(configs, overrides, space, criterion)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out)
    study_name = study or out.resolve().name
    rdb = open_storage(storage)
    st = opt.create_study(storage=rdb, sampler=_sampler(sampler, space, seed), pruner=_pruner(pruner),
                             study_name=study_name, direction="maximize", load_if_exists=True)
    _check_study(st, criterion, space)
    ran: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        from wsol.engine.trainer import Trainer

        run_dir = out / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        values = {path: p.suggest(trial) for path, p in space.items()}
        ran.append(trial.number)
        try:
            cfg = load_config(list(configs), [*overrides, *(_override(k, v) for k, v in values.items()),
                                              f"run_dir={run_dir}"])
            cb = PruningCallbacks(trial, criterion, loc_kind, cfg.eval.selection_metric,
                                  callbacks(trial.number) if callbacks else None)
            result = Trainer(cfg, run_dir, callbacks=cb).fit()
        except CheckpointError:
            raise  # the sweep folder itself is the problem (e.g. trial folders of another study)
        except WSOLError as e:  # a diverged loss, an invalid combination of values
            trial.set_user_attr("error", str(e))
            log.warning("trial %d failed: %s", trial.number, e)
            raise _TrialFailed(str(e)) from None
        score = result.best.get(criterion, -math.inf)
        if not math.isfinite(score):
            trial.set_user_attr("error", f"criterion {criterion} was never scored")
            raise _TrialFailed(f"criterion {criterion} was never scored")
        return float(score)

    def after(study_: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None and frozen.number in ran:
            on_trial(_trial_row(frozen))

    st.optimize(objective, n_trials=trials, catch=(_TrialFailed,), callbacks=[after], gc_after_trial=True)
    result = summarize(st, storage, out, criterion, base.model.method.name)
    result.ran = ran
    return result


def check_base(configs: Sequence[str | Path], overrides: Sequence[str], space: dict[str, Param],
               criterion: str) -> tuple[Any, str]:
    """Fail before any trial when the space does not fit the config (a misspelt path, a
    value the schema rejects) or the criterion does not fit the method. Returns the base
    config (with each searched value at its first valid value) and the dataset's label kind."""
    from wsol.data.registry import get_dataset
    from wsol.engine.selection import DEFAULT_CRITERIA, SELECTION
    from wsol.methods.base import get_method_class

    cfg = load_config(list(configs), [*overrides, *(_override(k, p.first) for k, p in space.items())])
    SELECTION.get(criterion)
    method = get_method_class(cfg.model.method.name)
    valid = [*DEFAULT_CRITERIA, *method.selection_criteria]
    if criterion not in valid:
        raise ConfigError(f"--select {criterion!r}: method {cfg.model.method.name!r} keeps {', '.join(valid)} "
                          "(B-LOC = best_loc, B-CL = best_cls)")
    return cfg, get_dataset(cfg.data.name).loc


def _check_study(st: optuna.Study, criterion: str, space: dict[str, Param]) -> None:
    """A study is one search: a worker with another criterion or space is refused."""
    attrs = st.user_attrs
    mine = {"criterion": criterion, "space": sorted(space)}
    if not attrs.get("criterion"):
        for k, v in mine.items():
            st.set_user_attr(k, v)
        return
    theirs = {"criterion": attrs.get("criterion"), "space": attrs.get("space")}
    if theirs != mine:
        raise ConfigError(f"study {st.study_name!r} searches {theirs['space']} for {theirs['criterion']}; this "
                          f"worker asks {mine['space']} for {mine['criterion']} — use the same space and --select, "
                          "or another --study")


def summarize(st: optuna.Study, storage: str, out: Path, criterion: str, method: str = "") -> SweepResult:
    """The study's trials and best trial; written to ``OUT/sweep.json`` (storage URL without
    its password)."""
    optuna = _optuna()
    rows = [_trial_row(t) for t in st.get_trials(deepcopy=False)]
    done = [t for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    best = _trial_row(max(done, key=lambda t: t.value)) if done else None  # type: ignore[arg-type, return-value]
    result = SweepResult(st.study_name, redact(storage), out, criterion, rows, best)
    write_json(Path(out) / SUMMARY, {"study": st.study_name, "storage": result.storage, "criterion": criterion,
                                      "method": method, "direction": "maximize", "best": best, "trials": rows})
    return result
