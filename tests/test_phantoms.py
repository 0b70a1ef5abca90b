"""The built-in phantom dataset: sites, prescriptions, modalities, physics of its dose, determinism."""
import numpy as np
import pytest

from nndose.cli.generate_phantoms import main as generate_main
from nndose.datasets.phantom_anatomy import SITES
from nndose.datasets.phantom_dose_engine import STYLES
from nndose.datasets.phantoms import make_case
from nndose.io.volumes import read_volume
from nndose.verification import verify_dataset
from tests.conftest import run_command, tree


@pytest.fixture(scope="module")
def cases():
    return [make_case(i, 0, STYLES["standard"]) for i in range(12)]


def test_all_sites_and_modalities_and_a_wide_prescription_range(cases):
    plans = [p for _, p, _ in cases]
    assert {p.site for p in plans} == set(SITES)
    assert {p.modality for p in plans} == {"IMRT", "VMAT", "3D-CRT"}
    assert any(len(p.prescriptions) == 2 for p in plans)  # simultaneous integrated boost
    assert any(p.arcs for p in plans) and any(len(p.beams) >= 5 for p in plans)
    rx = [r.dose_gy for p in plans for r in p.prescriptions]
    assert min(rx) <= 20 and max(rx) >= 60


def test_dose_reaches_prescription_and_stays_in_body(cases):
    for anatomy, plan, dose in cases:
        primary = max(plan.prescriptions, key=lambda p: p.dose_gy)
        d = dose[anatomy.structures[primary.structure]]
        # D95 = Rx, by its definition: 95 % of the target receives the prescription (to one voxel)
        voxel = 1.0 / d.size
        assert np.mean(d >= 0.999 * primary.dose_gy) >= 0.95 - voxel
        assert np.mean(d >= 1.001 * primary.dose_gy) <= 0.95 + voxel
        assert d.mean() < 1.25 * primary.dose_gy
        assert dose[~anatomy.structures["Body"]].max() == 0.0
        assert np.isfinite(dose).all() and dose.min() >= 0


def test_dose_depends_on_beam_geometry():
    a, plan, dose = make_case(4, 0, STYLES["standard"])  # head_neck, opposed laterals (3D-CRT)
    assert plan.modality == "3D-CRT" and {b.gantry_deg for b in plan.beams} == {90.0, 270.0}
    body = a.structures["Body"]
    z, y, x = np.argwhere(a.structures["PTV_high"]).mean(0).round().astype(int)
    # lateral fields: high dose left and right of the target at its depth, little anterior of it
    lateral = dose[z, y, :][body[z, y, :]]
    column = dose[z, :, x][body[z, :, x]]
    assert np.percentile(lateral, 10) > 3 * np.percentile(column, 10)


def test_organ_sparing_style_lowers_organ_dose():
    standard = make_case(0, 0, STYLES["standard"])
    sparing = make_case(0, 0, STYLES["sparing"])
    organs = ["Parotid_L", "Parotid_R", "SpinalCord"]
    s = standard[0].structures
    assert sum(sparing[2][s[o]].mean() for o in organs) < sum(standard[2][s[o]].mean() for o in organs)


def test_generation_is_deterministic_and_verifies(nndose_env, capsys):
    code, _, err = run_command(generate_main, ["-d", "9", "-n", "5", "--seed", "3", "-np", "1"], capsys)
    assert code == 0, err
    code, _, err = run_command(generate_main, ["-d", "10", "-n", "5", "--seed", "3", "-np", "2", "--name", "B"], capsys)
    assert code == 0, err
    a = nndose_env["nndose_raw"] / "Dataset009_Phantoms"
    b = nndose_env["nndose_raw"] / "Dataset010_B"
    assert len(list((a / "casesTr").iterdir())) == 4 and len(list((a / "casesTs").iterdir())) == 1
    for case in ("casesTr/phantom_000", "casesTs/phantom_004"):
        assert np.array_equal(read_volume(a / case / "dose.nii.gz")[0], read_volume(b / case / "dose.nii.gz")[0])
    assert verify_dataset(a, progress=False) == []


def test_generate_refuses_existing_dataset(nndose_env, capsys):
    (nndose_env["nndose_raw"] / "Dataset009_Other").mkdir()
    code, _, err = run_command(generate_main, ["-d", "9", "-n", "3"], capsys)
    assert code == 2 and "already exists" in err
    assert tree(nndose_env["nndose_raw"]) == {"Dataset009_Other"}


def test_sites_and_modalities_restrict_the_mix():
    plans = [make_case(i, 0, STYLES["standard"], sites=("prostate",), modalities=("VMAT", "IMRT"))[1] for i in range(6)]
    assert {p.site for p in plans} == {"prostate"}
    assert {p.modality for p in plans} == {"VMAT", "IMRT"}
    # the default mix is unchanged by the options: the same case as before for the same seed
    assert make_case(2, 0, STYLES["standard"])[1] == make_case(2, 0, STYLES["standard"], sites=SITES)[1]


def test_generate_refuses_unknown_site_or_modality(nndose_env, capsys):
    for option, value in (("--sites", "brain"), ("--modalities", "protons")):
        code, _, err = run_command(generate_main, ["-d", "9", "-n", "3", option, value], capsys)
        assert code == 2 and value in err and len(err.strip().splitlines()) == 1
        assert tree(nndose_env["nndose_raw"]) == set()
