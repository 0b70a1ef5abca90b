"""The demo's last step: plan QA of its held-out phantoms, one of them re-planned without sparing one
organ at all (the phantom engine's weight of that organ set to zero; its mean dose rises by at least
a fifth of the prescription), so the report has something to find. The demo trains one model on every training
phantom (no folds to validate), so plan QA learns the model's error on CALIBRATION_PLANS further
phantoms planned in the same style, which neither training nor the checked plans include."""
from __future__ import annotations

import shutil
from pathlib import Path

from nndose.datasets.degraded_plans import DegradedPlan
from nndose.datasets.phantom_dose_engine import STYLES
from nndose.datasets.phantoms import make_case, make_case_with_worse
from nndose.inference.predictor import DosePredictor
from nndose.io.layout import DOSE_FILE, NIFTI, QA_INDEX, TEST_DIR
from nndose.io.raw_dataset import list_cases, write_case
from nndose.io.volumes import write_volume
from nndose.qa.compare import flag_metrics_in_words
from nndose.qa.run import plan_qa

MIN_INCREASE_PERCENT_OF_RX = 20.0
CALIBRATION_PLANS = 16


def calibration_plans(first_index: int, seed: int, out: Path) -> list[Path]:
    """CALIBRATION_PLANS phantoms after the dataset's (indices first_index...), planned in the standard style."""
    for index in range(first_index, first_index + CALIBRATION_PLANS):
        anatomy, plan, dose = make_case(index, seed, STYLES["standard"])
        write_case(out / f"phantom_{index:03d}", anatomy.grid, anatomy.ct, anatomy.structures, plan, dose)
    return list_cases(out.parent, out.name)


def clinical_plans(raw: Path, seed: int, out: Path) -> tuple[str, DegradedPlan] | None:
    """The held-out cases copied to `out` as the clinic's plans, one re-planned worse for one organ."""
    cases = list_cases(raw, TEST_DIR)
    for case in cases:
        shutil.copytree(case, out / case.name)
    for case in cases:
        index = int(case.name.rsplit("_", 1)[1])
        anatomy, _, _, worse = make_case_with_worse(index, seed, STYLES["standard"], MIN_INCREASE_PERCENT_OF_RX, steps=0)
        if worse is not None:
            write_volume(out / case.name / f"{DOSE_FILE}{NIFTI}", worse.dose_gy, anatomy.grid)
            return case.name, worse
    return None


def _targets(qa) -> str:
    """', and its targets X, Y' where any are flagged."""
    return f", and its target{'s' * (len(qa.flagged_targets) > 1)} {', '.join(qa.flagged_targets)}" if qa.flagged_targets else ""


def qa_step(raw: Path, seed: int, n_phantoms: int, predictor: DosePredictor, work: Path) -> list[str]:
    """Run plan QA on the held-out plans (phantoms 0..n_phantoms-1 the dataset's); the lines the demo prints."""
    plans = work / "clinical_plans"
    chosen = clinical_plans(raw, seed, plans)
    report = work / "plan_qa"
    qas = {q.case: q for q in plan_qa(list_cases(plans.parent, plans.name), report, predictor, progress=False,
                                      calibration_dirs=calibration_plans(n_phantoms, seed, work / "calibration_plans"))}
    first = next(iter(qas.values()))
    lines = [f"margins learnt on {CALIBRATION_PLANS} further phantoms the model never saw, "
             f"for at most {100 * first.calibration['false_alarm']:g} % of organs of well-made plans flagged; "
             f"flagged: {flag_metrics_in_words(first.organ_flag_metrics)}"]
    if chosen is not None:
        name, worse = chosen
        found = qas[name].flagged_organs
        lines.append(f"{name} was re-planned without sparing {worse.organ} (its mean dose {worse.increase_gy:+.1f} Gy); "
                     f"plan QA flagged {', '.join(found) if found else 'no organ'} in it"
                     + ("" if worse.organ in found else f" (missed {worse.organ})") + _targets(qas[name]))
    others = [f"{q.case}: {', '.join(q.flagged_organs + tuple(t + ' (target)' for t in q.flagged_targets))}"
              for q in qas.values() if (q.flagged_organs or q.flagged_targets) and (chosen is None or q.case != chosen[0])]
    lines.append(f"flagged in the other plans: {'; '.join(others) if others else 'nothing'}")
    if any(q.flagged_targets for q in qas.values()) and "target" not in first.calibration["kinds"]:
        lines.append(f"(targets: too few among the {CALIBRATION_PLANS} calibration plans for margins, "
                     f"so flagged on the tolerance alone: the model's own error on them is not allowed for)")
    lines.append(f"plan QA report: {report / QA_INDEX}")
    return lines
