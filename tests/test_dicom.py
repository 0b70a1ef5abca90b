"""DICOM RT in (nndose_convert_dicom) and out (nndose_export_dicom) on a synthetic patient."""
import json

import numpy as np
import pydicom
import pytest

from nndose.cli.convert_dicom import main as convert_main
from nndose.cli.export_dicom import main as export_main
from nndose.cli.verify_dataset import main as verify_main
from nndose.dicom.ct_series import read_ct_series
from nndose.dicom.rtdose import resample_dose
from nndose.dicom.scan import scan_folder
from nndose.io.plan_file import load_plan
from nndose.io.volumes import Grid, read_volume, write_volume
from nndose.dicom import synthetic as dh
from tests.conftest import plan_quietly, run_command, tree


@pytest.fixture
def dicom_map(tmp_path):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(dh.STRUCTURE_MAP))
    return path


def _convert(nndose_env, src, dicom_map, capsys, extra=()):
    code, out, err = run_command(convert_main, ["-i", str(src), "-d", "7", "--structure_map", str(dicom_map), *extra], capsys)
    return code, out, err, nndose_env["nndose_raw"] / "Dataset007_DICOM"


def test_converted_patient_matches_what_was_written(nndose_env, tmp_path, dicom_map, capsys):
    src = tmp_path / "dicom"
    dh.write_patient(src / "site_a" / "P001", "P001")
    dh.write_patient(src / "b" / "nested" / "P002", "P002", absolute_offsets=True)
    code, out, err, ds = _convert(nndose_env, src, dicom_map, capsys)
    assert code == 0, err
    assert "converted 2 patient(s)" in out and "1 ROI(s) left out" not in err   # Couch left out in both
    info = json.loads((ds / "dataset.json").read_text())
    assert info["structures"] == {"Islands": {"kind": "oar"}, "Ring": {"kind": "oar"}, "PTV70": {"kind": "target"},
                                  "Body": {"kind": "body"}}
    for case in ("P001", "P002"):
        ct, grid = read_volume(ds / "casesTr" / case / "ct.nii.gz")
        assert grid.same_as(Grid(dh.CT_SHAPE, dh.CT_SPACING, dh.CT_ORIGIN))
        truth = dh.analytic_masks()
        np.testing.assert_array_equal(ct, np.where(truth["Body"], 40, -1000))
        # dose: linear field, so linear resampling is exact inside the coarser RTDOSE grid and zero outside it
        dose, _ = read_volume(ds / "casesTr" / case / "dose.nii.gz")
        x, y, z = dh.ct_points()
        lo, hi = np.array(dh.DOSE_ORIGIN), np.array(dh.DOSE_ORIGIN) + (np.array(dh.DOSE_SHAPE[::-1]) - 1) * dh.DOSE_SPACING
        inside = (x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (z >= lo[2]) & (z <= hi[2])
        assert inside.sum() > 5000 and (~inside).sum() > 1000
        np.testing.assert_allclose(dose[inside], dh.analytic_dose(x, y, z)[inside], atol=2e-3)
        outside = (x < lo[0] - 4) | (x > hi[0] + 4) | (z < lo[2] - 6) | (z > hi[2] + 6)
        assert np.all(dose[outside] == 0)
        for name in ("PTV70", "Ring", "Islands", "Body"):
            mask, _ = read_volume(ds / "casesTr" / case / "structures" / f"{name}.nii.gz")
            assert dh.dice(mask > 0, truth[name]) > 0.93, name
    ring, _ = read_volume(ds / "casesTr/P001/structures/Ring.nii.gz")
    x, y, z = dh.ct_points()
    hole = (x - dh.RING_CENTER[0]) ** 2 + (y - dh.RING_CENTER[1]) ** 2 < 3.0 ** 2
    assert ring[hole].max() == 0 and ring.sum() > 0                        # the inner contour is a hole
    islands, _ = read_volume(ds / "casesTr/P001/structures/Islands.nii.gz")
    left, right = islands[..., : dh.CT_SHAPE[2] // 2].sum(), islands[..., dh.CT_SHAPE[2] // 2:].sum()
    assert left > 0 and right > 0 and abs(left - right) / (left + right) < 0.1   # two separate islands
    plan = load_plan(ds / "casesTr/P001/plan.json")
    assert plan.modality == "VMAT" and plan.site == "pelvis"
    assert (plan.machine.name, plan.machine.sad_mm, plan.machine.energy_mv) == ("SynthLinac", 950.0, 10.0)
    assert [(b.gantry_deg, b.couch_deg, b.collimator_deg) for b in plan.beams] == [(0.0, 0.0, 0.0), (90.0, 0.0, 0.0)]
    (arc,) = plan.arcs
    assert (arc.gantry_start_deg, arc.gantry_stop_deg, arc.direction, arc.couch_deg, arc.collimator_deg) == (181.0, 179.0, "CW", 10.0, 30.0)
    assert [(p.structure, p.dose_gy, p.fractions) for p in plan.prescriptions] == [("PTV70", 70.0, 35)]
    assert plan.isocenter_mm == dh.PTV_CENTER
    assert run_command(verify_main, ["-d", "7"], capsys)[0] == 0


def test_two_studies_of_one_patient_are_two_cases_of_one_patient(nndose_env, tmp_path, dicom_map, capsys):
    src = tmp_path / "dicom"
    dh.write_patient(src / "first", "P7")
    dh.write_patient(src / "second", "P7")      # a new StudyInstanceUID, the same PatientID
    dh.write_patient(src / "other", "P8")
    code, out, err, ds = _convert(nndose_env, src, dicom_map, capsys)
    assert code == 0, err
    ids = {c.name: load_plan(c / "plan.json").patient_id for c in sorted((ds / "casesTr").iterdir())}
    assert ids == {"P7_study1": "P7", "P7_study2": "P7", "P8": "P8"}


def test_bad_patients_are_skipped_one_line_each(nndose_env, tmp_path, dicom_map, capsys):
    src = tmp_path / "dicom"
    dh.write_patient(src / "good", "GOOD")
    dh.write_patient(src / "nostruct", "NOSTRUCT", rtstruct=False)
    dh.write_patient(src / "gap", "GAP", drop_ct_slice=7)
    dh.write_patient(src / "frame", "FRAME", dose_frame_uid="1.2.3.4.5")
    dh.write_patient(src / "nobeams", "NOBEAMS", beams=False)
    (src / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")   # truncated DICOM
    code, out, err, ds = _convert(nndose_env, src, dicom_map, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert any(line.startswith("nndose_convert_dicom: NOSTRUCT: no RTSTRUCT") for line in lines)
    assert any("GAP: CT slices unevenly spaced" in line for line in lines)
    assert any("FRAME: RTDOSE" in line and "frame of reference 1.2.3.4.5" in line for line in lines)
    assert any("NOBEAMS: RTPLAN has no treatment beams" in line for line in lines)
    assert any("broken.dcm: DICOM file without a Modality" in line for line in lines)
    assert "Traceback" not in err and "skipped 4 with problems" in out
    assert sorted(p.name for p in (ds / "casesTr").iterdir()) == ["GOOD"]
    assert not any(".staging" in p for p in tree(ds))


def test_prescription_from_map_and_unmapped_target_reported(nndose_env, tmp_path, capsys):
    src = tmp_path / "dicom"
    dh.write_patient(src / "p", "P", prescription=False)
    smap = json.loads(json.dumps(dh.STRUCTURE_MAP))
    no_rx = tmp_path / "no_rx.json"
    no_rx.write_text(json.dumps(smap))
    code, _, err, ds = _convert(nndose_env, src, no_rx, capsys)
    assert code == 1 and "P: target PTV70 ('PTV_7000') has no prescription in the RTPLAN or the structure map" in err
    assert not ds.exists()
    smap["structures"]["PTV_7000"]["dose_gy"] = 60.0
    with_rx = tmp_path / "with_rx.json"
    with_rx.write_text(json.dumps(smap))
    code, _, err, ds = _convert(nndose_env, src, with_rx, capsys)
    assert code == 0, err
    assert load_plan(ds / "casesTr/P/plan.json").prescriptions[0].dose_gy == 60.0
    src2 = tmp_path / "dicom2"
    dh.write_patient(src2 / "q", "Q")
    del smap["structures"]["PTV_7000"]
    unmapped = tmp_path / "unmapped.json"
    unmapped.write_text(json.dumps(smap))
    code, _, err, _ = _convert(nndose_env, src2, unmapped, capsys)
    assert code == 1 and "Q: prescribed ROI 'PTV_7000' (70 Gy) is not in the structure map" in err


def test_rtdose_round_trip_and_identity(nndose_env, tmp_path, dicom_map, capsys):
    src = tmp_path / "dicom"
    ids = dh.write_patient(src / "P001", "P001")
    pred_dir = tmp_path / "pred"
    grid = Grid(dh.CT_SHAPE, dh.CT_SPACING, dh.CT_ORIGIN)
    rng = np.random.default_rng(3)
    prediction = (rng.random(dh.CT_SHAPE) * 72.5).astype(np.float32)
    write_volume(pred_dir / "P001.nii.gz", prediction, grid)
    out = tmp_path / "rtdose"
    code, stdout, err = run_command(export_main, ["-i", str(pred_dir), "-ref", str(src), "-o", str(out)], capsys)
    assert code == 0, err
    ds = pydicom.dcmread(out / "P001" / "RTDOSE_P001.dcm")
    ct = pydicom.dcmread(next((src / "P001" / "CT").iterdir()))
    assert ds.Modality == "RTDOSE" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.2"
    assert (ds.DoseSummationType, ds.DoseUnits, ds.DoseType) == ("PLAN", "GY", "PHYSICAL")
    assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID and ds.StudyInstanceUID == ct.StudyInstanceUID
    assert (ds.PatientID, str(ds.PatientName)) == ("P001", "Phantom^P001")
    assert ds.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == ids["plan_uid"]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    scaling = float(ds.DoseGridScaling)
    direct = ds.pixel_array.astype(np.float64) * scaling
    assert np.max(np.abs(direct - prediction)) <= scaling / 2 + 1e-5 * 72.5
    back = resample_dose(ds, read_ct_series(scan_folder(src)[0][0].files["CT"])[1])
    assert np.max(np.abs(back - prediction)) <= scaling / 2 + 1e-5 * 72.5


def test_export_refuses_bad_input_and_writes_nothing(nndose_env, tmp_path, capsys):
    src = tmp_path / "dicom"
    dh.write_patient(src / "P001", "P001")
    pred_dir, out = tmp_path / "pred", tmp_path / "out"
    wrong = Grid(dh.CT_SHAPE, (2.0, 2.0, 3.0), dh.CT_ORIGIN)
    write_volume(pred_dir / "P001.nii.gz", np.ones(dh.CT_SHAPE, np.float32), wrong)
    code, _, err = run_command(export_main, ["-i", str(pred_dir), "-ref", str(src), "-o", str(out)], capsys)
    assert code == 2 and "differs from the CT's" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    write_volume(pred_dir / "P999.nii.gz", np.ones(dh.CT_SHAPE, np.float32), wrong)
    code, _, err = run_command(export_main, ["-i", str(pred_dir), "-ref", str(src), "-o", str(out)], capsys)
    assert code == 2 and "no DICOM patient for prediction(s) P999" in err and not out.exists()
    nan = np.full(dh.CT_SHAPE, np.nan, np.float32)
    (pred_dir / "P999.nii.gz").unlink()
    write_volume(pred_dir / "P001.nii.gz", nan, Grid(dh.CT_SHAPE, dh.CT_SPACING, dh.CT_ORIGIN))
    code, _, err = run_command(export_main, ["-i", str(pred_dir), "-ref", str(src), "-o", str(out)], capsys)
    assert code == 2 and "NaN" in err and not out.exists()
    code, _, err = run_command(export_main, ["-i", str(tmp_path / "none"), "-ref", str(src), "-o", str(out)], capsys)
    assert code == 2 and "prediction folder not found" in err


def test_dicom_in_train_predict_rtdose_out(nndose_env, tmp_path, dicom_map, capsys):
    """Clinical DICOM -> raw dataset -> plan -> one training step -> nndose_predict --dicom_out."""
    from nndose.cli.predict import main as predict_main
    from nndose.cli.train import main as train_main
    train_src, test_src = tmp_path / "train_dicom", tmp_path / "test_dicom"
    for pid in ("T1", "T2", "T3"):
        dh.write_patient(train_src / pid, pid)
    dh.write_patient(test_src / "N1", "N1")
    assert _convert(nndose_env, train_src, dicom_map, capsys)[0] == 0
    code, _, err, ds = _convert(nndose_env, test_src, dicom_map, capsys, ["--test"])
    assert code == 0, err
    plans = plan_quietly(7)
    assert "beam_dose" in plans.configuration("3d_fullres").channels
    code, _, err = run_command(train_main, ["7", "3d_fullres", "all", "--epochs", "1", "--iterations_per_epoch", "2",
                                            "--device", "cpu"], capsys)
    assert code == 0, err
    out, rt = tmp_path / "pred", tmp_path / "rtdose"
    code, stdout, err = run_command(predict_main, ["-i", str(ds / "casesTs"), "-o", str(out), "-d", "7", "-c", "3d_fullres",
                                                   "--device", "cpu", "--disable_tta", "--dicom_out", str(rt),
                                                   "--dicom_ref", str(test_src)], capsys)
    assert code == 0, err
    prediction, _ = read_volume(out / "N1.nii.gz")
    rtdose = pydicom.dcmread(rt / "N1" / "RTDOSE_N1.dcm")
    np.testing.assert_allclose(rtdose.pixel_array * float(rtdose.DoseGridScaling), prediction,
                               atol=float(rtdose.DoseGridScaling) + 1e-4)
    # plan QA straight from the DICOM export (its RTDOSE is the clinical plan's dose)
    from nndose.cli.plan_qa import main as qa_main
    code, stdout, err = run_command(qa_main, ["--dicom", str(test_src), "--structure_map", str(dicom_map), "-d", "7",
                                              "-c", "3d_fullres", "-o", str(tmp_path / "qa"), "--device", "cpu",
                                              "--disable_tta"], capsys)
    assert code == 0, err
    qa = json.loads((tmp_path / "qa/cases/N1/qa.json").read_text())
    assert {s["name"] for s in qa["structures"]} == {"PTV70", "Ring", "Islands"} and "1 plan(s) checked" in stdout
