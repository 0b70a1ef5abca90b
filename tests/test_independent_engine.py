"""The independent-engine benchmark: pyRadPlan re-plans the phantoms (benchmarks/pyradplan_dose.py, run in
its own environment) and the beam-channel ablation runs on its dose (benchmarks/independent_engine.py).
The tests that need pyRadPlan run where NNDOSE_PYRADPLAN_PYTHON (or the benchmark's default environment)
gives a Python that has it, and skip otherwise."""
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.pyradplan_runner import DEFAULT_VENV, leave_out, refused_training_cases, replan_dataset
from benchmarks.pyradplan_dose import blend_for_rise, gantry_couch_angles
from nndose.datasets.phantom_anatomy import phantom_kinds
from nndose.datasets.phantom_dose_engine import STYLES
from nndose.datasets.phantoms import make_case
from nndose.errors import NndoseError
from nndose.geometry.beams import BeamDirection, beam_frame
from nndose.io.raw_dataset import DatasetInfo, write_case, write_dataset_json
from nndose.io.volumes import read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
DOSE_SCRIPT = REPO / "benchmarks" / "pyradplan_dose.py"


@functools.cache
def _pyradplan_python() -> str | None:
    for python in (os.environ.get("NNDOSE_PYRADPLAN_PYTHON"), str(DEFAULT_VENV / "bin" / "python")):
        if python and Path(python).is_file() and subprocess.run([python, "-c", "import pyRadPlan"],
                                                                  capture_output=True).returncode == 0:
            return python
    return None


def test_beam_angles_static_and_arcs_by_hand():
    plan = {"beams": [{"gantry_deg": 30.0, "couch_deg": 270.0}, {"gantry_deg": 0.0}],
            "arcs": [{"gantry_start_deg": 0.0, "gantry_stop_deg": 179.0, "direction": "CW"}]}
    gantry, couch = gantry_couch_angles(plan)
    # 179 degrees in ceil(179 / 20) = 9 sub-arcs of 19.89 degrees, at their midpoints
    assert gantry == [30.0, 0.0] + [round((k + 0.5) * 179.0 / 9, 1) for k in range(9)]
    assert couch == [270.0] + [0.0] * 10
    # a full CW arc from 181 to 179 and its CCW return pass the same 18 midpoints: one beam each
    both = {"arcs": [{"gantry_start_deg": 181.0, "gantry_stop_deg": 179.0, "direction": "CW"},
                     {"gantry_start_deg": 179.0, "gantry_stop_deg": 181.0, "direction": "CCW"}]}
    gantry, _ = gantry_couch_angles(both)
    assert len(gantry) == 18 and gantry[0] == round(181.0 + 358.0 / 36, 1) and len(set(gantry)) == 18


def test_dose_script_refuses_a_folder_that_is_not_a_case(tmp_path):
    run = subprocess.run([sys.executable, str(DOSE_SCRIPT), str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "not a raw case folder" in run.stderr


@pytest.mark.parametrize("options, message", [(["--degrade_percent", "5"], "--degraded_into and --candidates"),
                                              (["--candidates", "Rectum"], "come with --degrade_percent")])
def test_dose_script_refuses_half_a_degradation_before_any_work(options, message, tmp_path):
    case = tmp_path / "casesTr" / "c"
    case.mkdir(parents=True)
    (case / "plan.json").write_text("{}")
    (tmp_path / "dataset.json").write_text("{}")
    run = subprocess.run([sys.executable, str(DOSE_SCRIPT), *options, str(case)], capture_output=True, text=True)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and message in run.stderr
    assert sorted(p.name for p in case.iterdir()) == ["plan.json"]


def test_degradation_blend_by_hand():
    """Target at 60 Gy in the standard plan and 72 Gy in the unspared one (both before normalization to
    D95 = 60 Gy), organ at 10 and 30 Gy: the blend a has organ (10 + 20 a) / (1 + 0.2 a) after
    normalization; 13 Gy (+5 % of 60) at a = 3 / 17.4."""
    target = np.zeros(20, bool)
    target[:10] = True
    organ = ~target
    standard = np.where(target, 60.0, 10.0)
    unspared = np.where(target, 72.0, 30.0)
    a, dose, rise = blend_for_rise(standard, unspared, organ, {"PTV": target}, [(60.0, "PTV")], 3.0, Path("c"))
    assert a == pytest.approx(3 / 17.4, abs=1e-6) and rise == pytest.approx(3.0, abs=1e-5) and rise >= 3.0
    assert dose[target] == pytest.approx(60.0) and dose[organ].mean() == pytest.approx(13.0, abs=1e-5)


def test_benchmark_refuses_a_missing_pyradplan_python_before_any_work(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks.independent_engine", "-o", str(tmp_path / "r.json"),
                          "--work", str(tmp_path / "work"), "--pyradplan_python", str(tmp_path / "no_python")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("benchmarks.independent_engine: error: ")
    assert len(run.stderr.strip().splitlines()) == 1 and "no such Python for pyRadPlan" in run.stderr
    assert not list(tmp_path.iterdir())


def _phantom_dataset(folder: Path, index: int = 0) -> Path:
    """A raw dataset of one phantom (head-and-neck IMRT, the phantom engine's dose) under folder."""
    anatomy, plan, dose = make_case(index, 0, STYLES["standard"], site="head_neck", modalities=("IMRT",))
    write_case(folder / "casesTr" / "phantom_000", anatomy.grid, anatomy.ct, anatomy.structures, plan, dose)
    write_dataset_json(folder, DatasetInfo("One", phantom_kinds(), ".nii.gz", 1, "one phantom, analytic dose engine"))
    return folder


def test_a_failing_engine_is_one_line_and_leaves_no_dataset(nndose_env):
    src = _phantom_dataset(nndose_env["nndose_raw"] / "src")
    with pytest.raises(NndoseError, match=r"pyRadPlan failed on phantom_000\.\.phantom_000: .*pyRadPlan") as e:
        replan_dataset(src, 941, "PyRadPlan", Path(sys.executable), 1)   # this Python has no pyRadPlan
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in nndose_env["nndose_raw"].iterdir()) == ["src"]


@pytest.mark.slow
@pytest.mark.skipif(_pyradplan_python() is None, reason="no Python with pyRadPlan (NNDOSE_PYRADPLAN_PYTHON)")
def test_pyradplan_replans_a_phantom_normalized_inside_the_body(nndose_env):
    src = _phantom_dataset(nndose_env["nndose_raw"] / "src")
    before, _ = read_volume(src / "casesTr" / "phantom_000" / "dose.nii.gz")
    out, records = replan_dataset(src, 941, "PyRadPlan", Path(_pyradplan_python()), 1)
    case = out / "casesTr" / "phantom_000"
    plan = json.loads((case / "plan.json").read_text())
    dose, _ = read_volume(case / "dose.nii.gz")
    ptv, _ = read_volume(case / "structures" / "PTV_high.nii.gz")
    body, _ = read_volume(case / "structures" / "Body.nii.gz")
    rx = max(p["dose_gy"] for p in plan["prescriptions"])
    assert records[0]["case"] == "phantom_000" and records[0]["beams"] == len(plan["beams"])
    assert plan["machine"] == {"name": "pyradplan_generic_6MV", "sad_mm": 1000.0, "energy_mv": 6.0}
    assert np.percentile(dose[ptv > 0], 5) == pytest.approx(rx, rel=1e-3)     # D95 = Rx
    assert np.all(dose[body == 0] == 0) and np.isfinite(dose).all()
    assert np.percentile(dose[ptv > 0], 98) < 1.15 * rx and dose.max() < 1.3 * rx   # a plan, no hot spot
    assert np.abs(dose - before)[body > 0].mean() > 0.5                          # another engine's dose
    assert not (nndose_env["nndose_raw"] / "Dataset941_PyRadPlan.partial").exists()


SINGLE_BEAM = """
import json, sys, numpy as np, SimpleITK as sitk
from pyRadPlan import PhotonPlan, generate_stf, calc_dose_influence
from pyRadPlan.ct import create_ct
from pyRadPlan.cst import create_cst, Target, ExternalVOI
shape = (40, 40, 40)
z, y, x = np.indices(shape) - 19.5
ct_img = sitk.GetImageFromArray(np.where(x**2 + y**2 + z**2 < 18**2, 0.0, -1000.0).astype(np.float32))
ct_img.SetSpacing((5.0, 5.0, 5.0)); ct_img.SetOrigin((-97.5, -97.5, -97.5))
ct = create_ct(cube_hu=ct_img)
def voi(kind, name, mask):
    m = sitk.GetImageFromArray(mask.astype(np.uint8)); m.CopyInformation(ct_img)
    return kind(name=name, ct_image=ct, mask=m)
cst = create_cst([voi(Target, "PTV", x**2 + y**2 + z**2 < 4**2), voi(ExternalVOI, "Body", x**2 + y**2 + z**2 < 18**2)], ct=ct)
pts = np.stack([x, y, z], -1) * 5.0
out = []
for gantry, couch in json.loads(sys.argv[1]):
    pln = PhotonPlan(machine="Generic")
    pln.prop_stf = {"gantry_angles": [gantry], "couch_angles": [couch], "bixel_width": 5.0, "iso_center": [[0.0, 0.0, 0.0]]}
    stf = generate_stf(ct, cst, pln)
    dij = calc_dose_influence(ct, cst, stf, pln)
    d = sitk.GetArrayFromImage(dij.compute_result_ct_grid(np.ones(dij.total_num_of_bixels))["physical_dose"])
    out.append(((d[..., None] * pts).sum((0, 1, 2)) / d.sum()).tolist())
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(_pyradplan_python() is None, reason="no Python with pyRadPlan (NNDOSE_PYRADPLAN_PYTHON)")
def test_pyradplan_and_nndose_agree_on_where_a_beam_enters(tmp_path):
    """In a water sphere, a beam's dose-weighted centroid lies between the isocenter and its source (the
    build-up region nearer the source holds more dose than the exit): the two conventions must agree on
    the side for every gantry and couch angle, or the beam channel would be judged on beams it did not mean."""
    angles = [(0.0, 0.0), (90.0, 0.0), (200.0, 0.0), (90.0, 90.0), (30.0, 270.0)]
    script = tmp_path / "single_beam.py"
    script.write_text(SINGLE_BEAM)
    run = subprocess.run([_pyradplan_python(), str(script), json.dumps(angles)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    centroids = json.loads(run.stdout.strip().splitlines()[-1])
    for (gantry, couch), centroid in zip(angles, centroids):
        to_source = beam_frame(BeamDirection(gantry, couch), (0.0, 0.0, 0.0), 1000.0).source / 1000.0
        c = np.asarray(centroid)
        assert c @ to_source > 5.0 and np.linalg.norm(c - (c @ to_source) * to_source) < 0.3 * np.linalg.norm(c), (gantry, couch, c)


def test_training_cases_nndose_refuses_are_left_out_of_every_dataset(tmp_path):
    good = _phantom_dataset(tmp_path / "a")
    other = _phantom_dataset(tmp_path / "b")
    case = other / "casesTr" / "phantom_000"
    dose, grid = read_volume(case / "dose.nii.gz")
    write_volume(case / "dose.nii.gz", dose * 2.0, grid)   # a hot spot of 2 x Rx: nndose refuses the case
    assert refused_training_cases([good]) == []
    refused = refused_training_cases([good, other])
    assert refused == ["phantom_000"]
    leave_out([good, other], refused)
    for folder in (good, other):
        assert not (folder / "casesTr" / "phantom_000").exists()
        assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 0


@pytest.mark.slow
@pytest.mark.skipif(_pyradplan_python() is None, reason="no Python with pyRadPlan (NNDOSE_PYRADPLAN_PYTHON)")
def test_pyradplan_degrades_one_parotid_by_the_asked_amount(tmp_path):
    """--degrade_percent 5: one parotid's mean dose 5 % of Rx above the standard plan's, both plans at
    D95 = Rx, the other organs about where they were."""
    src = _phantom_dataset(tmp_path / "Dataset001_One")
    case = src / "casesTr" / "phantom_000"
    run = subprocess.run([_pyradplan_python(), str(DOSE_SCRIPT), "--degrade_percent", "5", "--degraded_into",
                          str(tmp_path / "worse"), "--candidates", "Parotid_L,Parotid_R,Rectum", str(case)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-500:]
    record = json.loads(run.stdout.strip().splitlines()[-1])["degraded"]
    rx = max(p["dose_gy"] for p in json.loads((case / "plan.json").read_text())["prescriptions"])
    standard, _ = read_volume(case / "dose.nii.gz")
    worse, _ = read_volume(tmp_path / "worse" / "phantom_000" / "dose.nii.gz")
    masks = {p.name.removesuffix(".nii.gz"): read_volume(p)[0] > 0 for p in (case / "structures").glob("*.nii.gz")}
    assert record["organ"] in ("Parotid_L", "Parotid_R") and 0 < record["unspared_fraction"] < 1
    machine = json.loads((tmp_path / "worse" / "phantom_000" / "plan.json").read_text())["machine"]
    assert machine == json.loads((case / "plan.json").read_text())["machine"] == {
        "name": "pyradplan_generic_6MV", "sad_mm": 1000.0, "energy_mv": 6.0}
    organ = masks[record["organ"]]
    assert worse[organ].mean() - standard[organ].mean() == pytest.approx(0.05 * rx, abs=0.02)
    for dose in (standard, worse):
        assert np.percentile(dose[masks["PTV_high"]], 5) == pytest.approx(rx, rel=1e-3)
    others = [n for n in masks if n not in (record["organ"], "PTV_high", "PTV_low", "Body")]
    assert max(abs(worse[masks[n]].mean() - standard[masks[n]].mean()) for n in others) < 0.05 * rx
