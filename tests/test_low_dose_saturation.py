"""The low-dose saturation benchmark: its summary by hand, its OpenKBP reader against the volumes the
patients were written from, and its raw-dataset reader against nibabel's reading of the same files."""
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from benchmarks.low_dose_saturation import openkbp_values, raw_values, saturation
from tests.conftest import REPO, TEMPLATE
from tests.openkbp_helpers import synthetic_patient


def test_saturation_by_hand():
    s = saturation({"A": [(100.0, 30.0), (96.0, 20.0), (50.0, 10.0)], "B": [(94.9, 1.0)]})
    assert s["A"] == {"plans": 3, "v5gy_at_least_95_percent": pytest.approx(2 / 3),
                      "v5gy_at_least_99.9_percent": pytest.approx(1 / 3), "median_v5gy_percent": 96.0,
                      "median_dmean_gy": 20.0}
    assert s["B"]["v5gy_at_least_95_percent"] == 0.0


def test_openkbp_values_match_the_written_volumes(tmp_path):
    volumes = [synthetic_patient(tmp_path / f"pt_{i}", seed=i) for i in (1, 2)]
    n, values = openkbp_values(tmp_path)
    assert n == 2 and sorted(values) == ["LeftParotid", "SpinalCord"]
    for organ in values:
        expected = [(100.0 * np.mean(v["dose"][v[organ]] >= 5.0), float(v["dose"][v[organ]].mean())) for v in volumes]
        assert np.allclose(values[organ], expected, atol=1e-4)


def test_raw_values_match_nibabel():
    n, values = raw_values(TEMPLATE)
    case = TEMPLATE / "casesTr" / "case_000"
    dose = np.asarray(nib.load(case / "dose.nii.gz").dataobj, dtype=np.float64)
    cord = np.asarray(nib.load(case / "structures" / "SpinalCord.nii.gz").dataobj) > 0
    assert n == 1 and cord.any() and list(values) == ["SpinalCord"]   # Parotid_L has no mask in the template case
    (v5, dmean), = values["SpinalCord"]
    assert v5 == pytest.approx(100.0 * np.mean(dose[cord] >= 5.0))
    assert dmean == pytest.approx(dose[cord].mean(), rel=1e-5)


@pytest.mark.parametrize("bad, message", [(["--openkbp", "/no/such"], "/no/such: neither validation-pats/ nor openkbp-validation"),
                                          (["--raw", "/no/such/Dataset001_X"], "/no/such/Dataset001_X/dataset.json: file not found"),
                                          (["--splits", "test"], "invalid choice: 'test'")])
def test_bad_sources_refused_in_one_line_before_any_is_read(bad, message, tmp_path):
    openkbp = tmp_path / "openkbp"
    (openkbp / "validation-pats").mkdir(parents=True)   # the validation split, unpacked (no patients needed)
    run = subprocess.run([sys.executable, "-m", "benchmarks.low_dose_saturation", "-o", str(tmp_path / "r.json"),
                          "--openkbp", str(openkbp), *bad], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("benchmarks.low_dose_saturation: error: ")
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists() and "plan/s" not in run.stderr   # no progress bar: nothing read
