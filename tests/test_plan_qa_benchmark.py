"""The plan-QA benchmark's separability, pooled and per technique, on hand-built plans whose organ
excesses are known; what a plan's technique is; and its pyRadPlan test sets, built with a stand-in for
the dose script."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.plan_qa import (MODALITIES, SITES, add_training_phantoms, fold_validation, metric_aucs, separability,
                                technique, write_test_sets_pyradplan)
from nndose.datasets.phantom_anatomy import phantom_kinds
from nndose.errors import NndoseError
from nndose.datasets.phantoms import generate_phantom_dataset
from nndose.io.raw_dataset import DatasetInfo, list_cases, load_dataset_json, read_case, write_dataset_json
from nndose.io.plan_file import Machine, Prescription, StaticBeam, TreatmentPlan
from nndose.qa.compare import Tolerance, compare_case

SHAPE = (2, 8, 10)
KINDS = {"Body": "body", "PTV": "target", "Rectum": "oar", "Bladder": "oar"}


def _case(name: str, excess_gy: dict[str, float], rx_gy: float = 60.0):
    """Predicted: PTV 60 Gy, rectum 22 Gy, bladder 10 Gy, elsewhere 2 Gy (folds +-1 Gy); the clinical
    dose that plus `excess_gy` inside the named organs, so each organ's Dmean excess is exactly that.
    `rx_gy`: the PTV's prescription (the reference dose)."""
    m = {n: np.zeros(SHAPE, bool) for n in KINDS}
    m["Body"][:] = True
    m["PTV"][:, 1:3, 2:8] = True
    m["Rectum"][:, 4:6, 2:8] = True
    m["Bladder"][:, 7, 2:8] = True
    mean = np.full(SHAPE, 2.0)
    mean[m["PTV"]], mean[m["Rectum"]], mean[m["Bladder"]] = 60.0, 22.0, 10.0
    clinical = mean + sum(gy * m[organ] for organ, gy in excess_gy.items())
    return compare_case(name, clinical, [mean - 1.0, mean, mean + 1.0], m, KINDS, {"PTV": rx_gy}, 1000.0, Tolerance())


def test_separability_pooled_and_per_technique_by_hand():
    standard = [_case("a", {"Rectum": 1.0}), _case("b", {"Bladder": 3.0}, rx_gy=30.0)]
    degraded = [_case("a", {"Rectum": 4.0}), _case("b", {"Bladder": 2.0}, rx_gy=30.0)]
    truth = {"a": {"organ": "Rectum"}, "b": {"organ": "Bladder"}}
    s = separability(standard, degraded, truth, {"a": "prostate IMRT", "b": "prostate VMAT"},
                     ["prostate IMRT", "prostate IMRT", "head_neck VMAT"])
    # standard organs' excesses 1, 0 (a) and 0, 3 (b); degraded organs' 4 and 2
    assert s["standard_organs_dmean_excess_gy"] == pytest.approx({"mean": 1.0, "sd": np.sqrt(1.5)})
    assert s["same_organ_standard_plan_dmean_excess_gy"] == pytest.approx({"mean": 2.0, "sd": 1.0})
    assert s["auc_dmean"] == pytest.approx(7 / 8)                  # 4 beats all four, 2 beats 1, 0, 0
    assert s["oracle_dmean_threshold_gy"] == pytest.approx(2.7)    # [0, 0, 1, 3] at 0.95: 1 + 0.85 * 2
    assert s["oracle_sensitivity_at_5_percent_false_alarms"] == 0.5
    # in % of the prescription (a: 60 Gy, b: 30 Gy): standard 1.67, 0, 0, 10; degraded 6.67 and 6.67
    relative = s["in_percent_of_rx"]
    assert relative["auc_dmean"] == pytest.approx(6 / 8)                      # each beats all but the 10
    assert relative["oracle_dmean_threshold_percent_of_rx"] == pytest.approx(100 / 60 + 0.85 * (10 - 100 / 60))
    assert relative["oracle_sensitivity_at_5_percent_false_alarms"] == 0.0
    imrt, vmat = s["by_technique"]["prostate IMRT"], s["by_technique"]["prostate VMAT"]
    assert (imrt["training_plans"], imrt["test_plans"], vmat["training_plans"], vmat["test_plans"]) == (2, 1, 0, 1)
    assert imrt["auc_dmean"] == 1.0 and imrt["oracle_dmean_threshold_gy"] == pytest.approx(0.95)
    assert imrt["oracle_sensitivity_at_5_percent_false_alarms"] == 1.0
    assert vmat["auc_dmean"] == 0.5 and vmat["oracle_dmean_threshold_gy"] == pytest.approx(2.85)
    assert vmat["oracle_sensitivity_at_5_percent_false_alarms"] == 0.0
    assert vmat["standard_organs_dmean_excess_gy"] == pytest.approx({"mean": 1.5, "sd": 1.5})


def test_metric_aucs_by_hand():
    """Every organ uniform, so Dmean, D0.1cc and D2 are its dose and their excesses the added dose, in %
    of the prescription: standard 1.67, 0 (a, 60 Gy), 0, 10 (b, 30 Gy); degraded 15 (rectum + 9 Gy) and
    6.67 (bladder + 2 Gy), beating four and three of four: 7/8. The degraded rectum, 31 Gy, crosses 30 Gy:
    its V30Gy excess 100 points beats the four normal organs' 0, the bladder's 0 ties them: (4 + 4 / 2) / 8.
    No other dose crosses a V-x level (rectum 22 Gy, bladder 10 Gy predicted): all tied, 0.5."""
    standard = [_case("a", {"Rectum": 1.0}), _case("b", {"Bladder": 3.0}, rx_gy=30.0)]
    degraded = [_case("a", {"Rectum": 9.0}), _case("b", {"Bladder": 2.0}, rx_gy=30.0)]
    aucs = metric_aucs(standard, degraded, {"a": {"organ": "Rectum"}, "b": {"organ": "Bladder"}})
    assert aucs == {"Dmean": pytest.approx(7 / 8), "D0.1cc": pytest.approx(7 / 8), "D2": pytest.approx(7 / 8),
                    "V5Gy": 0.5, "V20Gy": 0.5, "V30Gy": 0.75, "V40Gy": 0.5}


def test_technique_names_site_modality_and_a_turned_couch():
    def plan(couch_deg):
        return TreatmentPlan("head_neck", "IMRT", Machine("linac", 1000.0, 6.0), (Prescription("PTV", 70.0, 35),),
                             (0.0, 0.0, 0.0), (StaticBeam(0.0), StaticBeam(40.0, couch_deg)))
    assert technique(plan(0.0)) == "head_neck IMRT" and not plan(0.0).non_coplanar
    assert technique(plan(90.0)) == "head_neck IMRT non-coplanar" and plan(90.0).non_coplanar


@pytest.mark.parametrize("bad, message", [(["-tr", "Bogus"], "unknown trainer 'Bogus'"),
                                          (["--degradation_percent", "0"], "must lie in (0, 100]"),
                                          (["--engine", "pyradplan", "--pyradplan_python", "/no/python"],
                                           "no such Python for pyRadPlan"),
                                          (["--first_test", "3"], "--first_test 3 would test on training phantoms (0..4)"),
                                          (["--extra_training", "-1"], "--extra_training must be >= 0"),
                                          (["--max_batch", "0"], "--max_batch and --encoder_blocks must be positive"),
                                          (["--first_test", "8", "--n_test", "4"],
                                           "would share phantoms with the first test set (5..8): start at 9 or later")])
def test_bad_arguments_refused_in_one_line_before_any_work(bad, message, tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks.plan_qa", "-o", str(tmp_path / "r.json"),
                          "--work", str(tmp_path / "work"), "--n", "5", "--n_test", "1", "--epochs", "1", *bad],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("benchmarks.plan_qa: error: ") and message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


# A stand-in for pyRadPlan's Python: it is called as `python pyradplan_dose.py OPTIONS CASE ...` and, like the
# dose script, prints one record per case and copies a degraded case into --degraded_into; phantom_061's
# organs cannot be made worse. With STAND_IN_FAILS set it fails like the script does, in one line.
STAND_IN = """#!{python}
import json, os, shutil, sys
from pathlib import Path
if os.environ.get("STAND_IN_FAILS"):
    sys.exit("error: stand-in failure")
args = sys.argv[2:]
into = Path(args[args.index("--degraded_into") + 1])
for case in (Path(a) for a in args if Path(a).is_dir() and Path(a) != into):
    worse = None if case.name == "phantom_061" else {{"organ": "Rectum", "increase_gy": 3.0}}
    if worse:
        shutil.copytree(case, into / case.name)
    print(json.dumps({{"case": case.name, "degraded": worse}}))
"""


@pytest.fixture
def stand_in_python(tmp_path) -> Path:
    python = tmp_path / "stand_in_python"
    python.write_text(STAND_IN.format(python=sys.executable))
    python.chmod(0o755)
    return python


def _raw_with_kinds(folder: Path) -> Path:
    write_dataset_json(folder, DatasetInfo("QA", phantom_kinds(), ".nii.gz", 0, "kinds only"))
    return folder


def test_pyradplan_test_sets_keep_degradable_phantoms_and_list_the_rest(tmp_path, stand_in_python):
    out = tmp_path / "sets"
    truth = write_test_sets_pyradplan(60, 2, 21, 5.0, out, _raw_with_kinds(tmp_path / "raw"), stand_in_python)
    assert truth["left_out"] == ["phantom_061"] and list(truth["degraded"]) == ["phantom_060"]
    assert truth["degraded"]["phantom_060"] == {"site": "prostate", "organ": "Rectum", "increase_gy": 3.0}
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "degraded", "standard"]
    assert [p.name for p in (out / "standard").iterdir()] == [p.name for p in (out / "degraded").iterdir()] == ["phantom_060"]
    assert json.loads((out / "dataset.json").read_text())["structures"]["Rectum"]["kind"] == "oar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "sets", "stand_in_python"]   # nothing staged left


def test_pyradplan_test_sets_failing_leave_nothing(tmp_path, stand_in_python, monkeypatch):
    monkeypatch.setenv("STAND_IN_FAILS", "1")
    with pytest.raises(NndoseError, match="pyRadPlan failed on phantom_060..phantom_060: error: stand-in failure"):
        write_test_sets_pyradplan(60, 1, 21, 5.0, tmp_path / "sets", _raw_with_kinds(tmp_path / "raw"), stand_in_python)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "stand_in_python"]


def test_extra_training_phantoms_join_the_training_cases_past_every_test_set(tmp_path):
    raw = tmp_path / "Dataset999_QA"
    generate_phantom_dataset(raw, 2, seed=21, test_fraction=0.0, num_processes=1, progress=False, sites=SITES,
                             modalities=MODALITIES)
    add_training_phantoms(raw, 1000, 1, 21)
    cases = list_cases(raw)
    assert [c.name for c in cases] == ["phantom_000", "phantom_001", "phantom_1000"]
    info = load_dataset_json(raw)
    assert info.num_training == 3
    assert not list(raw.glob(".extra*"))                         # nothing staged left
    case, problems = read_case(cases[2], info, True)
    assert not problems and case.dose is not None and float(case.dose.max()) > 0
    assert not np.array_equal(case.ct, read_case(cases[0], info, True)[0].ct)   # another anatomy


def test_fold_validation_organ_error_in_percent_of_rx_by_hand(tmp_path):
    """Fold 0: phantom_000 (Rx 60 Gy), rectum planned 30 Gy mean, predicted 27 (+5 % of Rx), PTV ignored;
    fold 1: phantom_1000 (Rx 80 Gy), bladder 40 against 44 (-5 %), rectum 20 against 20 (0 %)."""
    def organ(planned, predicted, kind="oar"):
        return {"kind": kind, "reference": {"Dmean": planned}, "prediction": {"Dmean": predicted}, "mae_gy": 1.0}

    def case(name, rx_gy, dose_score_gy, dvh_errors_gy, structures):
        return {"case": name, "reference_dose_gy": rx_gy, "dose_error_openkbp": dose_score_gy, "mae_body_gy": 1.0,
                "isodose_dice": {}, "openkbp_dvh_errors": {"Rectum": dict(enumerate(dvh_errors_gy))},
                "structures": structures}
    folds = {"0": [case("phantom_000", 60.0, 2.0, [1.0, 3.0],
                        {"Rectum": organ(30.0, 27.0), "PTV": organ(60.0, 50.0, "target")})],
             "1": [case("phantom_1000", 80.0, 4.0, [8.0], {"Bladder": organ(40.0, 44.0), "Rectum": organ(20.0, 20.0)})]}
    for fold, cases in folds.items():
        out = tmp_path / f"fold_{fold}" / "validation"
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({"cases": cases}))
    v = fold_validation(tmp_path, ["0", "1"], 60)
    assert v["fold_0"] == {"cases": 1, "organs": 1, "dose_score_gy": 2.0, "dvh_score_gy": 2.0,
                           "organ_dmean_error_sd_percent_of_rx": 0.0}
    assert v["fold_1"] == {"cases": 1, "organs": 2, "dose_score_gy": 4.0, "dvh_score_gy": 8.0,
                           "organ_dmean_error_sd_percent_of_rx": 2.5}                 # -5 and 0
    every = v["every validation case"]                                             # +5, -5, 0
    assert (every["cases"], every["organs"], every["dose_score_gy"], every["dvh_score_gy"]) == (2, 3, 3.0, 4.0)
    assert every["organ_dmean_error_sd_percent_of_rx"] == pytest.approx(np.sqrt(50 / 3), abs=1e-3)
    assert v["phantoms 0..59"] == {"cases": 1, "organs": 1, "dose_score_gy": 2.0, "dvh_score_gy": 2.0,
                                   "organ_dmean_error_sd_percent_of_rx": 0.0}
