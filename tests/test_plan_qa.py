"""nndose_plan_qa: clinical plans against the fold ensemble's prediction, organ by organ. A hand-built
case whose clinical dose is the prediction plus a known excess in one organ is flagged there and
nowhere else; the command runs end to end on a trained model, on raw cases and on DICOM."""
import csv
import json
import shutil

import numpy as np
import pytest

from nndose.cli.plan_qa import main as qa_main
from nndose.cli.train import main as train_main
from nndose.io.raw_dataset import load_case, load_dataset_json
from nndose.io.volumes import read_volume, write_volume
from tests.conftest import run_command, run_ok

TRAIN_ONE = ["--epochs", "1", "--iterations_per_epoch", "1", "--device", "cpu"]


@pytest.fixture
def trained(env, capsys):
    run_ok(train_main, ["42", "3d_fullres", "all", *TRAIN_ONE], capsys)
    return env


def _organ(case, info):
    """The case's largest organ at risk."""
    organs = [n for n in case.structures if info.structures.get(n) == "oar"]
    return max(organs, key=lambda n: case.structures[n].sum())


def _plan_with_excess(env, tmp_path, excess_gy: float):
    """tmp_path/clinical/plan_a: the held-out phantom with its largest organ's dose raised by excess_gy;
    returns the folder of cases, the unchanged case and the organ."""
    raw = env / "nndose_raw/Dataset042_Tiny"
    info = load_dataset_json(raw)
    cases = tmp_path / "clinical"
    shutil.copytree(raw / "casesTs/phantom_005", cases / "plan_a")
    reference = load_case(cases / "plan_a", info, require_dose=True)
    organ = _organ(reference, info)
    clinical, grid = read_volume(cases / "plan_a/dose.nii.gz")
    clinical[reference.structures[organ]] += excess_gy
    write_volume(cases / "plan_a/dose.nii.gz", clinical, grid)
    return cases, reference, organ


def test_a_known_excess_in_one_organ_is_flagged_there_only(trained, capsys, tmp_path, monkeypatch):
    excess = 5.0
    cases, reference, organ = _plan_with_excess(trained, tmp_path, excess)
    body = reference.structures["Body"]
    offsets = (-0.2, 0.0, 0.2)   # three "folds": the planned dose shifted inside the body

    def folds(predictor, case):
        return [np.where(body, reference.dose + o, 0.0).astype(np.float32) for o in offsets]
    monkeypatch.setattr("nndose.qa.run.fold_doses_gy", folds)
    report = tmp_path / "report"
    out = run_ok(qa_main, ["-i", str(cases), "-d", "42", "-c", "3d_fullres", "-o", str(report), "--device", "cpu"], capsys)
    assert f"plan_a: flagged organs {organ}" in out and "1 with flags" in out
    assert "flagged: organs at risk on Dmean (their other metrics shown), targets on D95, D98 and D2; " in out
    qa = json.loads((report / "cases/plan_a/qa.json").read_text())
    assert qa["flagged_organs"] == [organ] and qa["flagged_targets"] == [] and qa["organ_flag_metrics"] == ["Dmean"]
    dmean = next(m for s in qa["structures"] if s["name"] == organ for m in s["metrics"] if m["name"] == "Dmean")
    planned = float(reference.dose[reference.structures[organ]].mean())
    # Dmean is linear in the dose: the prediction is the planned mean, the folds' interval +-0.2 Gy
    assert dmean["clinical"] == pytest.approx(planned + excess, abs=1e-3)
    assert dmean["predicted"] == pytest.approx(planned, abs=1e-3)
    assert (dmean["lower"], dmean["upper"]) == pytest.approx((planned - 0.2, planned + 0.2), abs=1e-3)
    assert dmean["excess"] == pytest.approx(excess, abs=1e-3) and dmean["flagged"]
    # beyond the interval (+0.2 Gy) and the tolerance (2 Gy, or 3 % of the prescription if smaller)
    assert qa["sparing_left_gy"] == pytest.approx(excess - max(0.2, dmean["tolerance"]), abs=1e-3)
    rows = list(csv.DictReader((report / "qa.csv").read_text().splitlines()))
    flagged_rows = [r for r in rows if r["flagged"] == "true"]
    assert [(r["case"], r["structure"]) for r in flagged_rows] == [("plan_a", organ)]
    index = (report / "index.html").read_text()
    assert 'href="cases/plan_a/report.html"' in index and (report / "cases/plan_a/report.html").is_file()


def test_plan_qa_with_the_trained_model_end_to_end(trained, capsys, tmp_path):
    raw = trained / "nndose_raw/Dataset042_Tiny"
    report = tmp_path / "report"
    out = run_ok(qa_main, ["-i", str(raw / "casesTs"), "-d", "42", "-c", "3d_fullres", "-o", str(report), "-f", "all",
                           "--device", "cpu", "--disable_tta"], capsys)
    assert "1 plan(s) checked with fold(s) all" in out
    qa = json.loads((report / "qa.json").read_text())
    case = load_case(raw / "casesTs/phantom_005", load_dataset_json(raw), require_dose=True)
    contoured = {n for n, m in case.structures.items() if n != "Body"}
    assert {s["name"] for s in qa["cases"][0]["structures"]} == contoured
    # one fold: every interval is the single prediction
    assert all(m["lower"] == m["upper"] == m["predicted"] for s in qa["cases"][0]["structures"] for m in s["metrics"])
    # again into the same report folder: replaced, not mixed
    run_ok(qa_main, ["-i", str(raw / "casesTs"), "-d", "42", "-c", "3d_fullres", "-o", str(report), "--device", "cpu",
                     "--disable_tta"], capsys)
    assert sorted(p.name for p in (report / "cases").iterdir()) == ["phantom_005"]


def test_plan_qa_refuses_bad_input_in_one_line(trained, capsys, tmp_path):
    raw = trained / "nndose_raw/Dataset042_Tiny"
    no_dose = tmp_path / "no_dose"
    shutil.copytree(raw / "casesTs/phantom_005", no_dose / "p")
    (no_dose / "p/dose.nii.gz").unlink()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep")
    base = ["-d", "42", "-c", "3d_fullres", "--device", "cpu"]
    for argv, needle in (([*base, "-i", str(no_dose), "-o", str(tmp_path / "r")], "p/dose.nii.gz: file not found"),
                         ([*base, "-i", str(raw / "casesTs"), "-o", str(occupied)], "is not a plan QA report"),
                         ([*base, "-i", str(raw / "casesTs"), "-o", str(tmp_path / "r"), "--tolerance_gy", "-1"],
                          "must be finite and not negative"),
                         ([*base, "-i", str(raw / "casesTs/phantom_005"), "-o", str(tmp_path / "r")], "is a case folder"),
                         ([*base, "-i", str(raw / "casesTs"), "-o", str(tmp_path / "r"), "--structure_map", "m.json"],
                          "--structure_map goes with --dicom"),
                         ([*base, "-i", str(raw / "casesTs"), "-o", str(tmp_path / "r"), "-f", "all", "all"],
                          "fold 'all' given twice"),
                         ([*base, "-i", str(raw / "casesTs"), "-o", str(tmp_path / "r"), "--flag_metrics", "Dmean", "D95"],
                          "unknown organ flag metric D95; choose from Dmean, D0.1cc, D2, V5Gy"),
                         ([*base, "-i", str(raw / "casesTs"), "-o", str(tmp_path / "r"), "--no_calibration",
                           "--false_alarm_percent", "5"], "--false_alarm_percent and --no_calibration exclude each other"),
                         ([*base, "-i", str(raw / "casesTs"), "-o", str(raw / "casesTs/report")],
                          "a folder of input cases, where it would be read as a case"),
                         ([*base, "-i", str(raw / "casesTs"), "--calibration_cases", str(raw / "casesTr"),
                           "-o", str(raw / "casesTr/report")], "casesTr, a folder of input cases")):
        code, _, err = run_command(qa_main, argv, capsys)
        lines = [line for line in err.splitlines() if "error:" in line]
        assert code == 2 and len(lines) == 1 and needle in lines[0], (argv, err)
    assert not (tmp_path / "r").exists() and (occupied / "notes.txt").read_text() == "keep"
    assert not (raw / "casesTs/report").exists() and not (raw / "casesTr/report").exists()


def test_an_excess_the_model_is_known_to_make_is_not_flagged(trained, capsys, tmp_path, monkeypatch):
    """The same 5 Gy excess in one organ, but the model's validation cases (of the same reference dose)
    show it under-predicts that organ's doses by 5.5 to 6.5 Gy (and its V-x by more than any organ has):
    calibrated, plan QA leaves the organ alone, on Dmean and on every metric; --no_calibration flags it."""
    from nndose.qa.compare import METRICS
    cases, reference, organ = _plan_with_excess(trained, tmp_path, 5.0)
    monkeypatch.setattr("nndose.qa.run.fold_doses_gy", lambda predictor, case: [reference.dose.astype(np.float32)])
    validation = []
    for w in np.linspace(5.5, 6.5, 40):
        predicted = {m.name: 20.0 for m in METRICS["oar"]}
        validation.append({"site": "prostate", "reference_dose_gy": reference.plan.reference_dose_gy, "structures": {
            organ: {"kind": "oar", "predicted": predicted,
                    "planned": {m.name: 20.0 + (w if m.unit == "Gy" else 20 * w) for m in METRICS["oar"]}}}})
    path = trained / "nndose_results/Dataset042_Tiny/nndoseTrainer__nndosePlans__3d_fullres/fold_all/validation/dvh_points.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(validation))
    base = ["-i", str(cases), "-d", "42", "-c", "3d_fullres", "--device", "cpu"]
    out = run_ok(qa_main, [*base, "-o", str(tmp_path / "calibrated")], capsys)
    assert ("margins of organs at risk learnt on 40 validation cases of the folds for at most 5 % false alarms; "
            "targets: too few to calibrate") in out
    qa = json.loads((tmp_path / "calibrated/cases/plan_a/qa.json").read_text())
    dmean = next(m for s in qa["structures"] if s["name"] == organ for m in s["metrics"] if m["name"] == "Dmean")
    assert dmean["excess"] == pytest.approx(5.0, abs=1e-3) and dmean["margin"] >= 6.0 and not dmean["flagged"]
    assert "within the model's validated error" in dmean["reason"] and organ not in qa["flagged_organs"]
    assert qa["calibration"] == {"false_alarm": 0.05, "cases": 40, "kinds": ["oar"], "scaled_kinds": [], "source": "fold validation",
                                 "calibration_rate": {"oar": pytest.approx(2 / 40)},   # the top two, left out
                                 "organ_flag_metrics": ["Dmean"]}
    cohort = json.loads((tmp_path / "calibrated/qa.json").read_text())
    # 40 values at 5 %: 2 expected beyond, too few for the organ's own margin; the pooled one, as a
    # fraction of the reference dose
    assert cohort["calibration"]["margins"]["oar"] == {}
    assert cohort["calibration"]["pooled_margins"]["oar"]["Dmean"] * reference.plan.reference_dose_gy == \
        pytest.approx(dmean["margin"])
    every = ["--flag_metrics", "Dmean", "D0.1cc", "D2", "V5Gy", "V20Gy", "V30Gy", "V40Gy"]
    run_ok(qa_main, [*base, "-o", str(tmp_path / "every"), *every], capsys)
    qa = json.loads((tmp_path / "every/cases/plan_a/qa.json").read_text())
    assert organ not in qa["flagged_organs"] and all(m["can_flag"] for s in qa["structures"] for m in s["metrics"])
    out = run_ok(qa_main, [*base, "-o", str(tmp_path / "plain"), "--no_calibration"], capsys)
    assert f"plan_a: flagged organs {organ}" in out and "(--no_calibration)" in out
    code, _, err = run_command(qa_main, [*base, "-o", str(tmp_path / "bad"), "--false_alarm_percent", "0"], capsys)
    assert code != 0 and "--false_alarm_percent 0.0 must lie between 0 and 100" in err and not (tmp_path / "bad").exists()


def test_margins_learnt_on_calibration_plans_given_apart(trained, capsys, tmp_path):
    """The 'all' fold has no validation; --calibration_cases learns the margins on plans given apart
    (here the five training phantoms: some 30 organs, enough for 30 % false alarms, too few for 1 %)."""
    raw = trained / "nndose_raw/Dataset042_Tiny"
    base = ["-i", str(raw / "casesTs"), "-d", "42", "-c", "3d_fullres", "--device", "cpu", "--disable_tta",
            "--calibration_cases", str(raw / "casesTr")]
    out = run_ok(qa_main, [*base, "-o", str(tmp_path / "r"), "--false_alarm_percent", "30"], capsys)
    assert "learnt on 5 held-out calibration plans for at most 30 % false alarms" in out
    cohort = json.loads((tmp_path / "r/qa.json").read_text())
    assert cohort["calibration"]["source"] == "calibration cases" and cohort["calibration"]["cases"] == 5
    assert all((m["margin"] is not None) == m["can_flag"] for s in cohort["cases"][0]["structures"]
               if s["kind"] in cohort["calibration"]["levels"] for m in s["metrics"])
    code, _, err = run_command(qa_main, [*base, "-o", str(tmp_path / "too_few"), "--false_alarm_percent", "1"], capsys)
    assert code != 0 and "5 calibration plans are too few to calibrate 1 % false alarms" in err and not (tmp_path / "too_few").exists()
    assert "a kind needs at least 100" in err and err.count("\n") == 1   # refused before any plan is predicted
    shutil.copytree(raw / "casesTr", tmp_path / "calibration")
    (tmp_path / "calibration/phantom_000/dose.nii.gz").unlink()
    code, _, err = run_command(qa_main, [*base[:-1], str(tmp_path / "calibration"), "-o", str(tmp_path / "bad")], capsys)
    assert code != 0 and err.startswith("nndose_plan_qa: error: calibration plan ") and "dose.nii.gz" in err
    code, _, err = run_command(qa_main, [*base[:-1], str(raw / "casesTs"), "-o", str(tmp_path / "same")], capsys)
    assert code != 0 and "phantom_005 is both a plan to check and a calibration plan" in err
    code, _, err = run_command(qa_main, [*base, "-o", str(tmp_path / "both"), "--no_calibration"], capsys)
    assert code != 0 and "exclude each other" in err and err.count("\n") == 1
