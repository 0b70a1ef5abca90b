"""Reliability under faults (issue 13): a full disk, kills at the worst moment, models never lost or
overwritten, no dose written that holds NaN or a negative value. Each fault gives one line on stderr,
exit status 2 and nothing partial, or is refused before anything is overwritten."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from nndose.cli.convert_dicom import main as convert_dicom_main
from nndose.cli.convert_openkbp import main as convert_openkbp_main
from nndose.cli.evaluate import main as evaluate_main
from nndose.cli.export_dicom import main as export_dicom_main
from nndose.cli.export_openkbp import main as export_openkbp_main
from nndose.cli.generate_phantoms import main as generate_main
from nndose.cli.model_sharing import export_main, install_main
from nndose.cli.plan_and_preprocess import main as plan_main
from nndose.cli.predict import main as predict_main
from nndose.cli.train import main as train_main
from nndose.dicom import synthetic as dh
from nndose.io.volumes import Grid, write_volume
from tests.conftest import run_command, run_ok, tree
from tests.openkbp_helpers import synthetic_patient

MODEL = "nndoseTrainer__nndosePlans__3d_fullres"
TRAIN_ONE = ["--epochs", "1", "--iterations_per_epoch", "1", "--device", "cpu"]


def error_lines(err: str) -> list[str]:
    """stderr without progress bars (tqdm writes them there)."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


def fails(main, argv, capsys, needle: str) -> str:
    """The command must fail with one line naming the problem, exit status 2, no traceback."""
    code, _, err = run_command(main, argv, capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, (argv, code, err)
    return lines[0]


def run_python(code: str, kill_at: str) -> subprocess.CompletedProcess:
    """Run a snippet in a fresh process that kills itself at the kill point `kill_at`."""
    env = {**os.environ, "nndose_kill_at": kill_at}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def trained(env, capsys):
    """The tiny workspace with fold 'all' trained for one iteration; returns the model folder."""
    run_ok(train_main, ["42", "3d_fullres", "all", *TRAIN_ONE], capsys)
    return env / "nndose_results/Dataset042_Tiny" / MODEL


@pytest.fixture
def full_disk(monkeypatch):
    """Every file write and staging folder fails as on a full device (the first byte written)."""
    import nndose.io.atomic as atomic

    def no_space(path, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(atomic, "_respect_umask", no_space)


# ----- a full disk ------------------------------------------------------------------------------

def test_full_disk_is_one_line_and_nothing_partial_for_every_command(env, trained, capsys, tmp_path, monkeypatch):
    raw = env / "nndose_raw/Dataset042_Tiny"
    # inputs made while the disk still has room
    archive = tmp_path / "model.zip"
    run_ok(export_main, ["-d", "42", "-c", "3d_fullres", "-o", str(archive)], capsys)
    synthetic_patient(tmp_path / "okbp" / "pt_1")
    okbp_pred = tmp_path / "okbp_pred"
    from nndose.datasets.openkbp import openkbp_grid
    write_volume(okbp_pred / "pt_1.nii.gz", np.zeros((128, 128, 128), np.float32), openkbp_grid((3.906, 3.906, 2.5)))
    dh.write_patient(tmp_path / "dicom" / "P1", "P1")
    dicom_pred = tmp_path / "dicom_pred"
    write_volume(dicom_pred / "P1.nii.gz", np.full(dh.CT_SHAPE, 2.0, np.float32), Grid(dh.CT_SHAPE, dh.CT_SPACING, dh.CT_ORIGIN))
    predicted = tmp_path / "predicted"
    run_ok(predict_main, ["-i", str(raw / "casesTs"), "-o", str(predicted), "-d", "42", "-c", "3d_fullres",
                          "--disable_tta"], capsys)
    fresh = tmp_path / "fresh_results"
    before = {p: tree(p) for p in (env, tmp_path)}
    monkeypatch.setattr("nndose.io.atomic._respect_umask",
                        lambda path, directory: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device", str(path))))
    commands = [
        (predict_main, ["-i", str(raw / "casesTs"), "-o", str(tmp_path / "pred"), "-d", "42", "-c", "3d_fullres"]),
        (train_main, ["42", "3d_fullres", "0", *TRAIN_ONE]),
        (plan_main, ["-d", "42", "-c", "3d_fullres", "-np", "1", "--base_features", "4", "--max_features", "16",
                     "--encoder_blocks", "1", "--max_patch", "16"]),
        (evaluate_main, ["-ref", str(raw / "casesTs"), "-pred", str(predicted), "-o", str(tmp_path / "s.json")]),
        (export_openkbp_main, ["-i", str(okbp_pred), "-o", str(tmp_path / "csv")]),
        (export_dicom_main, ["-i", str(dicom_pred), "-ref", str(tmp_path / "dicom"), "-o", str(tmp_path / "rtdose")]),
        (convert_openkbp_main, ["-i", str(tmp_path / "okbp"), "-d", "61", "-np", "1"]),
        (convert_dicom_main, ["-i", str(tmp_path / "dicom"), "-d", "62"]),
        (generate_main, ["-d", "63", "-n", "3", "-np", "1"]),
        (export_main, ["-d", "42", "-c", "3d_fullres", "-o", str(tmp_path / "again.zip")]),
    ]
    for main, argv in commands:
        fails(main, argv, capsys, "o space left")
    monkeypatch.setenv("nndose_results", str(fresh))
    fails(install_main, [str(archive)], capsys, "o space left")
    after = {p: tree(p) for p in (env, tmp_path)}
    assert {p: after[p] ^ before[p] for p in after} == {p: set() for p in after}   # nothing written, nothing left


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_full_disk_on_a_real_tmpfs(env, trained, capsys, tmp_path, monkeypatch):
    """SimpleITK reports nothing when the disk fills: the written file is truncated. nndose reads every
    volume back before publishing it, so a full disk is an error, never a short dose file."""
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "5m"):
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        with open(small / "filler", "wb") as f:   # leave 20 KB free
            f.write(b"\0" * (5 * 2 ** 20 - 20 * 2 ** 10))
        raw = env / "nndose_raw/Dataset042_Tiny"
        fails(predict_main, ["-i", str(raw / "casesTs"), "-o", str(small / "pred"), "-d", "42", "-c", "3d_fullres"],
              capsys, "no space left")
        archive = tmp_path / "model.zip"
        run_ok(export_main, ["-d", "42", "-c", "3d_fullres", "-o", str(archive)], capsys)
        monkeypatch.setenv("nndose_results", str(small / "results"))
        fails(install_main, [str(archive)], capsys, "free under")     # refused before extracting anything
        assert tree(small) == {"filler"}
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


# ----- models are never lost --------------------------------------------------------------------

def test_install_never_deletes_an_installed_model(env, trained, capsys, tmp_path, monkeypatch):
    archive = tmp_path / "model.zip"
    run_ok(export_main, ["-d", "42", "-c", "3d_fullres", "-o", str(archive)], capsys)
    results = tmp_path / "installed"
    monkeypatch.setenv("nndose_results", str(results))
    run_ok(install_main, [str(archive)], capsys)
    ck = results / "Dataset042_Tiny" / MODEL / "fold_all/checkpoint_final.pth"
    (results / "Dataset042_Tiny" / MODEL / "fold_0").mkdir()   # a second fold the archive does not hold
    shutil.copy(ck, results / "Dataset042_Tiny" / MODEL / "fold_0/checkpoint_final.pth")
    fails(install_main, [str(archive)], capsys, "is installed already; --overwrite replaces it")
    assert (results / "Dataset042_Tiny" / MODEL / "fold_0/checkpoint_final.pth").is_file()
    # killed after extracting, before the swap: the installed model is whole
    proc = run_python(f"from nndose.cli.model_sharing import install_main; install_main([{str(archive)!r}, '--overwrite'])",
                      kill_at="install:extracted")
    assert proc.returncode == -signal.SIGKILL
    assert (results / "Dataset042_Tiny" / MODEL / "fold_0/checkpoint_final.pth").is_file()
    assert any(p.name.startswith(".install.") for p in results.iterdir())   # the killed run's staging area
    run_ok(install_main, [str(archive), "--overwrite"], capsys)
    assert not (results / "Dataset042_Tiny" / MODEL / "fold_0").exists() and ck.is_file()
    assert not any(p.name.startswith(".") for p in results.iterdir())        # the stale staging area is gone


def test_a_finished_fold_is_never_trained_over(env, trained, capsys):
    fold = trained / "fold_all"
    before = (fold / "checkpoint_final.pth").read_bytes()
    fails(train_main, ["42", "3d_fullres", "all", *TRAIN_ONE], capsys, "holds a finished training run")
    assert (fold / "checkpoint_final.pth").read_bytes() == before
    assert len((fold / "training_log.txt").read_text().splitlines()) == 1
    fails(train_main, ["42", "3d_fullres", "3", "--c", *TRAIN_ONE], capsys, "has no run to continue")
    assert not (trained / "fold_3").exists()
    run_ok(train_main, ["42", "3d_fullres", "all", "--overwrite", *TRAIN_ONE], capsys)
    assert len((fold / "training_log.txt").read_text().splitlines()) == 1   # a clean folder, not appended
    fails(train_main, ["42", "3d_fullres", "all", "--c", "--overwrite", *TRAIN_ONE], capsys, "choose one")


def test_a_second_training_of_the_same_fold_is_refused(env, capsys):
    args = ["42", "3d_fullres", "all", "--epochs", "500", "--iterations_per_epoch", "2", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-c", "from nndose.cli.train import main; main()", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    lock = env / "nndose_results/Dataset042_Tiny" / MODEL / "fold_all/.training.lock"
    deadline = time.time() + 120
    while not lock.is_file() and time.time() < deadline:
        time.sleep(0.05)
    try:
        fails(train_main, args, capsys, f"is being trained by process {proc.pid}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # the lock went with the killed process: the next run trains (the lock file stays, unlocked)
    run_ok(train_main, ["42", "3d_fullres", "all", "--overwrite", *TRAIN_ONE], capsys)


# ----- archives ---------------------------------------------------------------------------------

def _patch_sizes(archive: Path, member: str, declared: int) -> None:
    """Make a zip member declare another uncompressed size (local header and central directory)."""
    data = bytearray(archive.read_bytes())
    name = member.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (pos := data.find(signature, start)) >= 0:
            name_at = pos + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                data[pos + offset:pos + offset + 4] = declared.to_bytes(4, "little")
            start = pos + 4
    archive.write_bytes(bytes(data))


def test_install_refuses_bombs_liars_and_oversized_archives(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    monkeypatch.setenv("nndose_results", str(results))
    member = "Dataset042_Tiny/a__b__c/fold_0/checkpoint_final.pth"
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(member, b"\0" * (64 * 2 ** 20))
    fails(install_main, [str(bomb)], capsys, "would expand")
    liar = tmp_path / "liar.zip"
    with zipfile.ZipFile(liar, "w", zipfile.ZIP_STORED) as z:
        z.writestr("Dataset042_Tiny/a__b__c/plans.json", "{}" * 5000)
    _patch_sizes(liar, "Dataset042_Tiny/a__b__c/plans.json", 100)
    line = fails(install_main, [str(liar)], capsys, "Dataset042_Tiny/a__b__c/plans.json")
    assert "larger than it declares" in line or "corrupt member" in line
    import nndose.model_sharing as sharing
    monkeypatch.setattr(sharing, "MAX_MODEL_BYTES", 1000)
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as z:
        z.writestr(member, os.urandom(5000))
    fails(install_main, [str(big)], capsys, "more than a model may hold")
    assert not results.exists() or tree(results) == set()


# ----- no wrong dose ----------------------------------------------------------------------------

@pytest.mark.parametrize("step", ["-1", "0", "5", "nan"])
def test_step_size_outside_zero_to_one_is_refused(env, trained, capsys, tmp_path, step):
    fails(predict_main, ["-i", str(env / "nndose_raw/Dataset042_Tiny/casesTs"), "-o", str(tmp_path / "p"), "-d", "42",
                         "-c", "3d_fullres", "--step_size", step], capsys, "--step_size")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("value", [np.nan, -0.5])
def test_no_dose_is_written_that_holds_nan_or_negative_values(env, trained, capsys, tmp_path, monkeypatch, value):
    from nndose.inference.predictor import DosePredictor
    original = DosePredictor.predict_case

    def broken(self, case):
        dose, spread = original(self, case)
        dose[dose.shape[0] // 2] = value
        return dose, spread
    monkeypatch.setattr(DosePredictor, "predict_case", broken)
    fails(predict_main, ["-i", str(env / "nndose_raw/Dataset042_Tiny/casesTs"), "-o", str(tmp_path / "p"), "-d", "42",
                         "-c", "3d_fullres"], capsys, "nothing was written")
    assert not (tmp_path / "p").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_interrupted_replan_is_refused_by_training_and_a_rerun_heals_it(env, capsys):
    raw = env / "nndose_raw"
    shutil.copytree(raw / "Dataset042_Tiny", raw / "Dataset045_Replan")
    small = ["--base_features", "4", "--max_features", "16", "--encoder_blocks", "1", "--max_patch", "16"]
    run_ok(plan_main, ["-d", "45", "-c", "3d_fullres", "-np", "1", *small], capsys)
    snippet = ("from nndose.cli.plan_and_preprocess import main; "
               f"main(['-d', '45', '-c', '3d_fullres', '-np', '1', '--no_beam_channels', *{small!r}])")
    proc = run_python(snippet, kill_at="plan_and_preprocess:data_published")
    assert proc.returncode == -signal.SIGKILL
    fails(train_main, ["45", "3d_fullres", "all", *TRAIN_ONE], capsys, "do not match the plan's 3d_fullres")
    run_ok(plan_main, ["-d", "45", "-c", "3d_fullres", "-np", "1", "--no_beam_channels", *small], capsys)
    run_ok(train_main, ["45", "3d_fullres", "all", *TRAIN_ONE], capsys)
    shutil.rmtree(raw / "Dataset045_Replan")


# ----- physically impossible input --------------------------------------------------------------

def _edit_dose(case: Path, edit) -> None:
    from nndose.io.volumes import read_volume
    dose, grid = read_volume(case / "dose.nii.gz")
    write_volume(case / "dose.nii.gz", edit(dose).astype(np.float32), grid)


def _one_voxel(dose):
    dose[tuple(s // 2 for s in dose.shape)] = 1e6
    return dose


@pytest.mark.parametrize("edit,needle", [
    (lambda d: np.full_like(d, 1e6), "D95 is 1e+06 Gy, 1.5e+04 x its prescription of 66 Gy"),
    (_one_voxel, "maximum dose 1e+06 Gy is over 1.5 x the highest prescription"),
    (lambda d: np.zeros_like(d), "the dose is zero everywhere"),
    (lambda d: d * 100, "is the dose in cGy?"),
    (lambda d: d / 35, "x its prescription of 66 Gy"),                    # one fraction's dose, not the plan's
])
def test_impossible_doses_are_refused_by_verification_and_planning(template_dataset, nndose_env, capsys, edit, needle):
    from nndose.cli.verify_dataset import main as verify_main
    _edit_dose(template_dataset / "casesTr/case_000", edit)
    code, _, err = run_command(verify_main, ["-d", "0", "-np", "1"], capsys)
    assert code == 2 and needle in err, err
    fails(plan_main, ["-d", "0", "-np", "1"], capsys, needle)
    assert tree(nndose_env["nndose_preprocessed"]) == set()


@pytest.mark.parametrize("dose_gy,fractions,passes,refused", [
    (20.0, 1, 40.0, 51.0),      # radiosurgery prescribed to the 50 % isodose peaks at 2 x: up to 2.5 x passes
    (50.0, 5, 120.0, 126.0),    # SBRT, 10 Gy per fraction
    (60.0, 30, 89.0, 91.0),     # 2 Gy per fraction: up to 1.5 x
])
def test_the_highest_plausible_peak_depends_on_the_dose_per_fraction(dose_gy, fractions, passes, refused):
    from nndose.io.plan_file import Machine, Prescription, StaticBeam, TreatmentPlan
    from nndose.io.raw_dataset import dose_problems
    plan = TreatmentPlan("brain", "IMRT", Machine("m", 1000.0, 6.0), (Prescription("PTV", dose_gy, fractions),),
                         (0.0, 0.0, 0.0), (StaticBeam(0.0),), ())
    target = np.zeros((10, 10, 10), bool)
    target[2:8, 2:8, 2:8] = True
    dose = np.where(target, dose_gy, 1.0).astype(np.float32)
    dose[5, 5, 5] = passes
    assert dose_problems(dose, {"PTV": target}, plan, "c") == []
    dose[5, 5, 5] = refused
    [problem] = dose_problems(dose, {"PTV": target}, plan, "c")
    limit = "2.5" if dose_gy / fractions >= 5 else "1.5"
    assert problem.startswith(f"c: maximum dose {refused:g} Gy is over {limit} x the highest prescription ({dose_gy:g} Gy")


@pytest.mark.parametrize("edit,needle", [
    (lambda p: p["beams"][0].update(couch_deg=200.0), "couch_deg=200.0 is not a couch rotation"),
    (lambda p: p["prescriptions"][0].update(dose_gy=200.0, fractions=1), "200 Gy in 1 fraction(s)"),
    (lambda p: p["prescriptions"][0].update(fractions=1000000), "fractions=1e+06 is more than any course has"),
])
def test_impossible_plans_are_refused(template_dataset, capsys, edit, needle):
    from nndose.cli.verify_dataset import main as verify_main
    plan_file = template_dataset / "casesTr/case_000/plan.json"
    plan = json.loads(plan_file.read_text())
    edit(plan)
    plan_file.write_text(json.dumps(plan))
    code, _, err = run_command(verify_main, ["-d", "0", "-np", "1"], capsys)
    assert code == 2 and needle in err, err


def test_a_case_in_both_splits_is_a_leak(template_dataset, nndose_env, capsys):
    from nndose.cli.verify_dataset import main as verify_main
    shutil.copytree(template_dataset / "casesTr/case_000", template_dataset / "casesTs/case_000")
    code, _, err = run_command(verify_main, ["-d", "0", "-np", "1"], capsys)
    assert code == 2 and "case case_000 is in both casesTr and casesTs" in err
    fails(plan_main, ["-d", "0", "-np", "1"], capsys, "case case_000 is in both casesTr and casesTs")
    assert tree(nndose_env["nndose_preprocessed"]) == set()


def test_dicom_conversion_refuses_what_verification_would(nndose_env, tmp_path, capsys):
    import pydicom
    src = tmp_path / "dicom"
    dh.write_patient(src / "good", "GOOD")
    for pid, edit in (("SAD0", lambda p: setattr(p.BeamSequence[0], "SourceAxisDistance", 0.0)),
                      ("HIGH", lambda p: setattr(p.DoseReferenceSequence[0], "TargetPrescriptionDose", 500.0))):
        dh.write_patient(src / pid, pid)
        plan = pydicom.dcmread(src / pid / "RP.dcm")
        edit(plan)
        plan.save_as(src / pid / "RP.dcm")
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(dh.STRUCTURE_MAP))
    code, out, err = run_command(convert_dicom_main, ["-i", str(src), "-d", "7", "--structure_map", str(mapping)], capsys)
    assert code == 1 and "converted 1 patient(s)" in out, err
    assert "SAD0: plan.json: machine: sad_mm=0.0 outside 300..2000 mm" in err
    assert "HIGH: plan.json: prescriptions[0]: dose_gy=500.0 outside (0, 200] Gy" in err
    ds = nndose_env["nndose_raw"] / "Dataset007_DICOM"
    assert sorted(p.name for p in (ds / "casesTr").iterdir()) == ["GOOD"]
    from nndose.verification import verify_dataset
    assert verify_dataset(ds, progress=False) == []


def test_evaluate_says_how_many_references_lack_a_prediction(env, trained, capsys, tmp_path):
    raw = env / "nndose_raw/Dataset042_Tiny"
    refs = tmp_path / "refs" / "casesTs"
    for name in ("a", "b", "c"):
        shutil.copytree(raw / "casesTs/phantom_005", refs / name)
    shutil.copy(raw / "dataset.json", refs.parent / "dataset.json")
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(raw / "casesTs/phantom_005/dose.nii.gz", pred / "a.nii.gz")
    fails(evaluate_main, ["-ref", str(refs), "-pred", str(pred)], capsys, "2 of 3 reference case(s) have no prediction")
    assert not (pred / "summary.json").exists()
    out = run_ok(evaluate_main, ["-ref", str(refs), "-pred", str(pred), "--allow_missing"], capsys)
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["missing_predictions"] == ["b", "c"] and "2 reference case(s) have no prediction" in out
    assert summary["aggregate"]["dose_score"] == 0.0                  # the one prediction is the reference itself


def _model_zip(env, capsys, tmp_path) -> Path:
    archive = tmp_path / "model.zip"
    run_ok(export_main, ["-d", "42", "-c", "3d_fullres", "-o", str(archive)], capsys)
    return archive


def _rewrite(archive: Path, out: Path, member_suffix: str, content: bytes | None) -> Path:
    """A copy of the archive with the member ending in member_suffix replaced (None: left out)."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith(member_suffix):
                if content is not None:
                    dst.writestr(info.filename, content)
            else:
                dst.writestr(info.filename, src.read(info))
    return out


def _checkpoint_bytes(obj) -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_install_refuses_unusable_models(env, trained, capsys, tmp_path, monkeypatch):
    archive = _model_zip(env, capsys, tmp_path)
    state = torch.load(trained / "fold_all/checkpoint_final.pth", weights_only=True)
    foreign = {**state, "network": {**state["network"], "extra.weight": torch.zeros(3)}}
    other_channels = {**state, "channels": state["channels"][:-1]}
    cases = [
        ("dataset.json", None, "dataset.json: file not found"),
        ("dataset.json", b"{not json", "dataset.json: not valid JSON"),
        ("plans.json", b'{"plans_version": 99}', "nndosePlans__3d_fullres/plans.json: plan version 99 is not supported"),
        ("checkpoint_final.pth", _checkpoint_bytes([1, 2, 3]), "not an nndose checkpoint"),
        ("checkpoint_final.pth", _checkpoint_bytes(foreign), "weights do not fit the plan's network"),
        ("checkpoint_final.pth", _checkpoint_bytes(other_channels), "its channels differ from the plan's"),
        ("checkpoint_final.pth", b"truncated", "cannot load checkpoint"),
    ]
    results = tmp_path / "installed"
    monkeypatch.setenv("nndose_results", str(results))
    for i, (member, content, needle) in enumerate(cases):
        bad = _rewrite(archive, tmp_path / f"bad{i}.zip", member, content)
        fails(install_main, [str(bad)], capsys, needle)
        assert not results.exists(), needle


# ----- one line instead of a traceback ----------------------------------------------------------

@pytest.mark.parametrize("value", ["ten", None, -1])
def test_num_training_must_be_a_whole_number(template_dataset, capsys, value):
    from nndose.cli.verify_dataset import main as verify_main
    info = json.loads((template_dataset / "dataset.json").read_text())
    (template_dataset / "dataset.json").write_text(json.dumps({**info, "numTraining": value}))
    code, _, err = run_command(verify_main, ["-d", "0", "-np", "1"], capsys)
    assert code == 2 and f"numTraining must be a whole number >= 0, got {value!r}" in err and "Traceback" not in err


def test_broken_model_folders_and_splits_are_one_line(env, trained, capsys, tmp_path):
    args = ["-i", str(env / "nndose_raw/Dataset042_Tiny/casesTs"), "-o", str(tmp_path / "p"), "-d", "42", "-c", "3d_fullres"]
    dataset_json = trained / "dataset.json"
    saved = dataset_json.read_bytes()
    dataset_json.unlink()
    fails(predict_main, args, capsys, "dataset.json: file not found")
    dataset_json.write_text("{oops")
    fails(predict_main, args, capsys, "dataset.json: not valid JSON")
    dataset_json.write_bytes(saved)
    ck = trained / "fold_all/checkpoint_final.pth"
    saved = ck.read_bytes()
    torch.save([1, 2, 3], ck)
    fails(predict_main, args, capsys, "not an nndose checkpoint")
    ck.write_bytes(saved[: len(saved) // 2])
    line = fails(predict_main, args, capsys, "cannot load checkpoint (truncated, or not an nndose checkpoint)")
    assert line.endswith("use checkpoint_best.pth (-chk)")
    ck.write_bytes(saved)
    fails(predict_main, [*args, "-f", "7"], capsys, "fold '7' does not exist: folds are 0..4 or 'all'")
    assert not (tmp_path / "p").exists()
    splits = env / "nndose_preprocessed/Dataset042_Tiny/splits_final.json"
    splits.write_text('{"not": "splits"}')
    try:
        fails(train_main, ["42", "3d_fullres", "0", *TRAIN_ONE], capsys, "splits_final.json: not a splits file")
    finally:
        splits.unlink()


def test_output_paths_that_are_files_are_refused(env, trained, capsys, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("keep me")
    raw = env / "nndose_raw/Dataset042_Tiny"
    fails(predict_main, ["-i", str(raw / "casesTs"), "-o", str(a_file), "-d", "42", "-c", "3d_fullres"], capsys,
          "exists and is not a folder")
    fails(predict_main, ["-i", str(raw / "casesTs/phantom_005"), "-o", str(tmp_path / "p"), "-d", "42",
                         "-c", "3d_fullres"], capsys, "is a case folder; -i takes the folder that holds the case folders")
    fails(export_openkbp_main, ["-i", str(raw / "casesTs"), "-o", str(a_file)], capsys, "no <case>.nii.gz predictions")
    fails(export_main, ["-d", "42", "-c", "3d_fullres", "-o", str(tmp_path)], capsys, "is a folder")
    assert a_file.read_text() == "keep me"


def test_a_case_without_body_and_without_tissue_is_one_line(template_dataset, nndose_env, capsys):
    from nndose.cli.verify_dataset import main as verify_main
    from nndose.io.volumes import read_volume
    case = template_dataset / "casesTr/case_000"
    (case / "structures/Body.nii.gz").unlink()
    ct, grid = read_volume(case / "ct.nii.gz")
    write_volume(case / "ct.nii.gz", np.full_like(ct, -1000), grid)
    code, _, err = run_command(verify_main, ["-d", "0", "-np", "1"], capsys)
    assert code == 2 and "case_000: no body contour and no CT voxel above -500 HU" in err
    fails(plan_main, ["-d", "0", "-np", "1"], capsys, "no body contour and no CT voxel above -500 HU")
    assert tree(nndose_env["nndose_preprocessed"]) == set()


# ----- leftovers and messages -------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_leftovers_of_killed_runs_are_cleaned_by_the_next_run(env, trained, capsys, tmp_path):
    from nndose.io.atomic import owner_tag
    dead, alive = owner_tag(_dead_pid()), owner_tag(os.getppid())
    out = tmp_path / "pred"
    out.mkdir()
    leftovers = [out / f".phantom_005.nii.gz.{dead}.abcdefgh.tmp.nii.gz",
                 tmp_path / f".pred.predict.{dead}.abcdefgh.partial",
                 trained / "fold_all" / f".progress.png.{dead}.abcdefgh.tmp.png",
                 env / "nndose_preprocessed/Dataset042_Tiny" / f".nndosePlans_3d_fullres.{dead}.abcdefgh.partial"]
    kept = [out / f".phantom_005.nii.gz.{alive}.abcdefgh.tmp.nii.gz",               # a running process's file
            out / f".phantom_005.nii.gz.{dead.split('@')[0]}@000000.abcdefgh.tmp.nii.gz"]   # another machine's
    for path in leftovers + kept:
        path.mkdir() if path.name.endswith(".partial") else path.write_bytes(b"x")
    run_ok(predict_main, ["-i", str(env / "nndose_raw/Dataset042_Tiny/casesTs"), "-o", str(out), "-d", "42",
                          "-c", "3d_fullres", "--disable_tta"], capsys)
    run_ok(train_main, ["42", "3d_fullres", "all", "--val", "--device", "cpu"], capsys)
    small = ["--base_features", "4", "--max_features", "16", "--encoder_blocks", "1", "--max_patch", "16"]
    run_ok(plan_main, ["-d", "42", "-c", "3d_fullres", "-np", "1", *small], capsys)
    assert [p for p in leftovers if p.exists()] == [] and all(p.exists() for p in kept)


def test_a_killed_first_conversion_does_not_block_the_next(nndose_env, tmp_path, capsys):
    synthetic_patient(tmp_path / "in" / "pt_1")
    snippet = f"from nndose.cli.convert_openkbp import main; main(['-i', {str(tmp_path / 'in')!r}, '-d', '5', '-np', '1'])"
    proc = run_python(snippet, kill_at="convert:cases_staged")
    assert proc.returncode == -signal.SIGKILL
    run_ok(convert_openkbp_main, ["-i", str(tmp_path / "in"), "-d", "5", "-np", "1"], capsys)
    ds = nndose_env["nndose_raw"] / "Dataset005_OpenKBP"
    assert sorted(p.name for p in ds.iterdir()) == ["casesTr", "dataset.json"]


def test_a_raw_pickle_checkpoint_prints_no_torch_warnings(tmp_path, capsys):
    import pickle
    from nndose.errors import NndoseError
    from nndose.io.checkpoints import load_checkpoint
    path = tmp_path / "raw.pth"
    path.write_bytes(pickle.dumps({"network": {"w": [1.0]}}))
    with pytest.raises(NndoseError, match="cannot load checkpoint"):
        load_checkpoint(path)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_outputs_respect_the_umask(env, trained, capsys, tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        out = tmp_path / "pred"
        run_ok(predict_main, ["-i", str(env / "nndose_raw/Dataset042_Tiny/casesTs"), "-o", str(out), "-d", "42",
                              "-c", "3d_fullres", "--disable_tta", "--save_spread"], capsys)
        archive = tmp_path / "model.zip"
        run_ok(export_main, ["-d", "42", "-c", "3d_fullres", "-o", str(archive)], capsys)
        monkeypatch.setenv("nndose_results", str(tmp_path / "installed"))
        run_ok(install_main, [str(archive)], capsys)
    finally:
        os.umask(old)
    model = tmp_path / "installed/Dataset042_Tiny" / MODEL
    for path, mode in ((out / "phantom_005.nii.gz", 0o644), (out / "spread", 0o755), (archive, 0o644),
                       (model, 0o755), (model / "fold_all/checkpoint_final.pth", 0o644)):
        assert path.stat().st_mode & 0o777 == mode, (path, oct(path.stat().st_mode))
