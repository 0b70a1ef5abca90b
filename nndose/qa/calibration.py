"""Plan QA's margins from the model's own error: how much worse than predicted a plan of the model's
style can be, learnt on plans the model did not train on (its folds' validation cases, or a
calibration set given apart).

Each fold's validation wrote its cases' planned and predicted DVH points (validation/dvh_points.json,
without case names). For every structure and flag metric (qa.compare.flag_specs: the organ flag metrics,
every target metric), w = how much worse the plan is than the prediction (planned - predicted;
predicted - planned where lower is worse), for a dose as a fraction of the case's reference dose: the
network predicts dose relative to it, and its errors scale with it. A metric's margin is a conformal
quantile of w at level 1 - a (the ceil((n + 1)(1 - a))-th smallest of n values) of every structure of its
kind pooled, or scaled to each structure's own error: a structure with at least SCALED_FROM values gets
margin = location + q x scale (the mean and standard deviation of its w), q the conformal quantile of the
standardized errors (w - location) / scale of all such structures (a structure the model predicts well
gets a tight margin, a poorly predicted one a wide one, instead of one margin as wide as the worst organs
need); structures with fewer values keep the pooled margin. A scaled structure's location is the model's
systematic error on it (its bias): plan QA measures the tolerance and the folds' interval from the
prediction corrected by it (qa.compare), so an organ the model over-predicts is not let through by the
tolerance alone. The level a is one for all flag metrics of a
kind, the largest in LEVELS * false_alarm at which at most `false_alarm` of the calibration structures
have any flag metric beyond its margin (a structure with several flag metrics gets a below false_alarm),
each structure's value checked against margins learnt without that value (leave one out), found for
pooled and for scaled margins; of the two, the one whose margins are smaller on average (in units of each
metric's spread) is kept. A kind where no level gets there stays uncalibrated.
Plans made like the training plans then have at most about `false_alarm` of their structures flagged
(exchangeable cases). The margins are learnt on single folds and used on the ensemble: measured, the
ensemble errs on new plans about as much as one fold (organ mean dose, sd in % of Rx, one fold on its
validation cases against the ensemble on the plan-QA benchmark's normal test plans: on pyRadPlan's plans
2.25 against 2.05 and 2.63 with 120-epoch CPU folds, 2.67 against 2.39 and 3.05 with 40-epoch ones; on
the phantom engine's 5.52 against 5.14), as the folds' spread is small beside the error they share, so
the margins carry over.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nndose.errors import NndoseError
from nndose.io.layout import VALIDATION_DIR, VALIDATION_DVH_FILE, fold_folder
from nndose.qa.compare import DEFAULT_ORGAN_FLAG_METRICS, KIND_NAMES, METRICS, check_flag_metrics, flag_specs, worse_by

DEFAULT_FALSE_ALARM = 0.05
LEVELS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1)   # the per-metric level a, as fractions of false_alarm
SCALED_FROM = 20   # a structure with this many calibration values gets margins scaled to its own error
TINY_SCALE = 1e-9


@dataclass(frozen=True)
class Calibration:
    """Margins {kind: {structure: {metric: margin}}} of the structures seen often enough (scaled to their
    own error; empty where the kind's margins are pooled) and their biases (the model's mean error on them,
    part of the margin), pooled margins {kind: {metric: margin}} for the others, and the per-metric level a
    chosen for each kind. Margins and biases of doses are fractions of the reference dose; of V-x,
    percentage points."""
    false_alarm: float
    cases: int
    levels: dict[str, float]
    calibration_rate: dict[str, float]   # of the calibration structures, the fraction beyond their margins
    margins: dict[str, dict[str, dict[str, float]]]
    pooled: dict[str, dict[str, float]]
    source: str = "fold validation"   # or "calibration cases": held-out plans given apart
    organ_flag_metrics: tuple[str, ...] = DEFAULT_ORGAN_FLAG_METRICS
    biases: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def margins_for(self, structure: str, kind: str, reference_dose_gy: float) -> dict[str, float] | None:
        """The margin of each flag metric of a structure (its own, else its kind's pooled ones), doses in Gy
        for a case of this reference dose; None for a kind the validation had too few structures of."""
        if kind not in self.levels:
            return None
        return _in_units(self.margins[kind].get(structure) or self.pooled[kind], kind, reference_dose_gy)

    def biases_for(self, structure: str, kind: str, reference_dose_gy: float) -> dict[str, float]:
        """The model's systematic error on each flag metric of a structure with scaled margins (how much worse
        plans are than it predicts, on average), in the units of margins_for; {} for the others."""
        return _in_units(self.biases.get(kind, {}).get(structure, {}), kind, reference_dose_gy)

    def summary(self) -> dict:
        return {"false_alarm": self.false_alarm, "cases": self.cases, "source": self.source,
                "kinds": sorted(self.levels), "scaled_kinds": sorted(k for k, own in self.margins.items() if own),
                "calibration_rate": self.calibration_rate, "organ_flag_metrics": list(self.organ_flag_metrics)}

    def to_json(self) -> dict:
        return {**self.summary(), "margin_units": "doses: fraction of the reference dose; V-x: percentage points",
                "levels": self.levels, "margins": self.margins, "biases": self.biases, "pooled_margins": self.pooled}


def _in_units(relative: dict[str, float], kind: str, reference_dose_gy: float) -> dict[str, float]:
    """Values of a kind's metrics learnt as fractions of the reference dose (doses) or in percentage points
    (V-x), doses in Gy for a case of this reference dose."""
    units = {m.name: m.unit for m in METRICS[kind]}
    return {m: v * reference_dose_gy if units[m] == "Gy" else v for m, v in relative.items()}


def basis_in_words(summary: dict) -> tuple[str, str, str]:
    """(the kinds calibrated, where their margins were learnt, the kinds left uncalibrated), in words,
    from a Calibration.summary(); '' where no kind was left uncalibrated."""
    source = "held-out calibration plans" if summary.get("source") == "calibration cases" else "validation cases of the folds"
    scaled = summary.get("scaled_kinds", ())
    calibrated = " and ".join(KIND_NAMES.get(k, k) + " (each scaled to its own error and bias)" * (k in scaled) for k in summary["kinds"])
    return calibrated, source, " and ".join(name for k, name in KIND_NAMES.items() if k not in summary["kinds"])


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


def _location_scale(values: np.ndarray) -> tuple[float, float]:
    """A structure's typical error and its spread: mean and standard deviation (floored, so a structure
    predicted exactly still has a scale)."""
    return float(np.mean(values)), max(float(np.std(values, ddof=1)), TINY_SCALE)


def _scaled_margins(groups: list[np.ndarray], level_out: float) -> list[tuple[float, float]] | None:
    """Each structure's (margin location + q x scale, location), q the conformal quantile of every value's
    standardized error (w - location) / scale; None when the values are too few for that level."""
    stats = [_location_scale(g) for g in groups]
    q = conformal_quantile(np.concatenate([(g - loc) / sc for g, (loc, sc) in zip(groups, stats)]), level_out)
    return None if math.isinf(q) else [(loc + q * sc, loc) for loc, sc in stats]


def _scaled_beyond_when_left_out(groups: list[np.ndarray], level_out: float) -> list[np.ndarray]:
    """For each value of each structure, whether it exceeds the scaled margin learnt without it: its
    structure's location and scale from its other values, q from every standardized error but its own."""
    standardized = [(g - loc) / sc for g, (loc, sc) in ((g, _location_scale(g)) for g in groups)]
    out = []
    for i, g in enumerate(groups):
        others = np.concatenate([np.zeros(0)] + standardized[:i] + standardized[i + 1:])
        beyond = np.zeros(len(g), bool)
        for j in range(len(g)):
            rest = np.delete(g, j)
            loc, sc = _location_scale(rest)
            beyond[j] = (g[j] - loc) / sc > conformal_quantile(np.concatenate([others, (rest - loc) / sc]), level_out)
        out.append(beyond)
    return out


def _values(structures: dict[str, list[dict[str, float]]], names, metric: str) -> list[np.ndarray]:
    return [np.array([r[metric] for r in structures[name]]) for name in names]


def _kind_margins(structures: dict[str, list[dict[str, float]]], level_out: float, scaled: bool):
    """(scaled margins of the structures with at least SCALED_FROM values, when `scaled`, their biases,
    pooled margins for the rest); None when the pool itself is too small for this level."""
    rows = [r for rs in structures.values() for r in rs]
    if not _enough_when_left_out(len(rows), level_out):
        return None
    names = [name for name, rs in structures.items() if scaled and len(rs) >= SCALED_FROM]
    own, biases = {name: {} for name in names}, {name: {} for name in names}
    for m in rows[0] if names else ():
        margins = _scaled_margins(_values(structures, names, m), level_out)
        if margins is None:   # too few values in all for this level: every structure pooled
            return {}, {}, _margins(rows, level_out)
        for name, (margin, bias) in zip(names, margins):
            own[name][m], biases[name][m] = margin, bias
    return own, biases, _margins(rows, level_out)


def _structures_beyond(structures: dict[str, list[dict[str, float]]], own: dict, level_out: float) -> list[bool]:
    """For each calibration structure, whether any metric exceeds the margin learnt without its value
    (scaled, for the structures with scaled margins; else the pool's)."""
    rows = [(name, i) for name, rs in structures.items() for i in range(len(rs))]
    metrics = list(next(iter(structures.values()))[0])
    pooled = {m: _beyond_when_left_out([structures[n][i][m] for n, i in rows], level_out) for m in metrics}
    scaled = {m: dict(zip(own, _scaled_beyond_when_left_out(_values(structures, own, m), level_out))) for m in metrics}
    return [any(scaled[m][name][i] for m in metrics) if name in own else any(pooled[m][j] for m in metrics)
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


class _KindChoice(NamedTuple):
    """A kind's calibration: the level, the rate left out at it, the scaled margins, their biases, the pooled margins."""
    level: float
    rate: float
    own: dict
    biases: dict
    pooled: dict


def _largest_level(structures: dict[str, list[dict[str, float]]], false_alarm: float, scaled: bool):
    """The _KindChoice at the largest level whose rate is at most false_alarm; None when none is."""
    for fraction in LEVELS:
        level_out = fraction * false_alarm
        chosen = _kind_margins(structures, level_out, scaled)
        if chosen is None:
            return None   # the pool is too small at this level and at every lower one
        rate = float(np.mean(_structures_beyond(structures, chosen[0], level_out)))
        if rate <= false_alarm:
            return _KindChoice(level_out, rate, *chosen)
    return None


def _typical_margin(structures: dict[str, list[dict[str, float]]], own: dict, pooled: dict) -> float:
    """The margin a calibration structure meets on average, each metric in units of its spread over every
    structure: the smaller, the smaller the excess the margins let through."""
    total = 0.0
    for m in pooled:
        spread = max(float(np.std([r[m] for rs in structures.values() for r in rs])), TINY_SCALE)
        total += sum(len(rs) * (own[name][m] if name in own else pooled[m]) for name, rs in structures.items()) / spread
    return total / sum(len(rs) for rs in structures.values())


def _choose_level(structures: dict[str, list[dict[str, float]]], false_alarm: float):
    """The _KindChoice: for scaled margins and for pooled ones the largest level whose rate is at most
    false_alarm, then of the two the one with the smaller typical margin (pooled ones when equal, as for a
    single structure); None when neither has such a level."""
    candidates = [c for c in (_largest_level(structures, false_alarm, scaled) for scaled in (False, True)) if c]
    return min(candidates, key=lambda c: _typical_margin(structures, c.own, c.pooled), default=None)


def calibrate(cases: list[dict], false_alarm: float = DEFAULT_FALSE_ALARM,
              organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS) -> Calibration | None:
    """The margins of the flag metrics from calibration cases ({"reference_dose_gy", "structures": {name:
    {"kind", "planned", "predicted"}}}). Per kind the largest level at which, left out, at most
    `false_alarm` of the structures are beyond, with scaled or pooled margins, whichever are tighter
    (_choose_level); a kind where no level gets there is left uncalibrated (None: every kind)."""
    if not 0 < false_alarm < 1:
        raise NndoseError(f"false alarm rate {false_alarm} must lie between 0 and 1")
    organ_flag_metrics = check_flag_metrics(organ_flag_metrics)
    levels, rates, margins, biases, pooled = {}, {}, {}, {}, {}
    for kind, structures in _excess_rows(cases, organ_flag_metrics).items():
        chosen = _choose_level(structures, false_alarm)
        if chosen is not None:
            levels[kind], rates[kind], margins[kind], biases[kind], pooled[kind] = chosen
    if not levels:
        return None
    return Calibration(false_alarm, len(cases), levels, rates, margins, pooled, organ_flag_metrics=organ_flag_metrics,
                       biases=biases)


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
