import json

import numpy as np
import pytest

from nndose.cli.verify_dataset import main as verify_main
from nndose.io.volumes import Grid, read_volume, write_volume
from tests.conftest import run_command

CASE = "casesTr/case_000"


def test_template_passes_verification(template_dataset, capsys):
    code, out, err = run_command(verify_main, ["-d", "0", "-np", "1"], capsys)
    assert code == 0, err
    assert "passed verification" in out


def _edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _fault_nan_ct(ds):
    ct, g = read_volume(ds / CASE / "ct.nii.gz")
    ct[3, 3, 3] = np.nan
    write_volume(ds / CASE / "ct.nii.gz", ct, g)


def _fault_grid(ds):
    dose, g = read_volume(ds / CASE / "dose.nii.gz")
    write_volume(ds / CASE / "dose.nii.gz", dose, Grid(g.shape_zyx, g.spacing_xyz, (0.0, 0.0, 0.0)))


def _fault_nonbinary(ds):
    m, g = read_volume(ds / CASE / "structures/SpinalCord.nii.gz")
    write_volume(ds / CASE / "structures/SpinalCord.nii.gz", m * 2, g)


def _fault_corrupt(ds):
    (ds / CASE / "structures/Body.nii.gz").write_bytes(b"not a nifti file")


@pytest.mark.parametrize("fault,needle", [
    (lambda ds: (ds / CASE / "ct.nii.gz").unlink(), "case_000/ct.nii.gz: file not found"),
    (_fault_nan_ct, "case_000/ct.nii.gz: CT holds NaN"),
    (_fault_grid, "case_000/dose.nii.gz: grid"),
    (_fault_nonbinary, "SpinalCord.nii.gz: mask is not binary"),
    (_fault_corrupt, "case_000/structures/Body.nii.gz: cannot read"),
    (lambda ds: (ds / CASE / "structures/SpinalCord.nii.gz").rename(ds / CASE / "structures/Cord.nii.gz"),
     "unknown structure 'Cord'"),
    (lambda ds: _edit_json(ds / CASE / "plan.json", lambda d: d["prescriptions"].pop()), "target PTV_low has no prescription"),
    (lambda ds: _edit_json(ds / CASE / "plan.json", lambda d: d.update(modality="PROTON")), "unknown modality 'PROTON'"),
    (lambda ds: _edit_json(ds / CASE / "plan.json", lambda d: d["beams"][0].update(gantry_deg=400)), "gantry_deg=400"),
    (lambda ds: _edit_json(ds / CASE / "plan.json", lambda d: d.update(isocenter_mm=[900, 0, 0])), "isocenter"),
    (lambda ds: (ds / CASE / "dose.nii.gz").unlink(), "case_000/dose.nii.gz: file not found"),
])
def test_each_fault_gives_one_line_naming_case_and_file(template_dataset, capsys, fault, needle):
    fault(template_dataset)
    code, out, err = run_command(verify_main, ["-d", "0", "-np", "1"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line]
    assert any(needle in line for line in lines), err
    assert "Traceback" not in err
    assert lines[-1].startswith("nndose_verify_dataset: error:")


def test_missing_dataset_is_one_line(nndose_env, capsys):
    code, _, err = run_command(verify_main, ["-d", "5"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no raw dataset 005" in err


def test_test_cases_may_lack_dose(template_dataset):
    from nndose.verification import verify_dataset
    assert not (template_dataset / "casesTs/case_100/dose.nii.gz").exists()
    assert verify_dataset(template_dataset, progress=False) == []
