"""Plan QA: per structure, the clinical DVH values against the ensemble prediction and its fold interval.

Predicted value = the metric of the ensemble mean dose; interval = [min, max] of the metric over the
folds, widened to hold the predicted value (one fold: the point). A flag metric is flagged when the clinical
value is worse than predicted by more than the tolerance, lies outside the interval on the worse side,
and, for a model whose folds were validated, is worse by more than the model's own error allows (the
margin calibrated on its validation cases, qa/calibration.py). Where the calibration knows the model's
systematic error on a structure (its bias: plans are that much worse than it predicts, on average;
negative where they are better), the tolerance and the interval are measured from the prediction
corrected by it; the predicted value and the interval stay the model's own. Organs at risk: Dmean,
D0.1cc, D2 and V5/V20/V30/V40 Gy (% of the volume), higher is worse; they are flagged on the chosen flag metrics (default
Dmean, which sums up the whole DVH) and the others are shown. Every metric that can flag spends part of the
false alarm budget, so each one added makes flags on the others rarer. Targets: D95 and D98 (coverage,
lower is worse) and D2 (hot spot, higher is worse), all flag metrics.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from nndose.errors import NndoseError
from nndose.evaluation.metrics import V_LEVELS_GY, dvh_points


@dataclass(frozen=True)
class Tolerance:
    """A dose value (Gy) differs meaningfully when the difference exceeds
    min(gy, percent / 100 * reference_dose_gy), the reference dose being the case's highest
    prescription: "2 Gy or 3 % of the prescription, whichever is smaller". A volume value (V-x, in %
    of the organ volume) differs meaningfully when the difference exceeds `percent` percentage points.
    """
    gy: float = 2.0
    percent: float = 3.0

    def __post_init__(self):
        if not (math.isfinite(self.gy) and math.isfinite(self.percent) and self.gy >= 0 and self.percent >= 0):
            raise NndoseError(f"tolerance {self.gy} Gy / {self.percent} % must be finite and not negative")

    def for_unit(self, unit: str, reference_dose_gy: float) -> float:
        """The tolerance of a value in `unit` ("Gy" or "%")."""
        return min(self.gy, self.percent / 100.0 * reference_dose_gy) if unit == "Gy" else self.percent


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str  # "Gy" or "%"
    higher_is_worse: bool
    level_gy: float | None = None   # a V-x's dose level x


OAR_METRICS = (MetricSpec("Dmean", "Gy", True), MetricSpec("D0.1cc", "Gy", True), MetricSpec("D2", "Gy", True),
               *(MetricSpec(f"V{v}Gy", "%", True, float(v)) for v in V_LEVELS_GY))
TARGET_METRICS = (MetricSpec("D95", "Gy", False), MetricSpec("D98", "Gy", False), MetricSpec("D2", "Gy", True))
METRICS = {"target": TARGET_METRICS, "oar": OAR_METRICS}
KIND_NAMES = {"oar": "organs at risk", "target": "targets"}   # the kinds QA checks, in words
METRIC_NAMES = tuple(dict.fromkeys(m.name for m in OAR_METRICS + TARGET_METRICS))  # every metric, once
DEFAULT_ORGAN_FLAG_METRICS = ("Dmean",)


def check_flag_metrics(names) -> tuple[str, ...]:
    """The organ-at-risk metrics an organ may be flagged on, checked (known, at least one, each once), in
    the order of OAR_METRICS."""
    names = list(names)
    known = [m.name for m in OAR_METRICS]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise NndoseError(f"unknown organ flag metric {unknown[0] if unknown else '(none given)'}; choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise NndoseError(f"organ flag metric {next(n for n in names if names.count(n) > 1)} named twice")
    return tuple(n for n in known if n in names)


def _and(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def flag_metrics_in_words(organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS) -> str:
    """Which metrics flag which structures, e.g. 'organs at risk on Dmean (their other metrics shown),
    targets on D95, D98 and D2'."""
    shown = "" if len(organ_flag_metrics) == len(OAR_METRICS) else " (their other metrics shown)"
    return f"organs at risk on {_and(organ_flag_metrics)}{shown}, targets on {_and(m.name for m in TARGET_METRICS)}"


def flag_specs(kind: str, organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS) -> tuple[MetricSpec, ...]:
    """The metrics a structure of this kind may be flagged on: every target metric, the organ flag metrics."""
    return METRICS[kind] if kind != "oar" else tuple(m for m in OAR_METRICS if m.name in organ_flag_metrics)


@dataclass(frozen=True)
class MetricQA:
    name: str
    unit: str
    higher_is_worse: bool
    clinical: float
    predicted: float
    lower: float
    upper: float
    excess: float  # clinical worse than predicted by this much (negative: better)
    tolerance: float
    margin: float | None   # the calibrated margin (None: the model's error is unknown, or not a flag metric)
    flagged: bool
    reason: str
    can_flag: bool = True  # False: shown, not one the structure is flagged on
    bias: float = 0.0      # the model's systematic error (worse by this much on average; 0: none known)

    @property
    def has_interval(self) -> bool:
        """Whether the folds spread at all (one fold, or folds that agree: the interval is the prediction)."""
        return self.upper > self.lower

    @property
    def slack(self) -> float:
        """How much worse than predicted the flag rule lets a value be, the interval aside (the tolerance
        counted from the prediction corrected by the bias)."""
        return self.bias + self.tolerance if self.margin is None else max(self.bias + self.tolerance, self.margin)

    @property
    def allowed(self) -> float:
        """The worst value the flag rule lets pass: beyond the interval, the tolerance and the margin."""
        if self.higher_is_worse:
            return max(self.upper + self.bias, self.predicted + self.slack)
        return min(self.lower - self.bias, self.predicted - self.slack)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StructureQA:
    name: str
    kind: str
    metrics: tuple[MetricQA, ...]

    @property
    def flagged(self) -> bool:
        return any(m.flagged for m in self.metrics)

    @property
    def reason(self) -> str:
        """The flagged metrics' reasons; unflagged, the reason of the metric closest to a flag."""
        if self.flagged:
            return "; ".join(m.reason for m in self.metrics if m.flagged)
        return max((m for m in self.metrics if m.can_flag), key=lambda m: m.excess - m.slack).reason

    def metric(self, name: str) -> MetricQA | None:
        return next((m for m in self.metrics if m.name == name), None)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "flagged": self.flagged, "reason": self.reason,
                "metrics": [m.to_json() for m in self.metrics]}


@dataclass(frozen=True)
class CaseQA:
    case: str
    reference_dose_gy: float
    tolerance: Tolerance
    structures: tuple[StructureQA, ...]
    n_folds: int                      # fold predictions in the ensemble (1: the interval is the prediction)
    calibration: dict | None = None   # false alarm rate, validation cases and kinds of the margins (None: none)
    organ_flag_metrics: tuple[str, ...] = DEFAULT_ORGAN_FLAG_METRICS

    @property
    def flagged_organs(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures if s.kind == "oar" and s.flagged)

    @property
    def flagged_targets(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.structures if s.kind == "target" and s.flagged)

    @property
    def n_flagged_organs(self) -> int:
        return len(self.flagged_organs)

    @property
    def sparing_left_gy(self) -> float:
        """Sum over organs at risk of how far the clinical Dmean lies beyond what the flag rule lets
        pass: max(0, clinical - max(upper end of the interval, predicted + tolerance, predicted + margin)),
        the interval and the tolerance moved by the model's bias where known."""
        return float(sum(max(0.0, m.clinical - m.allowed) for s in self.structures if s.kind == "oar"
                         for m in s.metrics if m.name == "Dmean"))

    def structure(self, name: str) -> StructureQA | None:
        return next((s for s in self.structures if s.name == name), None)

    def to_json(self) -> dict:
        return {"case": self.case, "reference_dose_gy": self.reference_dose_gy,
                "tolerance": {"gy": self.tolerance.gy, "percent": self.tolerance.percent},
                "n_folds": self.n_folds, "calibration": self.calibration, "organ_flag_metrics": list(self.organ_flag_metrics),
                "n_flagged_organs": self.n_flagged_organs, "flagged_organs": list(self.flagged_organs),
                "flagged_targets": list(self.flagged_targets), "sparing_left_gy": self.sparing_left_gy,
                "structures": [s.to_json() for s in self.structures]}


FULL_VOLUME_PERCENT = 99.95   # a V-x this high shows as 100 % and cannot rise


def _reason(spec: MetricSpec, m: MetricQA) -> str:
    u = spec.unit if spec.unit == "Gy" else "percentage points"
    head = f"{spec.name} {m.clinical:.1f} {spec.unit} vs predicted {m.predicted:.1f} {spec.unit}"
    if m.has_interval:
        head += f" [{m.lower:.1f}, {m.upper:.1f}]"
    said = abs(m.bias) >= 0.05   # a bias that rounds to 0.0 in the text is not spoken of
    if said:
        corrected = m.predicted + (m.bias if spec.higher_is_worse else -m.bias)
        head += (f", {corrected:.1f} {spec.unit} corrected for the model's bias (plans {abs(m.bias):.1f} {u} "
                 f"{'worse' if m.bias > 0 else 'better'} than it predicts, on average)")
    if not m.can_flag:
        return f"{head}: shown, not a flag metric"
    if m.flagged:
        return (f"{head}: {m.excess - m.bias:.1f} {u} {'more' if spec.higher_is_worse else 'less'} than "
                + ("the corrected prediction" if said else "achievable")
                + f", {worse_by(spec, m.clinical, m.allowed):.1f} {u} beyond what the flag rule lets pass")
    if spec.level_gy is not None and min(m.clinical, m.predicted) >= FULL_VOLUME_PERCENT:   # no plan can be worse on it
        return f"{head}: the whole organ gets {spec.level_gy:g} Gy or more in both, so {spec.name} cannot show worse sparing"
    if m.excess <= m.bias:
        return f"{head}: no worse than {'the corrected prediction' if said else 'predicted'}"
    if m.excess <= m.bias + m.tolerance:
        return f"{head}: within the {m.tolerance:.1f} {u} tolerance" + " of the corrected prediction" * said
    if m.margin is not None and m.excess <= m.margin:
        return f"{head}: within the model's validated error ({m.margin:.1f} {u})"
    return f"{head}: inside the folds' interval"


def worse_by(spec: MetricSpec, value: float, reference: float) -> float:
    """How much worse `value` is than `reference` (negative: better)."""
    return value - reference if spec.higher_is_worse else reference - value


def compare_metric(spec: MetricSpec, clinical: float, predicted: float, fold_values: list[float],
                   tolerance: float, margin: float | None = None, can_flag: bool = True, bias: float = 0.0) -> MetricQA:
    """One metric: the interval of the folds (widened to hold `predicted`) and, for a flag metric, the flag
    rule; `bias` (with a margin) moves the tolerance and the interval that much to the worse side."""
    lower, upper = min(min(fold_values), predicted), max(max(fold_values), predicted)
    excess = worse_by(spec, clinical, predicted)
    margin = margin if can_flag else None
    bias = bias if margin is not None else 0.0
    outside = worse_by(spec, clinical, upper if spec.higher_is_worse else lower) > bias
    flagged = can_flag and excess > bias + tolerance and outside and (margin is None or excess > margin)
    m = MetricQA(spec.name, spec.unit, spec.higher_is_worse, clinical=clinical, predicted=predicted, lower=lower,
                 upper=upper, excess=excess, tolerance=tolerance, margin=margin, flagged=flagged, reason="",
                 can_flag=can_flag, bias=bias)
    return replace(m, reason=_reason(spec, m))


def compare_structure(name: str, kind: str, clinical_gy: np.ndarray, predicted_gy: np.ndarray,
                      fold_predictions_gy: list[np.ndarray], voxel_mm3: float, tolerance: Tolerance,
                      reference_dose_gy: float, margins: dict[str, float] | None = None,
                      organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS, biases: dict[str, float] | None = None) -> StructureQA:
    """One structure from the dose values inside it (1-D arrays: clinical, ensemble mean, each fold);
    `margins`: the calibrated margin of each flag metric (None: uncalibrated), `biases` the model's
    systematic error on them where known."""
    clinical = dvh_points(clinical_gy, kind, voxel_mm3)
    predicted = dvh_points(predicted_gy, kind, voxel_mm3)
    folds = [dvh_points(f, kind, voxel_mm3) for f in fold_predictions_gy]
    flags = flag_specs(kind, organ_flag_metrics)
    return StructureQA(name, kind, tuple(
        compare_metric(m, clinical[m.name], predicted[m.name], [f[m.name] for f in folds],
                       tolerance.for_unit(m.unit, reference_dose_gy), (margins or {}).get(m.name), m in flags,
                       (biases or {}).get(m.name, 0.0))
        for m in METRICS[kind]))


def ensemble_mean(fold_predictions_gy: list[np.ndarray]) -> np.ndarray:
    """The mean of the fold predictions (float64)."""
    if not fold_predictions_gy:
        raise NndoseError("no fold predictions to compare with")
    return sum(np.asarray(f, np.float64) for f in fold_predictions_gy) / len(fold_predictions_gy)


def _check(clinical_gy: np.ndarray, fold_predictions_gy: list[np.ndarray], structures: dict[str, np.ndarray],
           prescriptions_gy: dict[str, float], voxel_mm3: float) -> None:
    if not fold_predictions_gy:
        raise NndoseError("no fold predictions to compare with")
    if not prescriptions_gy:
        raise NndoseError("no prescription given: the tolerance needs the case's highest prescription")
    if not (voxel_mm3 > 0 and math.isfinite(voxel_mm3)):
        raise NndoseError(f"voxel volume {voxel_mm3} mm^3 is not a positive number")
    arrays = [("the clinical dose", clinical_gy)]
    arrays += [(f"fold prediction {k}", f) for k, f in enumerate(fold_predictions_gy)]
    for what, a in arrays + [(f"structure {n}", m) for n, m in structures.items()]:
        if np.shape(a) != np.shape(clinical_gy):
            raise NndoseError(f"{what} has shape {np.shape(a)}, the clinical dose {np.shape(clinical_gy)}")
    for what, a in arrays:
        if not np.isfinite(a).all():
            raise NndoseError(f"{what} holds NaN or infinite values")


def _flag_metrics_of(calibration, organ_flag_metrics) -> tuple[str, ...]:
    """The organ flag metrics, checked, and the calibration's own (its margins are for those alone)."""
    organ_flag_metrics = check_flag_metrics(organ_flag_metrics)
    if calibration is not None and tuple(calibration.organ_flag_metrics) != organ_flag_metrics:
        raise NndoseError(f"margins calibrated for organ flag metrics {', '.join(calibration.organ_flag_metrics)}, "
                          f"not {', '.join(organ_flag_metrics)}")
    return organ_flag_metrics


def compare_case(case: str, clinical_gy: np.ndarray, fold_predictions_gy: list[np.ndarray],
                 structures: dict[str, np.ndarray], kinds: dict[str, str], prescriptions_gy: dict[str, float],
                 voxel_mm3: float, tolerance: Tolerance = Tolerance(), calibration=None,
                 organ_flag_metrics=DEFAULT_ORGAN_FLAG_METRICS) -> CaseQA:
    """Plan QA of one case; all arrays on one grid, doses in Gy. Targets first, then organs at risk,
    each in the order of `structures`; body, unknown kinds and empty masks are skipped. `calibration`:
    the model's margins (a qa.calibration.Calibration, learnt for these organ flag metrics), None for the
    tolerance and interval alone."""
    organ_flag_metrics = _flag_metrics_of(calibration, organ_flag_metrics)
    _check(clinical_gy, fold_predictions_gy, structures, prescriptions_gy, voxel_mm3)
    reference_dose_gy = float(max(prescriptions_gy.values()))
    mean = ensemble_mean(fold_predictions_gy)
    clinical = np.asarray(clinical_gy)
    folds = [np.asarray(f) for f in fold_predictions_gy]
    out = []
    for kind in ("target", "oar"):
        for name, mask in structures.items():
            mask = np.asarray(mask, bool)
            if kinds.get(name) != kind or not mask.any():
                continue
            margins = None if calibration is None else calibration.margins_for(name, kind, reference_dose_gy)
            biases = None if calibration is None else calibration.biases_for(name, kind, reference_dose_gy)
            out.append(compare_structure(name, kind, clinical[mask], mean[mask], [f[mask] for f in folds],
                                         voxel_mm3, tolerance, reference_dose_gy, margins, organ_flag_metrics, biases))
    return CaseQA(case, reference_dose_gy, tolerance, tuple(out), len(folds),
                  None if calibration is None else calibration.summary(), organ_flag_metrics)


KEEP = object()   # with_tolerance: keep the case's margins


def with_tolerance(case_qa: CaseQA, tolerance: Tolerance, calibration=KEEP, organ_flag_metrics=None) -> CaseQA:
    """The case's QA at another tolerance (and, given `calibration`, with its margins; None: without), from
    the same clinical values, predictions and intervals. Organ flag metrics: a given calibration's, else
    `organ_flag_metrics` (default: the case's; other ones than the case's need a calibration or None)."""
    learnt = None if calibration is KEEP or calibration is None else calibration
    default = learnt.organ_flag_metrics if learnt else case_qa.organ_flag_metrics
    organ_flag_metrics = _flag_metrics_of(learnt, organ_flag_metrics or default)
    if calibration is KEEP and organ_flag_metrics != case_qa.organ_flag_metrics:
        raise NndoseError("other organ flag metrics need their own calibration (or None)")
    structures = []
    for s in case_qa.structures:
        specs = {m.name: m for m in METRICS[s.kind]}
        flags = flag_specs(s.kind, organ_flag_metrics)
        if calibration is KEEP:
            margins, biases = {m.name: m.margin for m in s.metrics}, {m.name: m.bias for m in s.metrics}
        elif calibration:
            margins = calibration.margins_for(s.name, s.kind, case_qa.reference_dose_gy) or {}
            biases = calibration.biases_for(s.name, s.kind, case_qa.reference_dose_gy)
        else:
            margins, biases = {}, {}
        structures.append(StructureQA(s.name, s.kind, tuple(
            compare_metric(specs[m.name], m.clinical, m.predicted, [m.lower, m.upper],
                           tolerance.for_unit(m.unit, case_qa.reference_dose_gy), margins.get(m.name),
                           specs[m.name] in flags, biases.get(m.name, 0.0))
            for m in s.metrics)))
    summary = case_qa.calibration if calibration is KEEP else (None if calibration is None else calibration.summary())
    return CaseQA(case_qa.case, case_qa.reference_dose_gy, tolerance, tuple(structures), case_qa.n_folds, summary,
                  organ_flag_metrics)


def rank_cases(case_qas: list[CaseQA]) -> list[CaseQA]:
    """Cases by sparing left (organ Dmean beyond what the flag rule lets pass, summed), largest first; then
    by the number of flagged organs, then of flagged targets, most first; then by name."""
    return sorted(case_qas, key=lambda c: (-c.sparing_left_gy, -c.n_flagged_organs, -len(c.flagged_targets), c.case))
