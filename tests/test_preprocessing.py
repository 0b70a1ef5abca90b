"""Preprocessing: resampling geometry, masks that do not vanish, channels, the whole command."""
import json

import numpy as np
import pytest

from nndose.cli.plan_and_preprocess import main as plan_main
from nndose.io.plan_file import parse_plan
from nndose.io.volumes import Grid, read_volume
from nndose.preprocessing.channels import prescription_map
from nndose.preprocessing.resampling import grid_with_spacing, resample_mask, resample_to_grid
from nndose.preprocessing.storage import list_preprocessed_cases, load_case
from tests.conftest import run_command, tree


def test_resampling_keeps_physical_positions():
    src = Grid((10, 12, 14), (2.0, 3.0, 4.0), (-10.0, 5.0, 7.0))
    pts = src.physical_points()
    ramp = (0.5 * pts[..., 0] - 0.25 * pts[..., 1] + pts[..., 2]).astype(np.float32)
    dst = grid_with_spacing(src, [2.5, 2.0, 3.0])
    out = resample_to_grid(ramp, src, dst, order=1)
    q = dst.physical_points()
    expected = 0.5 * q[..., 0] - 0.25 * q[..., 1] + q[..., 2]
    lo, hi = src.bounds_xyz()
    inside = np.all((q >= lo) & (q <= hi), axis=-1)
    assert np.abs(out - expected)[inside].max() < 1e-3
    # same physical box: the extent in mm is preserved to within a voxel
    assert np.allclose(np.array(dst.shape_zyx) * dst.spacing_zyx, np.array(src.shape_zyx) * src.spacing_zyx,
                       atol=dst.spacing_zyx.max())


def test_small_structure_survives_coarse_resampling():
    src = Grid((20, 20, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    mask = np.zeros(src.shape_zyx, bool)
    mask[9:11, 9:11, 9:11] = True  # 8 mm^3, smaller than one target voxel
    dst = grid_with_spacing(src, [4.0, 4.0, 4.0])
    out = resample_mask(mask, src, dst)
    assert out.sum() >= 1
    big = np.zeros(src.shape_zyx, bool)
    big[4:16, 4:16, 4:16] = True
    assert abs(resample_mask(big, src, dst).sum() * 64 - big.sum()) <= 0.35 * big.sum()


def test_prescription_map_overlap_takes_the_highest():
    plan = parse_plan({"site": "s", "modality": "IMRT", "machine": {"name": "m", "sad_mm": 1000, "energy_mv": 6},
                       "prescriptions": [{"structure": "A", "dose_gy": 70, "fractions": 35},
                                         {"structure": "B", "dose_gy": 56, "fractions": 35}],
                       "isocenter_mm": [0, 0, 0], "beams": [{"gantry_deg": 0}]})
    a = np.zeros((1, 1, 4), bool)
    b = np.zeros((1, 1, 4), bool)
    a[..., 1:3] = True
    b[..., 2:4] = True
    assert prescription_map({"A": a, "B": b}, plan, a.shape).ravel().tolist() == pytest.approx([0, 1, 1, 56 / 70])


def test_plan_and_preprocess_template(template_dataset, nndose_env, capsys):
    code, out, err = run_command(plan_main, ["-d", "0", "-np", "1", "--verify"], capsys)
    assert code == 0, err
    pre = nndose_env["nndose_preprocessed"] / "Dataset000_Template"
    plans = json.loads((pre / "nndosePlans.json").read_text())
    fp = json.loads((pre / "dataset_fingerprint.json").read_text())
    assert fp["prescriptions"]["levels_gy"] == [54.0, 66.0] and fp["modalities"] == {"VMAT": 1}
    assert fp["structures"]["Parotid_L"]["frequency"] == 0.0 and fp["non_coplanar_cases"] == 1
    conf = plans["configurations"]["3d_fullres"]
    folder = pre / conf["data_identifier"]
    assert list_preprocessed_cases(folder) == ["case_000"]
    data, dose, props = load_case(folder, "case_000", mmap=False)
    channels = conf["channels"]
    assert data.shape[0] == len(channels) and dose.shape == (1,) + data.shape[1:]
    assert props["reference_dose_gy"] == 66.0
    # target = dose / reference dose; the prescription channel marks PTV_high with 1 and PTV_low with 54/66
    raw_dose, _ = read_volume(template_dataset / "casesTr/case_000/dose.nii.gz")
    assert dose.max() == pytest.approx(raw_dose.max() / 66.0, rel=0.05)
    rx = data[channels.index("prescription")]
    assert np.unique(rx).tolist() == pytest.approx([0.0, 54 / 66, 1.0])
    assert np.all(data[channels.index("organ_Parotid_L")] == 0)            # absent organ -> zeros
    body = data[channels.index("body")] > 0
    beam = data[channels.index("beam_dose")]
    assert beam[~body].max() == 0 and beam[rx == 1].mean() > beam[body & (rx == 0)].mean()
    # the case mixes a coplanar beam, a couch-turned beam and an arc (--beam_per_delivery splits them)
    assert fp["cases"][0]["deliveries"] == ["static", "arc", "noncoplanar"]
    assert np.all(dose[0][~body] == 0)
    # CT normalization from the fingerprint
    norm = plans["ct_normalization"]
    assert data[0].max() <= (norm["clip_high"] - norm["mean"]) / norm["std"] + 1e-4


def test_beam_per_delivery_channels_sum_to_the_single_beam_channel(template_dataset, nndose_env, capsys):
    """--beam_per_delivery on the template case (a coplanar beam, a couch-turned beam, an arc): three
    beam channels, each inside the body, whose sum is the default plan's beam channel."""
    pre = nndose_env["nndose_preprocessed"] / "Dataset000_Template"

    def preprocessed(*options):
        code, _, err = run_command(plan_main, ["-d", "0", "-np", "1", *options], capsys)
        assert code == 0, err
        conf = json.loads((pre / "nndosePlans.json").read_text())["configurations"]["3d_fullres"]
        data, _, _ = load_case(pre / conf["data_identifier"], "case_000", mmap=False)
        return conf["channels"], np.asarray(data)
    channels, single = preprocessed()
    beam, body = single[channels.index("beam_dose")], single[channels.index("body")] > 0
    channels, split = preprocessed("--beam_per_delivery")
    deliveries = ["beam_dose_static", "beam_dose_arc", "beam_dose_noncoplanar"]
    assert channels[-3:] == deliveries and "beam_dose" not in channels
    parts = [split[channels.index(d)] for d in deliveries]
    assert all(p[body].max() > 0 and p[~body].max() == 0 for p in parts)
    assert sum(parts) == pytest.approx(beam, abs=1e-4)


def test_bad_case_leaves_no_preprocessed_output(template_dataset, nndose_env, capsys):
    (template_dataset / "casesTr/case_000/structures/SpinalCord.nii.gz").write_bytes(b"\x00broken")
    code, _, err = run_command(plan_main, ["-d", "0", "-np", "1"], capsys)
    assert code == 2 and "SpinalCord.nii.gz: cannot read" in err and "Traceback" not in err
    assert tree(nndose_env["nndose_preprocessed"]) == set()


def test_verify_flag_lists_problems_and_writes_nothing(template_dataset, nndose_env, capsys):
    plan = template_dataset / "casesTr/case_000/plan.json"
    d = json.loads(plan.read_text())
    d["modality"] = "CyberKnife"
    plan.write_text(json.dumps(d))
    code, _, err = run_command(plan_main, ["-d", "0", "-np", "1", "--verify"], capsys)
    assert code == 2 and "unknown modality 'CyberKnife'" in err
    assert tree(nndose_env["nndose_preprocessed"]) == set()


def test_unknown_argument_is_refused(nndose_env, capsys):
    code, _, err = run_command(plan_main, ["-d", "0", "--gpu_memory_targt", "8"], capsys)
    assert code == 2 and "unrecognized arguments" in err and err.count("\n") == 1


@pytest.mark.parametrize("option", ["--max_batch", "--max_patch"])
def test_non_positive_sizes_are_refused(template_dataset, nndose_env, capsys, option):
    code, _, err = run_command(plan_main, ["-d", "0", "-np", "1", option, "0"], capsys)
    assert code == 2 and "must be positive" in err and err.count("\n") == 1
    assert tree(nndose_env["nndose_preprocessed"]) == set()
