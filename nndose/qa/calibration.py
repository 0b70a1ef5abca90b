"""Plan QA's margins from the model's own error: how much worse than predicted a plan of the model's
style can be, learnt on plans the model did not train on (its folds' validation cases, or a
calibration set given apart).

Each fold's validation wrote its cases' planned and predicted DVH points (validation/dvh_points.json,
without case names). For every structure and QA metric, w = how much worse the plan is than the
prediction (planned - predicted; predicted - planned where lower is worse). A metric's margin is a
conformal quantile of w at level 1 - a (the ceil((n + 1)(1 - a))-th smallest of n values): the
structure's own values where they are enough for that level, else the values of every structure of
its kind pooled. The level a is one for all metrics of a kind, the largest in LEVELS * false_alarm at
which at most `false_alarm` of the calibration structures have any metric beyond its margin (a
structure has several metrics, so a is below false_alarm), each structure's values checked against
margins learnt without its case (leave one out). Plans made like the training plans then
have at most about `false_alarm` of their structures flagged (exchangeable cases). Single folds err
more than the ensemble plan QA compares with, so fold-validation margins err on the side of fewer flags.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nndose.errors import NndoseError
from nndose.io.layout import VALIDATION_DIR, VALIDATION_DVH_FILE, fold_folder
from nndose.qa.compare import METRICS

DEFAULT_FALSE_ALARM = 0.05
LEVELS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)   # the per-metric level a, as fractions of false_alarm


@dataclass(frozen=True)
class Calibration:
    """Margins {kind: {structure: {metric: margin}}} of the structures seen often enough, pooled margins
    {kind: {metric: margin}} for the others, and the per-metric level a chosen for each kind."""
    false_alarm: float
    cases: int
    levels: dict[str, float]
    calibration_rate: dict[str, float]   # of the calibration structures, the fraction beyond their margins
    margins: dict[str, dict[str, dict[str, float]]]
    pooled: dict[str, dict[str, float]]
    source: str = "fold validation"   # or "calibration cases": held-out plans given apart

    def margins_for(self, structure: str, kind: str) -> dict[str, float] | None:
        """The margin of each metric of a structure (its own, else its kind's pooled ones); None for a
        kind the validation had too few structures of."""
        if kind not in self.levels:
            return None
        return self.margins[kind].get(structure) or self.pooled[kind]

    def summary(self) -> dict:
        return {"false_alarm": self.false_alarm, "validation_cases": self.cases, "kinds": sorted(self.levels),
                "source": self.source}

    def to_json(self) -> dict:
        return {"false_alarm": self.false_alarm, "validation_cases": self.cases, "source": self.source,
                "levels": self.levels, "calibration_rate": self.calibration_rate,
                "margins": self.margins, "pooled_margins": self.pooled}


def _excess(spec, planned: float, predicted: float) -> float:
    return planned - predicted if spec.higher_is_worse else predicted - planned


def conformal_quantile(values, level_out: float) -> float:
    """The ceil((n + 1)(1 - level_out))-th smallest of n values; infinite when n is too small for that level."""
    n = len(values)
    rank = math.ceil((n + 1) * (1 - level_out) - 1e-9)
    return float(np.sort(values)[rank - 1]) if rank <= n else math.inf


def _beyond_when_left_out(values, level_out: float) -> np.ndarray:
    """For each value, whether it exceeds the conformal quantile of the others (leave one out)."""
    values = np.asarray(values, np.float64)
    n = len(values)
    k = math.ceil(n * (1 - level_out) - 1e-9)     # the quantile's rank among the n - 1 others
    if k > n - 1:
        return np.zeros(n, bool)
    order = np.argsort(values, kind="stable")
    position = np.empty(n, int)
    position[order] = np.arange(n)
    ranked = values[order]
    others_quantile = np.where(position < k, ranked[k], ranked[k - 1])   # the k-th smallest without itself
    return values > others_quantile


def _margins(rows: list[dict[str, float]], level_out: float) -> dict[str, float]:
    return {m: conformal_quantile([r[m] for r in rows], level_out) for m in rows[0]}


def _kind_margins(structures: dict[str, list[dict[str, float]]], level_out: float):
    """Own margins of the structures whose values suffice at this level, pooled ones for the rest."""
    pooled = _margins([r for rows in structures.values() for r in rows], level_out)
    own = {}
    for name, rows in structures.items():
        margins = _margins(rows, level_out)
        if all(math.isfinite(v) for v in margins.values()):
            own[name] = margins
    return own, pooled


def _structures_beyond(structures: dict[str, list[dict[str, float]]], own: dict, level_out: float) -> list[bool]:
    """For each calibration structure, whether any metric exceeds its margin learnt without that case."""
    names = list(structures)
    pooled_rows = [(name, i) for name in names for i in range(len(structures[name]))]
    metrics = list(structures[names[0]][0])
    pooled = {m: _beyond_when_left_out([structures[n][i][m] for n, i in pooled_rows], level_out) for m in metrics}
    own_beyond = {name: {m: _beyond_when_left_out([r[m] for r in structures[name]], level_out) for m in metrics}
                  for name in own}
    beyond = []
    for j, (name, i) in enumerate(pooled_rows):   # a structure with its own margins is ranked among its own values
        flags = own_beyond[name] if name in own else pooled
        beyond.append(any(flags[m][i if name in own else j] for m in metrics))
    return beyond


def calibrate(cases: list[dict], false_alarm: float = DEFAULT_FALSE_ALARM) -> Calibration | None:
    """The margins from calibration cases ({"structures": {name: {"kind", "planned", "predicted"}}}); a
    kind with too few structures for the false alarm rate is left uncalibrated (None: every kind)."""
    if not 0 < false_alarm < 1:
        raise NndoseError(f"false alarm rate {false_alarm} must lie between 0 and 1")
    excess: dict[str, dict[str, list[dict[str, float]]]] = {}   # kind -> structure -> one {metric: w} per case
    for case in cases:
        for name, s in case["structures"].items():
            specs = METRICS.get(s["kind"], ())
            if specs and all(m.name in s["planned"] and m.name in s["predicted"] for m in specs):
                excess.setdefault(s["kind"], {}).setdefault(name, []).append(
                    {m.name: _excess(m, s["planned"][m.name], s["predicted"][m.name]) for m in specs})
    levels, rates, margins, pooled = {}, {}, {}, {}
    for kind, structures in excess.items():
        for fraction in LEVELS:
            level_out = fraction * false_alarm
            own, shared = _kind_margins(structures, level_out)
            if not all(math.isfinite(v) for v in shared.values()):
                break   # too few structures for this level (and every lower one)
            beyond = _structures_beyond(structures, own, level_out)
            levels[kind], rates[kind], margins[kind], pooled[kind] = level_out, float(np.mean(beyond)), own, shared
            if rates[kind] <= false_alarm:
                break
    if not levels:
        return None
    return Calibration(false_alarm, len(cases), levels, rates, margins, pooled)


def validation_cases(model_dir: Path, folds: list[str]) -> list[dict] | None:
    """Every fold's validation DVH points; None when a fold has none (the 'all' fold, an older model)."""
    cases = []
    for fold in folds:
        path = fold_folder(Path(model_dir), fold) / VALIDATION_DIR / VALIDATION_DVH_FILE
        if not path.is_file():
            return None
        try:
            cases += json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise NndoseError(f"{path}: not a readable validation file ({e.__class__.__name__})") from None
    return cases
