"""OpenKBP conversion and export: exact round trips, orientation, metadata, bad input."""
import json

import numpy as np
import pytest

from nndose.cli.convert_openkbp import main as convert_main
from nndose.cli.export_openkbp import main as export_main
from nndose.datasets.openkbp import (GANTRY_ANGLES, SHAPE, dense_from_sparse, lps_to_openkbp, openkbp_to_lps,
                                     read_sparse_csv)
from nndose.io.volumes import read_volume
from nndose.verification import verify_dataset
from tests.conftest import OPENKBP_ARCHIVES, run_command, run_ok, tree
from tests.openkbp_helpers import extract_real_patients, synthetic_patient


def test_axis_mapping_is_a_permutation_and_physically_oriented():
    a = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    assert np.array_equal(lps_to_openkbp(openkbp_to_lps(a)), a)
    marker = np.zeros(SHAPE)
    marker[10, 20, 30] = 1  # anterior, right, superior part of the OpenKBP grid
    z, y, x = np.argwhere(openkbp_to_lps(marker))[0]
    assert (x, y, z) == (20, 10, 127 - 30)  # x runs to the left, y posterior, z superior


def _compare_case(case_dir, patient_dir):
    for csv in sorted(patient_dir.glob("*.csv")):
        if csv.name in ("voxel_dimensions.csv", "ct.csv"):
            continue
        name = {"possible_dose_mask": "Body", "dose": "dose"}.get(csv.stem, csv.stem)
        nii = case_dir / ("dose.nii.gz" if name == "dose" else f"structures/{name}.nii.gz")
        idx, values = read_sparse_csv(csv, name == "dose")
        if idx.size == 0:
            continue
        reference = dense_from_sparse(idx, values, np.float32)
        back, grid = read_volume(nii)
        assert np.array_equal(lps_to_openkbp(back), reference), csv.name
    return grid


def test_convert_synthetic_round_trip_and_metadata(tmp_path, nndose_env, capsys):
    vols = synthetic_patient(tmp_path / "in" / "pt_7")
    code, out, err = run_command(convert_main, ["-i", str(tmp_path / "in"), "-d", "3", "-np", "1"], capsys)
    assert code == 0, err
    ds = nndose_env["nndose_raw"] / "Dataset003_OpenKBP"
    grid = _compare_case(ds / "casesTr/pt_7", tmp_path / "in/pt_7")
    assert grid.spacing_xyz == pytest.approx((3.906, 3.906, 2.5))
    ct, _ = read_volume(ds / "casesTr/pt_7/ct.nii.gz")
    assert np.array_equal(lps_to_openkbp(ct), vols["ct"] - 1024.0)
    plan = json.loads((ds / "casesTr/pt_7/plan.json").read_text())
    assert [b["gantry_deg"] for b in plan["beams"]] == list(GANTRY_ANGLES)
    assert {p["structure"]: p["dose_gy"] for p in plan["prescriptions"]} == {"PTV70": 70.0, "PTV56": 56.0}
    assert all(p["fractions"] == 35 for p in plan["prescriptions"])
    assert (plan["site"], plan["modality"], plan["machine"]["energy_mv"]) == ("head_neck", "IMRT", 6.0)
    # isocenter = centroid of the targets, in LPS mm
    targets = openkbp_to_lps(vols["PTV70"] | vols["PTV56"])
    assert np.allclose(plan["isocenter_mm"], grid.index_to_physical(np.argwhere(targets).mean(0)), atol=1e-3)
    assert verify_dataset(ds, progress=False) == []


def test_export_writes_submission_csv_equal_to_prediction(tmp_path, nndose_env, capsys):
    synthetic_patient(tmp_path / "in" / "pt_7")
    run_ok(convert_main, ["-i", str(tmp_path / "in"), "-d", "3", "-np", "1"], capsys)
    pred = tmp_path / "pred"
    pred.mkdir()
    ds = nndose_env["nndose_raw"] / "Dataset003_OpenKBP"
    (pred / "pt_7.nii.gz").write_bytes((ds / "casesTr/pt_7/dose.nii.gz").read_bytes())
    code, _, err = run_command(export_main, ["-i", str(pred), "-o", str(tmp_path / "out")], capsys)
    assert code == 0, err
    idx, values = read_sparse_csv(tmp_path / "out/pt_7.csv", True)
    ridx, rvalues = read_sparse_csv(tmp_path / "in/pt_7/dose.csv", True)
    assert np.array_equal(idx, ridx) and np.array_equal(values, rvalues)
    assert (tmp_path / "out/pt_7.csv").read_text().startswith(",data\n")


def test_test_split_keeps_dose_and_adds_to_existing_dataset(tmp_path, nndose_env, capsys):
    synthetic_patient(tmp_path / "tr" / "pt_1")
    synthetic_patient(tmp_path / "ts" / "pt_2", seed=1)
    run_ok(convert_main, ["-i", str(tmp_path / "tr"), "-d", "3", "-np", "1"], capsys)
    code, _, err = run_command(convert_main, ["-i", str(tmp_path / "ts"), "-d", "3", "--test", "-np", "1"], capsys)
    assert code == 0, err
    ds = nndose_env["nndose_raw"] / "Dataset003_OpenKBP"
    assert (ds / "casesTs/pt_2/dose.nii.gz").is_file()
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 1


@pytest.mark.parametrize("fault,needle", [
    (lambda p: (p / "ct.csv").unlink(), "pt_7: missing ct.csv"),
    (lambda p: (p / "dose.csv").write_text(",data\n5,abc\n"), "dose.csv: not an OpenKBP sparse CSV"),
    (lambda p: (p / "dose.csv").write_text(",data\n5,nan\n"), "dose.csv: holds NaN"),
    (lambda p: (p / "voxel_dimensions.csv").write_text("3.9\n"), "voxel_dimensions.csv: expected three"),
    (lambda p: (p / "PTV70.csv").write_text(",data\n99999999,\n"), "outside the 128^3 grid"),
])
def test_bad_openkbp_input_writes_nothing(tmp_path, nndose_env, capsys, fault, needle):
    synthetic_patient(tmp_path / "in" / "pt_7")
    fault(tmp_path / "in" / "pt_7")
    code, _, err = run_command(convert_main, ["-i", str(tmp_path / "in"), "-d", "3", "-np", "1"], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert tree(nndose_env["nndose_raw"]) == set()


def test_export_refuses_a_prediction_off_the_openkbp_grid(tmp_path, template_dataset, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "case_000.nii.gz").write_bytes((template_dataset / "casesTr/case_000/dose.nii.gz").read_bytes())
    code, _, err = run_command(export_main, ["-i", str(pred), "-o", str(tmp_path / "out")], capsys)
    assert code == 2 and "not on the OpenKBP 128^3 grid" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (OPENKBP_ARCHIVES / "openkbp-validation.tar.xz").is_file(), reason="OpenKBP data not present")
def test_real_openkbp_patients_round_trip_voxel_by_voxel(tmp_path, nndose_env, capsys):
    patients = extract_real_patients(tmp_path / "in", 2)
    code, _, err = run_command(convert_main, ["-i", str(tmp_path / "in"), "-d", "4", "-np", "2"], capsys)
    assert code == 0, err
    ds = nndose_env["nndose_raw"] / "Dataset004_OpenKBP"
    for p in patients:
        _compare_case(ds / "casesTr" / p.name, p)
        # orientation: the mandible lies anterior of the spinal cord, the brainstem superior of it
        mandible, grid = read_volume(ds / "casesTr" / p.name / "structures/Mandible.nii.gz")
        cord, _ = read_volume(ds / "casesTr" / p.name / "structures/SpinalCord.nii.gz")
        m = grid.index_to_physical(np.argwhere(mandible).mean(0))
        c = grid.index_to_physical(np.argwhere(cord).mean(0))
        assert m[1] < c[1] and m[2] > c[2]
    assert verify_dataset(ds, progress=False) == []
    pred = tmp_path / "pred"
    pred.mkdir()
    for p in patients:
        (pred / f"{p.name}.nii.gz").write_bytes((ds / "casesTr" / p.name / "dose.nii.gz").read_bytes())
    run_ok(export_main, ["-i", str(pred), "-o", str(tmp_path / "out")], capsys)
    for p in patients:
        a = read_sparse_csv(tmp_path / "out" / f"{p.name}.csv", True)
        b = read_sparse_csv(p / "dose.csv", True)
        nz = b[1] != 0
        assert np.array_equal(a[0], b[0][nz]) and np.array_equal(a[1], b[1][nz])


def _challenge_scores(ref_dir, pred_csv_dir, patients):
    """The OpenKBP challenge's computation, from the CSV files in float64 (written from its published
    formulas: dose error over all voxels / body voxels; D_0.1cc and mean for organs, D99/D95/D1 for
    targets; DVH score = mean over every (patient, structure, metric) entry)."""
    dose_errors, dvh_errors = [], []
    for p in patients:
        ref = dense_from_sparse(*read_sparse_csv(ref_dir / p / "dose.csv", True, np.float64), np.float64)
        pred = dense_from_sparse(*read_sparse_csv(pred_csv_dir / f"{p}.csv", True, np.float64), np.float64)
        body = dense_from_sparse(read_sparse_csv(ref_dir / p / "possible_dose_mask.csv", False)[0], None, np.float64)
        dose_errors.append(np.sum(np.abs(ref - pred)) / np.sum(body))
        voxel = np.prod(np.loadtxt(ref_dir / p / "voxel_dimensions.csv"))
        n = np.maximum(1, np.round(100 / voxel))
        for roi in ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible",
                    "PTV56", "PTV63", "PTV70"):
            f = ref_dir / p / f"{roi}.csv"
            if not f.is_file():
                continue
            mask = dense_from_sparse(read_sparse_csv(f, False)[0], None, np.uint8).astype(bool)
            r, q = ref[mask], pred[mask]
            if roi.startswith("PTV"):
                for pct in (1, 5, 99):
                    dvh_errors.append(abs(np.percentile(r, pct) - np.percentile(q, pct)))
            else:
                frac = 100 - n / r.size * 100
                dvh_errors.append(abs(np.percentile(r, frac) - np.percentile(q, frac)))
                dvh_errors.append(abs(r.mean() - q.mean()))
    return float(np.mean(dose_errors)), float(np.mean(dvh_errors))


def test_nndose_evaluate_agrees_with_the_challenge_computation(tmp_path, nndose_env, capsys):
    from nndose.cli.evaluate import main as evaluate_main
    from nndose.io.volumes import write_volume
    for i, p in enumerate(("pt_3", "pt_9")):
        synthetic_patient(tmp_path / "in" / p, seed=i)
    assert run_command(convert_main, ["-i", str(tmp_path / "in"), "-d", "3", "--test", "-np", "1"], capsys)[0] == 0
    ds = nndose_env["nndose_raw"] / "Dataset003_OpenKBP"
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(5)
    for p in ("pt_3", "pt_9"):
        dose, grid = read_volume(ds / "casesTs" / p / "dose.nii.gz")
        body, _ = read_volume(ds / "casesTs" / p / "structures/Body.nii.gz")
        noisy = np.clip(dose + rng.normal(0, 3, dose.shape), 0, None) * (body > 0)
        noisy[0, 0, 0] = 1.5  # a voxel outside the body still counts in the challenge's numerator
        write_volume(pred / f"{p}.nii.gz", noisy.astype(np.float32), grid)
    assert run_command(export_main, ["-i", str(pred), "-o", str(tmp_path / "csv")], capsys)[0] == 0
    code, _, err = run_command(evaluate_main, ["-ref", str(ds / "casesTs"), "-pred", str(pred)], capsys)
    assert code == 0, err
    agg = json.loads((pred / "summary.json").read_text())["aggregate"]
    dose_score, dvh_score = _challenge_scores(tmp_path / "in", tmp_path / "csv", ["pt_3", "pt_9"])
    assert abs(agg["dose_score"] - dose_score) < 1e-6
    assert abs(agg["dvh_score"] - dvh_score) < 1e-6
