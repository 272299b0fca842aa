"""Model-selection criteria (DESIGN.md "Selection criterion"): which validation split a
criterion reads and the score it maximises. The engine keeps one checkpoint per criterion
(named after it) next to ``last``.

- ``best_loc`` (B-LOC, survey §3.4): localisation on ``valpx`` — PxAP on mask sets,
  MaxBoxAccV2 on box sets (``eval.selection_metric`` overrides, e.g. F-CAM's MaxBoxAcc V1);
- ``best_cls`` (B-CL): top-1 accuracy on ``valcl``;
- methods add their own by name (``Method.selection_criteria``), e.g. the weight map's
  label-free score S — register it here with one line or ``SELECTION.add``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from wsol.errors import MetricError
from wsol.registry import Registry


@dataclass(frozen=True)
class Criterion:
    """``split``: ``valpx`` (needs localisation) or ``valcl`` (classification only);
    ``score(metrics, loc_kind, metric)`` -> the number to maximise; ``ties``: on equal
    scores keep the ``first`` epoch or the ``last`` one."""

    name: str
    split: Literal["valpx", "valcl"]
    score: Callable[[dict[str, Any], str, str | None], float]
    ties: Literal["first", "last"] = "first"
    description: str = ""
    #: the split must be scored with the label-free weight-map score S (Evaluator option)
    label_free_s: bool = False

    def better(self, score: float, best: float) -> bool:
        return score > best if self.ties == "first" else score >= best


DEFAULT_LOC_METRIC = {"mask": "pxap", "box": "max_box_acc_v2"}


def loc_metric(loc_kind: str, metric: str | None = None) -> str:
    if metric:
        return metric
    key = DEFAULT_LOC_METRIC.get(loc_kind)
    if key is None:
        raise MetricError(f"selection: loc_kind must be 'mask' or 'box', got {loc_kind!r}")
    return key


def selection_score(metrics: dict[str, Any], loc_kind: str, metric: str | None = None) -> float:
    """B-LOC score: PxAP for mask datasets, MaxBoxAccV2 for box datasets (or ``metric``)."""
    key = loc_metric(loc_kind, metric)
    if key not in metrics:
        raise MetricError(f"selection: metrics lack {key!r} (was the split evaluated with localisation?)")
    return float(metrics[key])


def _accuracy(metrics: dict[str, Any], loc_kind: str, metric: str | None = None) -> float:
    return float(metrics["top1_acc"])


# B-LOC keeps the first epoch reaching its best score; B-CL keeps the latest among ties (on
# small valcl sets accuracy saturates early while training continues).
SELECTION: Registry[Criterion] = Registry("selection criterion")
SELECTION.add("best_loc", Criterion("best_loc", "valpx", selection_score, "first",
                                    "B-LOC: localisation on valpx (PxAP / MaxBoxAccV2)"))
SELECTION.add("best_cls", Criterion("best_cls", "valcl", _accuracy, "last", "B-CL: accuracy on valcl"))


def _weight_map_s(metrics: dict[str, Any], loc_kind: str, metric: str | None = None) -> float:
    """The weight map's label-free early-stopping score: mean S (weight-map-wsol Eqs. 5-6)."""
    if "weight_map_score_s" not in metrics:
        raise MetricError("selection best_s: the metrics lack 'weight_map_score_s' (mean S, weight-map-wsol Eq. 6); "
                          "evaluate the split with localisation and label_free_s")
    return float(metrics["weight_map_score_s"])


# weight map (weight-map-wsol §3 "Early stopping"): the epoch with the highest mean S over the
# validation images, no pixel or box label used; on ties the later one (g refines while S holds)
SELECTION.add("best_s", Criterion("best_s", "valpx", _weight_map_s, "last",
                                  "weight map: mean label-free score S (Eqs. 5-6) on valpx", label_free_s=True))

DEFAULT_CRITERIA = ("best_loc", "best_cls")
