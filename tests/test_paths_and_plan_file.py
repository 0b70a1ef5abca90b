import pytest

from nndose.errors import NndoseError
from nndose.io.plan_file import Arc, InvalidPlan, parse_plan
from nndose.paths import dataset_folder_name, parse_dataset_id, raw_root


def _plan(**over):
    d = {"site": "prostate", "modality": "IMRT", "machine": {"name": "m", "sad_mm": 1000.0, "energy_mv": 6},
         "prescriptions": [{"structure": "PTV_high", "dose_gy": 78.0, "fractions": 39},
                           {"structure": "PTV_low", "dose_gy": 60.0, "fractions": 39}],
         "isocenter_mm": [0, 0, 0], "beams": [{"gantry_deg": 0.0}, {"gantry_deg": 180.0}], "arcs": []}
    d.update(over)
    return d


def test_env_path_error_is_actionable(monkeypatch):
    monkeypatch.delenv("nndose_raw", raising=False)
    with pytest.raises(NndoseError, match="export nndose_raw="):
        raw_root()


@pytest.mark.parametrize("text,expected", [("1", 1), ("001", 1), ("Dataset042_X", 42), (7, 7)])
def test_dataset_id(text, expected):
    assert parse_dataset_id(text) == expected
    assert dataset_folder_name(expected, "A_b") == f"Dataset{expected:03d}_A_b"


def test_dataset_id_rejects_garbage():
    with pytest.raises(NndoseError):
        parse_dataset_id("abc")


def test_valid_plan_reference_dose():
    plan = parse_plan(_plan())
    assert plan.reference_dose_gy == 78.0
    assert plan.prescription_of("PTV_low").dose_gy == 60.0


@pytest.mark.parametrize("over,needle", [
    ({"modality": "Tomo"}, "unknown modality"),
    ({"beams": [{"gantry_deg": 360.0}]}, "outside [0, 360)"),
    ({"beams": [{"gantry_deg": 10.0, "couch_deg": -5.0}]}, "couch_deg=-5.0"),
    ({"prescriptions": []}, "prescriptions"),
    ({"prescriptions": [{"structure": "PTV", "dose_gy": float("nan"), "fractions": 1}]}, "finite"),
    ({"machine": {"name": "m", "sad_mm": 50.0, "energy_mv": 6}}, "sad_mm"),
    ({"isocenter_mm": [0, 0]}, "isocenter"),
    ({"beams": [], "arcs": []}, "no beams"),
    ({"modality": "VMAT"}, "needs at least one arc"),
])
def test_invalid_plans_name_the_problem(over, needle):
    with pytest.raises(InvalidPlan) as e:
        parse_plan(_plan(**over))
    assert any(needle in p for p in e.value.problems)


@pytest.mark.parametrize("start,stop,direction,span", [(181, 179, "CW", 358), (179, 181, "CCW", 358),
                                                        (0, 90, "CW", 90), (0, 90, "CCW", 270)])
def test_arc_span(start, stop, direction, span):
    assert Arc(start, stop, direction).span_deg == pytest.approx(span)


def test_a_prediction_ensembles_the_cross_validation_folds_by_default(tmp_path):
    from nndose.io.layout import CHECKPOINT_FINAL, check_folds, ensemble_folds
    for fold in ("all", "3", "0"):
        (tmp_path / f"fold_{fold}").mkdir()
    assert ensemble_folds(tmp_path) == []                       # no fold has its final checkpoint yet
    (tmp_path / "fold_all" / CHECKPOINT_FINAL).touch()
    assert ensemble_folds(tmp_path) == ["all"]                  # only 'all': that one
    for fold in ("3", "0"):
        (tmp_path / f"fold_{fold}" / CHECKPOINT_FINAL).touch()
    assert ensemble_folds(tmp_path) == ["0", "3"]               # as nnU-Net: 'all' left out beside them
    assert check_folds(["4", "all", 0]) == ["4", "all", "0"]
    with pytest.raises(NndoseError, match="fold '0' given twice"):
        check_folds(["0", "1", 0])
