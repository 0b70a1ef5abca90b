"""Plan QA's margins from the model's own error: how much worse than predicted a plan of the model's
style can be, learnt on plans the model did not train on (its folds' validation cases, or a
calibration set given apart).

Each fold's validation wrote its cases' planned and predicted DVH points (validation/dvh_points.json,
without case names). For every structure and flag metric (qa.compare.flag_specs: the organ flag metrics,
every target metric), w = how much worse the plan is than the prediction (planned - predicted;
predicted - planned where lower is worse), for a dose as a fraction of the case's reference dose: the
network predicts dose relative to it, and its errors scale with it. A metric's margin is a conformal
quantile of w at level 1 - a (the ceil((n + 1)(1 - a))-th smallest of n values): the structure's own
values where at least OWN_TAIL of them are expected beyond it (n a >= OWN_TAIL; fewer, and the margin
would be one of its few largest values, too noisy a threshold), else the values of every structure of
its kind pooled. The level a is one for all flag metrics of a kind, the largest in LEVELS * false_alarm
at which at most `false_alarm` of the calibration structures have any flag metric beyond its margin (a
structure with several flag metrics gets a below false_alarm), each structure's value checked against
margins learnt without that value (leave one out). A kind where no level gets there stays uncalibrated.
Plans made like the training plans then have at most about `false_alarm` of their structures flagged
(exchangeable cases). Single folds err more than the ensemble plan QA compares with, so fold-validation
margins err on the side of fewer flags.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nndose.errors import NndoseError
from nndose.io.layout import VALIDATION_DIR, VALIDATION_DVH_FILE, fold_folder
from nndose.qa.compare import DEFAULT_ORGAN_FLAG_METRICS, KIND_NAMES, METRICS, check_flag_metrics, flag_specs, worse_by

DEFAULT_FALSE_ALARM = 0.05
LEVELS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)   # the per-metric level a, as fractions of false_alarm
OWN_TAIL = 5   # a structure gets margins of its own when this many of its values are expected beyond them


@dataclass(frozen=True)
class Calibration:
    """Margins {kind: {structure: {metric: margin}}} of the structures seen often enough, pooled margins
    {kind: {metric: margin}} for the others, and the per-metric level a chosen for each kind. Margins of
    doses are fractions of the reference dose; of V-x, percentage points."""
    false_alarm: float
    cases: int
    levels: dict[str, float]
    calibration_rate: dict[str, float]   # of the calibration structures, the fraction beyond their margins
    margins: dict[str, dict[str, dict[str, float]]]
    pooled: dict[str, dict[str, float]]
    source: str = "fold validation"   # or "calibration cases": held-out plans given apart
    organ_flag_metrics: tuple[str, ...] = DEFAULT_ORGAN_FLAG_METRICS

    def margins_for(self, structure: str, kind: str, reference_dose_gy: float) -> dict[str, float] | None:
        """The margin of each flag metric of a structure (its own, else its kind's pooled ones), doses in Gy
        for a case of this reference dose; None for a kind the validation had too few structures of."""
        if kind not in self.levels:
            return None
        relative = self.margins[kind].get(structure) or self.pooled[kind]
        units = {m.name: m.unit for m in METRICS[kind]}
        return {m: v * reference_dose_gy if units[m] == "Gy" else v for m, v in relative.items()}

    def summary(self) -> dict:
        return {"false_alarm": self.false_alarm, "cases": self.cases, "source": self.source,
                "kinds": sorted(self.levels), "calibration_rate": self.calibration_rate,
                "organ_flag_metrics": list(self.organ_flag_metrics)}

    def to_json(self) -> dict:
        return {**self.summary(), "margin_units": "doses: fraction of the reference dose; V-x: percentage points",
                "levels": self.levels, "margins": self.margins, "pooled_margins": self.pooled}


def basis_in_words(summary: dict) -> tuple[str, str, str]:
    """(the kinds calibrated, where their margins were learnt, the kinds left uncalibrated), in words,
    from a Calibration.summary(); '' where no kind was left uncalibrated."""
    source = "held-out calibration plans" if summary.get("source") == "calibration cases" else "validation cases of the folds"
    return (" and ".join(KIND_NAMES.get(k, k) for k in summary["kinds"]), source,
            " and ".join(name for k, name in KIND_NAMES.items() if k not in summary["kinds"]))


def _rank(n: int, level_out: float) -> int:
    """The conformal quantile's rank among n values: ceil((n + 1)(1 - level_out)) (above n: none)."""
    return math.ceil((n + 1) * (1 - level_out) - 1e-9)


def conformal_quantile(values, level_out: float) -> float:
    """The ceil((n + 1)(1 - level_out))-th smallest of n values; infinite when n is too small for that level."""
    rank = _rank(len(values), level_out)
    return float(np.sort(values)[rank - 1]) if rank <= len(values) else math.inf


def _beyond_when_left_out(values, level_out: float) -> np.ndarray:
    """For each value, whether it exceeds the conformal quantile of the others (leave one out)."""
    values = np.asarray(values, np.float64)
    n = len(values)
    k = _rank(n - 1, level_out)     # the quantile's rank among the n - 1 others
    if k > n - 1:
        return np.zeros(n, bool)
    order = np.argsort(values, kind="stable")
    position = np.empty(n, int)
    position[order] = np.arange(n)
    ranked = values[order]
    others_quantile = np.where(position < k, ranked[k], ranked[k - 1])   # the k-th smallest without itself
    return values > others_quantile


def fewest_structures(false_alarm: float) -> int:
    """The fewest structures of a kind that can be calibrated for `false_alarm` (at its highest level,
    each left out in turn); fewer of every kind and calibrate returns None whatever their values."""
    n = 2
    while not _enough_when_left_out(n, false_alarm):
        n += 1
    return n


def _margins(rows: list[dict[str, float]], level_out: float) -> dict[str, float]:
    return {m: conformal_quantile([r[m] for r in rows], level_out) for m in rows[0]}


def _enough_when_left_out(n: int, level_out: float) -> bool:
    """Whether n - 1 values give a finite conformal quantile at this level (so n do too)."""
    return _rank(n - 1, level_out) <= n - 1


def _own_allowed(n: int, level_out: float) -> bool:
    """Whether n values of one structure give it margins of its own at this level: OWN_TAIL of them
    expected beyond, and enough with one left out."""
    return n * level_out >= OWN_TAIL - 1e-9 and _enough_when_left_out(n, level_out)


def _kind_margins(structures: dict[str, list[dict[str, float]]], level_out: float, own_allowed: bool):
    """Own margins of the structures whose values suffice for them (when own_allowed, _own_allowed),
    pooled ones for the rest; None when the pool itself is too small."""
    rows = [r for rs in structures.values() for r in rs]
    if not _enough_when_left_out(len(rows), level_out):
        return None
    own = {name: _margins(rs, level_out) for name, rs in structures.items()
           if own_allowed and _own_allowed(len(rs), level_out)}
    return own, _margins(rows, level_out)


def _structures_beyond(structures: dict[str, list[dict[str, float]]], own: dict, level_out: float) -> list[bool]:
    """For each calibration structure, whether any metric exceeds the margin learnt without its value
    (among its own values where it has own margins, else among the pool)."""
    rows = [(name, i) for name, rs in structures.items() for i in range(len(rs))]
    metrics = list(next(iter(structures.values()))[0])
    pooled = {m: _beyond_when_left_out([structures[n][i][m] for n, i in rows], level_out) for m in metrics}
    own_beyond = {name: {m: _beyond_when_left_out([r[m] for r in structures[name]], level_out) for m in metrics}
                  for name in own}
    return [any(own_beyond[name][m][i] for m in metrics) if name in own else any(pooled[m][j] for m in metrics)
            for j, (name, i) in enumerate(rows)]


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NndoseError(f"calibration cases: {what} is {value!r}, not a finite number")
    return float(value)


def _excess_rows(cases: list[dict], organ_flag_metrics) -> dict[str, dict[str, list[dict[str, float]]]]:
    """kind -> structure -> one {flag metric: how much worse than predicted (doses: a fraction of the
    reference dose)} per case holding the structure."""
    excess: dict[str, dict[str, list[dict[str, float]]]] = {}
    for case in cases:
        reference = _number(case.get("reference_dose_gy"), "the reference dose")
        if reference <= 0:
            raise NndoseError(f"calibration cases: the reference dose is {reference} Gy, not positive")
        for name, s in case["structures"].items():
            specs = flag_specs(s.get("kind"), organ_flag_metrics) if s.get("kind") in METRICS else ()
            if specs and all(m.name in s["planned"] and m.name in s["predicted"] for m in specs):
                excess.setdefault(s["kind"], {}).setdefault(name, []).append(
                    {m.name: worse_by(m, _number(s["planned"][m.name], f"{name} {m.name} planned"),
                                      _number(s["predicted"][m.name], f"{name} {m.name} predicted"))
                     / (reference if m.unit == "Gy" else 1.0) for m in specs})
    return excess


def _choose_level(structures: dict[str, list[dict[str, float]]], false_alarm: float):
    """(level, rate left out, own margins, pooled margins) at the largest level, own margins preferred,
    whose rate is at most false_alarm; None when none is."""
    for fraction in LEVELS:
        level_out = fraction * false_alarm
        for own_allowed in (True, False):
            chosen = _kind_margins(structures, level_out, own_allowed)
            if chosen is None:
                return None   # the pool is too small at this level and at every lower one
            own, shared = chosen
            rate = float(np.mean(_structures_beyond(structures, own, level_out)))
            if rate <= false_alarm:
                return level_out, rate, own, shared
    return None


def calibrate(cases: list[dict], false_alarm: float = DEFAULT_FALSE_ALARM,
              organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS) -> Calibration | None:
    """The margins of the flag metrics from calibration cases ({"reference_dose_gy", "structures": {name:
    {"kind", "planned", "predicted"}}}). Per kind the largest level (own margins preferred to pooled ones
    at a level) at which, left out, at most `false_alarm` of the structures are beyond; a kind where no
    level gets there is left uncalibrated (None: every kind)."""
    if not 0 < false_alarm < 1:
        raise NndoseError(f"false alarm rate {false_alarm} must lie between 0 and 1")
    organ_flag_metrics = check_flag_metrics(organ_flag_metrics)
    levels, rates, margins, pooled = {}, {}, {}, {}
    for kind, structures in _excess_rows(cases, organ_flag_metrics).items():
        chosen = _choose_level(structures, false_alarm)
        if chosen is not None:
            levels[kind], rates[kind], margins[kind], pooled[kind] = chosen
    if not levels:
        return None
    return Calibration(false_alarm, len(cases), levels, rates, margins, pooled, organ_flag_metrics=organ_flag_metrics)


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
