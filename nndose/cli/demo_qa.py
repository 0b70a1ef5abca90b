"""The demo's last step: plan QA of its held-out phantoms, one of them re-planned without sparing one
organ (the phantom engine's weight of that organ lowered until its mean dose rises by a tenth of the
prescription), so the report has something to find."""
from __future__ import annotations

import shutil
from pathlib import Path

from nndose.datasets.degraded_plans import DegradedPlan, degrade
from nndose.datasets.phantom_dose_engine import STYLES
from nndose.datasets.phantoms import make_case
from nndose.inference.predictor import DosePredictor
from nndose.io.layout import DOSE_FILE, NIFTI, QA_INDEX, TEST_DIR
from nndose.io.raw_dataset import list_cases
from nndose.io.volumes import write_volume
from nndose.qa.run import plan_qa

INCREASE_PERCENT_OF_RX = 10.0


def clinical_plans(raw: Path, seed: int, out: Path) -> tuple[str, DegradedPlan] | None:
    """The held-out cases copied to `out` as the clinic's plans, one re-planned worse for one organ."""
    cases = list_cases(raw, TEST_DIR)
    for case in cases:
        shutil.copytree(case, out / case.name)
    for case in cases:
        index = int(case.name.rsplit("_", 1)[1])
        anatomy, plan, dose = make_case(index, seed, STYLES["standard"])
        if plan.modality == "3D-CRT":   # open fields: no organ is spared in the first place
            continue
        worse = degrade(anatomy, plan, dose, INCREASE_PERCENT_OF_RX / 100 * plan.reference_dose_gy, seed=index, steps=4)
        if worse is not None:
            write_volume(out / case.name / f"{DOSE_FILE}{NIFTI}", worse.dose_gy, anatomy.grid)
            return case.name, worse
    return None


def qa_step(raw: Path, seed: int, predictor: DosePredictor, work: Path) -> list[str]:
    """Run plan QA on the held-out plans; the lines the demo prints."""
    plans = work / "clinical_plans"
    chosen = clinical_plans(raw, seed, plans)
    report = work / "plan_qa"
    qas = {q.case: q for q in plan_qa(list_cases(plans.parent, plans.name), report, predictor, progress=False)}
    lines = []
    if chosen is not None:
        name, worse = chosen
        found = qas[name].flagged_organs
        lines.append(f"{name} was re-planned without sparing {worse.organ} (its mean dose {worse.increase_gy:+.1f} Gy); "
                     f"plan QA flagged {', '.join(found) if found else 'nothing'} in it"
                     + ("" if worse.organ in found else f" (missed {worse.organ})"))
    others = [f"{q.case}: {', '.join(q.flagged_organs)}" for q in qas.values()
              if q.flagged_organs and (chosen is None or q.case != chosen[0])]
    lines.append(f"flagged in the other plans: {'; '.join(others) if others else 'nothing'}")
    lines.append(f"plan QA report: {report / QA_INDEX}")
    return lines
