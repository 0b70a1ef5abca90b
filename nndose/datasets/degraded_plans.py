"""Phantom plans made deliberately worse for one organ: the optimizer's weight of that organ lowered
until its mean dose rises by a chosen amount, everything else as in the plan's style. The truth a
plan-QA check must find (benchmarks/plan_qa.py, the demo)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nndose.datasets.phantom_anatomy import Anatomy, phantom_kinds
from nndose.datasets.phantom_dose_engine import STYLES, PlanningStyle, compute_dose, degraded
from nndose.errors import NndoseError
from nndose.io.plan_file import TreatmentPlan

# organs whose sparing the optimizer trades against target coverage, per site
CANDIDATES = {"prostate": ("Rectum", "Bladder"), "head_neck": ("Parotid_L", "Parotid_R"),
              "lung": ("Heart", "SpinalCord"), "liver": ("Stomach", "Kidney_R")}


@dataclass(frozen=True)
class DegradedPlan:
    organ: str
    weight: float          # the organ's optimizer weight (the standard style's is 0.35)
    dose_gy: np.ndarray
    increase_gy: float     # the organ's mean dose over the plan's own

    def record(self, reference_dose_gy: float) -> dict:
        """What was made worse, for a truth file (the dose left out)."""
        return {"organ": self.organ, "weight": self.weight, "increase_gy": self.increase_gy,
                "increase_percent_of_rx": 100 * self.increase_gy / reference_dose_gy}


def check_increase_percent(percent: float) -> None:
    """Refuse a degradation (the organ's mean-dose rise, % of the prescription) outside (0, 100]."""
    if not 0 < percent <= 100:
        raise NndoseError(f"degradation {percent} % of the prescription must lie in (0, 100]")


def _dmean(dose: np.ndarray, mask: np.ndarray) -> float:
    return float(dose[mask].mean())


def degrade(anatomy: Anatomy, plan: TreatmentPlan, dose_gy: np.ndarray, increase_gy: float, seed: int,
            steps: int = 8, style: PlanningStyle = STYLES["standard"]) -> DegradedPlan | None:
    """The candidate organ whose mean dose can rise by at least increase_gy (the one that rises most
    when unspared), its weight bisected so the rise lands just above increase_gy; None when no organ
    of the plan can be made that much worse (organs in the target, an unmodulated plan). `seed` must be
    the one the plan `dose_gy` was computed with (make_case: its index), `style` its planning style."""
    def plan_with(organ: str, weight: float) -> np.ndarray:
        return compute_dose(anatomy.ct, anatomy.grid, anatomy.structures, phantom_kinds(), plan,
                            degraded(style, organ, weight), seed=seed)
    if plan.modality == "3D-CRT":
        return None   # open fields, fitted to the targets alone: no organ weight changes the plan
    best = None
    for organ in CANDIDATES.get(plan.site, ()):
        if organ not in anatomy.structures:
            continue
        mask = anatomy.structures[organ]
        unspared = plan_with(organ, 0.0)
        rise = _dmean(unspared, mask) - _dmean(dose_gy, mask)
        if rise >= increase_gy and (best is None or rise > best.increase_gy):
            best = DegradedPlan(organ, 0.0, unspared, rise)
    if best is None:
        return None
    mask = anatomy.structures[best.organ]
    low, high = 0.0, style.organ_weight(best.organ)      # rise(low) >= increase_gy > rise(high) = 0
    for _ in range(steps):
        mid = 0.5 * (low + high)
        trial = plan_with(best.organ, mid)
        rise = _dmean(trial, mask) - _dmean(dose_gy, mask)
        if rise >= increase_gy:
            low, best = mid, DegradedPlan(best.organ, mid, trial, rise)
        else:
            high = mid
    return best
