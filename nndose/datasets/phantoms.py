"""The built-in phantom dataset: four sites, many prescriptions and beam arrangements, no download.

`generate_phantom_dataset` writes a raw dataset (casesTr + casesTs, each with CT, planned dose,
structures and plan.json); the dose comes from `phantom_dose_engine`. Deterministic for a seed.
"""
from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import numpy as np

from nndose.datasets.degraded_plans import check_increase_percent, degrade
from nndose.datasets.phantom_anatomy import SITES, make_anatomy, phantom_kinds
from nndose.datasets.phantom_dose_engine import STYLES, PlanningStyle, compute_dose
from nndose.errors import NndoseError
from nndose.io.atomic import staged_directory
from nndose.io.layout import DEGRADED_PLANS_FILE, NIFTI, TEST_DIR, TRAIN_DIR
from nndose.io.plan_file import Arc, Machine, Prescription, StaticBeam, TreatmentPlan
from nndose.io.raw_dataset import DatasetInfo, write_case, write_dataset_json
from nndose.parallel import map_with_progress

MACHINES = (Machine("generic_6MV", 1000.0, 6.0), Machine("generic_10MV", 1000.0, 10.0),
            Machine("compact_6MV", 800.0, 6.0))

# Per site: (probability, [(structure, dose_gy, fractions), ...]); SIB schemes list two targets.
_PRESCRIPTIONS = {
    "head_neck": [(0.45, [("PTV_high", 70.0, 35), ("PTV_low", 56.0, 35)]),
                  (0.2, [("PTV_high", 66.0, 30), ("PTV_low", 54.0, 30)]),
                  (0.2, [("PTV_high", 60.0, 30)]), (0.15, [("PTV_high", 20.0, 5)])],
    "prostate": [(0.3, [("PTV_high", 78.0, 39)]), (0.25, [("PTV_high", 80.0, 40), ("PTV_low", 60.0, 40)]),
                 (0.25, [("PTV_high", 60.0, 20)]), (0.2, [("PTV_high", 36.25, 5)])],
    "lung": [(0.35, [("PTV_high", 60.0, 30)]), (0.25, [("PTV_high", 60.0, 25), ("PTV_low", 50.0, 25)]),
             (0.25, [("PTV_high", 50.0, 5)]), (0.15, [("PTV_high", 8.0, 1)])],
    "liver": [(0.4, [("PTV_high", 45.0, 15)]), (0.25, [("PTV_high", 50.0, 5)]),
              (0.2, [("PTV_high", 54.0, 18), ("PTV_low", 45.0, 18)]), (0.15, [("PTV_high", 2.0, 1)])],
}
MODALITIES = ("IMRT", "VMAT", "3D-CRT")
_MODALITY_P = {"head_neck": (0.5, 0.4, 0.1), "prostate": (0.4, 0.35, 0.25), "lung": (0.35, 0.35, 0.3),
               "liver": (0.35, 0.35, 0.3)}  # in the order of MODALITIES


def _choose(rng, options):
    p = np.array([o[0] for o in options])
    return options[rng.choice(len(options), p=p / p.sum())][1]


def _beams(site: str, modality: str, rng: np.random.Generator, side: float):
    if modality == "VMAT":
        if site == "lung" and rng.uniform() < 0.5:  # partial arc on the tumour's side
            start = 181.0 if side < 0 else 0.0
            arcs = [Arc(start, (start + 179.0) % 360.0, "CW")]
        else:
            arcs = [Arc(181.0, 179.0, "CW")]
        if rng.uniform() < 0.5:
            arcs.append(Arc(179.0, 181.0, "CCW", collimator_deg=float(rng.choice([30.0, 330.0]))))
        return [], arcs
    if modality == "3D-CRT":
        fields = {"head_neck": [90.0, 270.0], "prostate": [0.0, 90.0, 180.0, 270.0],
                  "lung": [0.0, 180.0, 150.0 if side < 0 else 210.0],
                  "liver": [0.0, 180.0, 270.0]}[site]
        return [StaticBeam(g) for g in fields], []
    n = int(rng.choice([5, 7, 9]))
    start = float(rng.uniform(0, 360.0 / n))
    beams = [StaticBeam(round((start + k * 360.0 / n) % 360.0, 1)) for k in range(n)]
    if site == "head_neck" and rng.uniform() < 0.3:  # a non-coplanar vertex-ish beam
        beams.append(StaticBeam(30.0, couch_deg=270.0))
    return beams, []


def _modality_probabilities(site: str, modalities: tuple[str, ...]) -> np.ndarray:
    p = np.array([q if m in modalities else 0.0 for q, m in zip(_MODALITY_P[site], MODALITIES)])
    return p / p.sum()


def make_case(index: int, seed: int, style: PlanningStyle, site: str | None = None,
              sites: tuple[str, ...] = SITES, modalities: tuple[str, ...] = MODALITIES):
    """(anatomy, plan, dose) of phantom `index`; `sites` cycle so every one is represented, the
    modality is drawn from `modalities` (the site's usual mix, renormalised)."""
    rng = np.random.default_rng([seed, index])
    site = site or sites[index % len(sites)]
    scheme = _choose(rng, _PRESCRIPTIONS[site])
    anatomy = make_anatomy(site, rng, sib=len(scheme) > 1)
    rx = [Prescription(s, d, f) for s, d, f in scheme if s in anatomy.structures]
    tmask = np.zeros(anatomy.grid.shape_zyx, bool)
    for p in rx:
        tmask |= anatomy.structures[p.structure]
    iso = anatomy.grid.index_to_physical(np.argwhere(tmask).mean(0))
    modality = MODALITIES[rng.choice(3, p=_modality_probabilities(site, modalities))]
    beams, arcs = _beams(site, modality, rng, float(np.sign(anatomy.target_center[0])))
    machine = MACHINES[rng.choice(len(MACHINES), p=[0.6, 0.25, 0.15])]
    plan = TreatmentPlan(site, modality, machine, tuple(rx), tuple(round(float(c), 2) for c in iso),
                         tuple(beams), tuple(arcs))
    dose = compute_dose(anatomy.ct, anatomy.grid, anatomy.structures, phantom_kinds(), plan, style, seed=index)
    return anatomy, plan, dose


def make_case_with_worse(index: int, seed: int, style: PlanningStyle, worse_percent: float | None, steps: int = 8,
                         sites: tuple[str, ...] = SITES, modalities: tuple[str, ...] = MODALITIES):
    """make_case's (anatomy, plan, dose) and the same plan made worse for one organ, its mean dose
    `worse_percent` % of the prescription higher (a degraded_plans.DegradedPlan; None where no organ can
    be made that much worse, or worse_percent None)."""
    anatomy, plan, dose = make_case(index, seed, style, sites=sites, modalities=modalities)
    worse = None if worse_percent is None else degrade(anatomy, plan, dose, worse_percent / 100 * plan.reference_dose_gy,
                                                       seed=index, steps=steps, style=style)   # make_case plans with seed=index
    return anatomy, plan, dose, worse


def phantom_dataset_info(name: str, num_training: int, style: PlanningStyle, sites: tuple[str, ...] = SITES,
                         modalities: tuple[str, ...] = MODALITIES) -> DatasetInfo:
    return DatasetInfo(name, phantom_kinds(), NIFTI, num_training,
                       f"nndose built-in phantoms: {', '.join(sites)}; {', '.join(modalities)}; "
                       f"analytic dose engine, planning style '{style.name}'",
                       {"licence": "Apache-2.0", "source": "nndose_generate_phantoms"})


def _write_case(args, folder: Path, seed: int, style: PlanningStyle, sites: tuple[str, ...],
                modalities: tuple[str, ...], degrade_percent: float | None) -> tuple[str, dict | None]:
    """Write one phantom; a test case with `degrade_percent` is planned worse for one organ (None: none
    could be made that much worse). Returns (name, what was made worse or None)."""
    index, split, name = args
    anatomy, plan, dose, worse = make_case_with_worse(index, seed, style, degrade_percent if split == TEST_DIR else None,
                                                      sites=sites, modalities=modalities)
    write_case(folder / split / name, anatomy.grid, anatomy.ct, anatomy.structures, plan,
               dose if worse is None else worse.dose_gy)
    return name, None if worse is None else worse.record(plan.reference_dose_gy)


def generate_phantom_dataset(dataset_dir: Path, num_cases: int = 40, seed: int = 0, test_fraction: float = 0.2,
                             style: str = "standard", num_processes: int = 2, progress: bool = True,
                             sites: tuple[str, ...] = SITES, modalities: tuple[str, ...] = MODALITIES,
                             degrade_percent: float | None = None) -> DatasetInfo:
    """Write a complete raw dataset into dataset_dir (which must not exist); atomic. `sites` and
    `modalities` restrict the mix (e.g. prostate VMAT only). With `degrade_percent`, each test case
    (casesTs) is planned worse for one organ, its mean dose that % of the prescription higher
    (degraded_plans.degrade; a case where no organ can be made that much worse stays as planned), and
    DEGRADED_PLANS_FILE says which: the truth a plan-QA check must find."""
    planning = STYLES[style]
    sites, modalities = tuple(sites), tuple(modalities)
    for given, known, what in ((sites, SITES, "site"), (modalities, MODALITIES, "modality")):
        unknown = sorted(set(given) - set(known))
        if unknown or not given:
            raise NndoseError(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(known)}")
    if degrade_percent is not None:
        check_increase_percent(degrade_percent)
    n_test = int(math.floor(num_cases * test_fraction))
    if degrade_percent is not None and n_test == 0:
        raise NndoseError("degraded plans are test cases: give a test fraction that leaves some (-n and --test_fraction)")
    jobs = [(i, TEST_DIR if i >= num_cases - n_test else TRAIN_DIR, f"phantom_{i:03d}") for i in range(num_cases)]
    info = phantom_dataset_info(dataset_dir.name.split("_", 1)[-1], num_cases - n_test, planning, sites, modalities)
    with staged_directory(dataset_dir) as stage:
        write = partial(_write_case, folder=stage, seed=seed, style=planning, sites=sites, modalities=modalities,
                        degrade_percent=degrade_percent)
        written = map_with_progress(write, jobs, num_processes, "phantoms", progress)
        write_dataset_json(stage, info)
        if degrade_percent is not None:
            truth = {"degradation_percent_of_rx": degrade_percent,
                     "degraded": {name: record for name, record in written if record is not None},
                     "as_planned": [name for (_, split, name), (_, record) in zip(jobs, written)
                                    if split == TEST_DIR and record is None]}
            (stage / DEGRADED_PLANS_FILE).write_text(json.dumps(truth, indent=1) + "\n")
    return info
