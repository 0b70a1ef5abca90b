"""The core layer (issue 12): patient-grouped folds, prediction listings, typed plans, the data stamp,
validation from preprocessed arrays, one read per predicted case."""
import json
import shutil

import numpy as np
import pytest
import torch

from nndose.cli.predict import main as predict_main
from nndose.cli.train import main as train_main
from nndose.datasets.phantoms import generate_phantom_dataset
from nndose.errors import NndoseError
from nndose.io.layout import list_predictions
from nndose.io.volumes import read_volume
from nndose.networks import build_network
from nndose.networks.resenc_unet import PlainConvUNet
from nndose.plans import load_plans, parse_plans
from nndose.preprocessing.storage import list_preprocessed_cases, load_properties
from nndose.training.splits import make_splits
from nndose.training.trainer import nndoseTrainer
from tests.conftest import plan_quietly, run_command, run_ok

MODEL = "nndoseTrainer__nndosePlans__3d_fullres"
TRAIN_ONE = ["--epochs", "1", "--iterations_per_epoch", "1", "--device", "cpu"]


def test_splits_keep_a_patients_plans_together():
    cases = [f"p{i}_plan{j}" for i in range(7) for j in range(3)]
    patients = {c: c.split("_")[0] for c in cases}
    splits = make_splits(cases, patients)
    assert sorted(c for s in splits for c in s["val"]) == sorted(cases)        # the validation sets partition
    for s in splits:
        assert not {patients[c] for c in s["train"]} & {patients[c] for c in s["val"]}


def test_two_plans_of_one_patient_never_fall_on_both_sides_of_a_fold(nndose_env):
    """plan.json's patient_id reaches the preprocessed properties and the splits (on the old main
    nothing wrote it, so one patient's plans could sit in training and validation at once)."""
    raw = nndose_env["nndose_raw"] / "Dataset044_Pairs"
    generate_phantom_dataset(raw, 2, seed=4, test_fraction=0.0, num_processes=1, progress=False)
    for i in range(5):                      # five patients with two plans each, from the same two phantoms
        for j in range(2):
            case = raw / "casesTr" / f"pt{i}_plan{j}"
            shutil.copytree(raw / "casesTr" / f"phantom_00{j}", case)
            plan = json.loads((case / "plan.json").read_text())
            plan["patient_id"] = f"patient_{i}"
            (case / "plan.json").write_text(json.dumps(plan))
    for j in range(2):
        shutil.rmtree(raw / "casesTr" / f"phantom_00{j}")
    info = json.loads((raw / "dataset.json").read_text())
    (raw / "dataset.json").write_text(json.dumps({**info, "numTraining": 10}))
    plans = plan_quietly(44)
    pre = nndose_env["nndose_preprocessed"] / "Dataset044_Pairs"
    data = pre / plans.configuration("3d_fullres").data_identifier
    assert {c: load_properties(data, c)["patient_id"] for c in list_preprocessed_cases(data)}["pt3_plan1"] == "patient_3"
    for fold in "01234":
        t = nndoseTrainer(plans, "3d_fullres", fold, pre, nndose_env["nndose_results"] / "x", torch.device("cpu"))
        train, val = t._cases()
        assert len(val) == 2 and {c.split("_")[0] for c in val} == {val[0].split("_")[0]}
        assert not {c.split("_")[0] for c in train} & {c.split("_")[0] for c in val}


def test_spread_maps_and_temporaries_are_never_listed_as_doses(env, capsys, tmp_path):
    run_ok(train_main, ["42", "3d_fullres", "all", *TRAIN_ONE], capsys)
    raw = env / "nndose_raw/Dataset042_Tiny"
    cases = tmp_path / "in"
    shutil.copytree(raw / "casesTs/phantom_005", cases / "phantom_005")
    shutil.copytree(raw / "casesTs/phantom_005", cases / "phantom_005_spread")   # a case named like an old spread map
    out = tmp_path / "pred"
    run_ok(predict_main, ["-i", str(cases), "-o", str(out), "-d", "42", "-c", "3d_fullres", "--save_spread",
                          "--disable_tta"], capsys)
    (out / ".phantom_009.nii.gz.123@abcdef.abcdefgh.tmp.nii.gz").write_bytes(b"")   # another machine's write
    assert sorted(list_predictions(out)) == ["phantom_005", "phantom_005_spread"]
    assert sorted(p.name for p in (out / "spread").iterdir()) == ["phantom_005.nii.gz", "phantom_005_spread.nii.gz"]
    dose, _ = read_volume(out / "phantom_005.nii.gz")
    twin, _ = read_volume(out / "phantom_005_spread.nii.gz")
    assert np.array_equal(dose, twin)                          # the same case under two names: the same dose


def test_predict_reads_each_case_once(env, capsys, tmp_path, monkeypatch):
    run_ok(train_main, ["42", "3d_fullres", "all", *TRAIN_ONE], capsys)
    import nndose.io.raw_dataset as raw_dataset
    reads = []
    original = raw_dataset.read_volume
    monkeypatch.setattr(raw_dataset, "read_volume", lambda path, *a, **k: reads.append(path.name) or original(path, *a, **k))
    run_ok(predict_main, ["-i", str(env / "nndose_raw/Dataset042_Tiny/casesTs"), "-o", str(tmp_path / "p"), "-d", "42",
                          "-c", "3d_fullres", "--disable_tta"], capsys)
    assert reads.count("ct.nii.gz") == 1 and reads.count("Body.nii.gz") == 1


def test_validation_and_out_of_fold_predictions_need_no_raw_folder(env, capsys, monkeypatch, tmp_path):
    raw = env / "nndose_raw"
    monkeypatch.setenv("nndose_raw", str(tmp_path / "elsewhere"))
    run_ok(train_main, ["42", "3d_fullres", "0", *TRAIN_ONE], capsys)
    model = env / "nndose_results/Dataset042_Tiny" / MODEL
    splits = json.loads((env / "nndose_preprocessed/Dataset042_Tiny/splits_final.json").read_text())
    assert sorted(p.stem for p in (model / "oof_predictions").glob("*.b2nd")) == sorted(splits[0]["val"])
    summary = json.loads((model / "fold_0/validation/summary.json").read_text())
    assert summary["grid"] == "preprocessed"
    # the same fold validated again with the raw cases, in Gy on their original grids: the same error
    monkeypatch.setenv("nndose_raw", str(raw))
    run_ok(train_main, ["42", "3d_fullres", "0", "--val", "--device", "cpu"], capsys)
    scored = json.loads((model / "fold_0/validation/summary.json").read_text())
    assert summary["aggregate"]["mae_body_gy"] == pytest.approx(scored["aggregate"]["mae_body_gy"]["mean"], rel=0.2)
    # plan QA's calibration input: the same DVH points without the cases' names
    points_text = (model / "fold_0/validation/dvh_points.json").read_text()
    assert not any(name in points_text for name in splits[0]["val"])
    points = json.loads(points_text)
    assert sorted(c["structures"][n]["planned"]["Dmean"] for c in points for n in c["structures"]) == sorted(
        c["structures"][n]["reference"]["Dmean"] for c in scored["cases"] for n in c["structures"])


def test_a_variant_network_is_a_plan_change(env, capsys):
    pre = env / "nndose_preprocessed/Dataset042_Tiny"
    plans_file = pre / "nndosePlans.json"
    original = plans_file.read_text()
    d = json.loads(original)
    d["configurations"]["3d_fullres"]["network"]["class_name"] = "PlainConvUNet"
    plans_file.write_text(json.dumps(d))
    try:
        plans = load_plans(plans_file)
        assert isinstance(build_network(plans.configuration("3d_fullres")), PlainConvUNet)
        run_ok(train_main, ["42", "3d_fullres", "all", *TRAIN_ONE], capsys)
        d["configurations"]["3d_fullres"]["network"]["class_name"] = "os.system"   # never code the plan chooses
        plans_file.write_text(json.dumps(d))
        code, _, err = run_command(train_main, ["42", "3d_fullres", "all", "--overwrite", *TRAIN_ONE], capsys)
        assert code == 2 and "network class 'os.system' is not known" in err and err.count("\n") == 1
    finally:
        plans_file.write_text(original)


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c.update(patch_size_zyx=[15, 16, 16]), "is not divisible by the network's pooling"),
    (lambda c: c.pop("batch_size"), "missing 'batch_size'"),
    (lambda c: c.update(batch_size=-2), "'batch_size' must be a whole number >= 1"),
    (lambda c: c.update(channels=["ct"]), "the channels lack 'body'"),
    (lambda c: c["network"].update(strides=[[1, 1, 1]]), "one entry per stage"),
    (lambda c: c.update(channels=c["channels"] + ["ct"]), "a channel is listed twice"),
    (lambda c: c.update(data_identifier="../../elsewhere"), "may hold only letters"),
    (lambda c: c.update(previous_stage="3d_fullres"), "must name another configuration"),
    (lambda c: c.update(channels=c["channels"] + ["dose_mask_1"], previous_stage="3d_cascade_fullres",
                        dose_mask_levels=["high"]), "dose-mask channel(s) need a previous_stage"),
])
def test_a_malformed_plan_is_one_line_naming_the_key(env, edit, needle):
    d = json.loads((env / "nndose_preprocessed/Dataset042_Tiny/nndosePlans.json").read_text())
    edit(d["configurations"]["3d_fullres"])
    with pytest.raises(NndoseError, match="configuration 3d_fullres") as e:
        parse_plans(d, "nndosePlans.json")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_plan_wide_checks_and_the_former_version(env):
    d = json.loads((env / "nndose_preprocessed/Dataset042_Tiny/nndosePlans.json").read_text())
    for edit, needle in ((lambda p: p.update(plans_name="../x"), "'plans_name' '../x' may hold only"),
                         (lambda p: p["beam_channels"].update(enabled="no"), "'enabled' must be true or false"),
                         (lambda p: p["configurations"]["3d_cascade_fullres"].update(previous_stage="3d_superres"),
                          "previous stage '3d_superres' is unknown or circular")):
        bad = json.loads(json.dumps(d))
        edit(bad)
        with pytest.raises(NndoseError, match=needle):
            parse_plans(bad, "plans")
    # version 1 (before the network class and the recipe) still reads, as a ResEncUNet without a recipe
    old = json.loads(json.dumps(d))
    old["plans_version"] = 1
    old.pop("training")
    for conf in old["configurations"].values():
        conf.get("network", {}).pop("class_name", None)
    plans = parse_plans(old, "old plans")
    assert plans.configuration("3d_fullres").network.class_name == "ResEncUNet" and plans.training.chosen() == {}


def test_training_refuses_data_from_another_plan(env, capsys):
    """An interrupted re-plan leaves a plan whose data were never made: one line, not a reshape error."""
    pre = env / "nndose_preprocessed/Dataset042_Tiny"
    plans_file = pre / "nndosePlans.json"
    original = plans_file.read_text()
    d = json.loads(original)
    d["configurations"]["3d_fullres"]["spacing_zyx"] = [9.0, 9.0, 9.0]
    plans_file.write_text(json.dumps(d))
    try:
        code, _, err = run_command(train_main, ["42", "3d_fullres", "all", *TRAIN_ONE], capsys)
        assert code == 2 and "do not match the plan's 3d_fullres" in err and err.count("\n") == 1
    finally:
        plans_file.write_text(original)


def test_a_splits_file_that_puts_a_patient_on_both_sides_is_refused(tmp_path):
    from nndose.training.splits import load_or_create_splits
    cases = [f"p{i}_plan{j}" for i in range(5) for j in range(2)]
    patients = {c: c.split("_")[0] for c in cases}
    straddling = [{"train": [c for c in cases if c != "p0_plan1"], "val": ["p0_plan1"]}] + \
                 [{"train": cases[:-1], "val": cases[-1:]}] * 4
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps(straddling))
    with pytest.raises(NndoseError, match="fold 0 has patient p0 on both sides"):
        load_or_create_splits(path, cases, patients)
