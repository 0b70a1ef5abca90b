"""Plan QA core: flags against the fold ensemble, tolerance semantics, qa.json / qa.csv, the HTML report.

Every expected number below is worked out by hand from the doses the test builds (uniform or two-level
doses, so each DVH point is one of the levels; np.percentile interpolates between equal values)."""
import base64
import csv
import json
import shutil
import subprocess

import numpy as np
import pytest

from nndose.errors import NndoseError
from nndose.qa.compare import OAR_METRICS, Tolerance, compare_case, rank_cases
from nndose.qa.report import FLAG_COLOR, write_case_report, write_cohort_report
from nndose.qa.tables import write_case_outputs, write_cohort_outputs

VOXEL_MM3 = 1000.0  # 1 cc voxels: D0.1cc is the top voxel, n = max(1, round(100 / 1000)) = 1
SHAPE = (2, 8, 10)


def _masks():
    m = {n: np.zeros(SHAPE, bool) for n in ("Body", "PTV", "Rectum", "Bladder", "Femur", "Couch")}
    m["Body"][:] = True
    m["PTV"][:, 1:3, 2:8] = True      # 24 voxels
    m["Rectum"][:, 4:6, 2:8] = True   # 24 voxels: 12 at y = 4, 12 at y = 5
    m["Bladder"][:, 7, 2:8] = True    # 12 voxels; Femur stays empty
    m["Couch"][:, 0, :] = True        # unknown kind
    return m


KINDS = {"Body": "body", "PTV": "target", "Rectum": "oar", "Bladder": "oar", "Femur": "oar", "Couch": "support"}


def _ensemble():
    """PTV 60 Gy, rectum 16 Gy (y = 4) and 28 Gy (y = 5), bladder 10 Gy, elsewhere 2 Gy."""
    d = np.full(SHAPE, 2.0)
    d[:, 1:3, 2:8] = 60.0
    d[:, 4, 2:8], d[:, 5, 2:8] = 16.0, 28.0
    d[:, 7, 2:8] = 10.0
    return d


EVERY_OAR_METRIC = tuple(m.name for m in OAR_METRICS)


def _hand_case(name="case", rectum_excess_gy=5.0, organ_flag_metrics=("Dmean",)):
    """Folds = ensemble - 1, ensemble, ensemble + 1 Gy; clinical = ensemble + excess in the rectum."""
    masks, mean = _masks(), _ensemble()
    folds = [mean - 1.0, mean.copy(), mean + 1.0]
    clinical = mean + rectum_excess_gy * masks["Rectum"]
    qa = compare_case(name, clinical, folds, masks, KINDS, {"PTV": 60.0}, VOXEL_MM3, Tolerance(),
                      organ_flag_metrics=organ_flag_metrics)
    return qa, clinical, folds, masks


def test_organs_are_flagged_on_their_flag_metrics_only():
    """By default on Dmean; the other metrics, worse by as much, are shown and flag nothing."""
    qa, *_ = _hand_case()
    rectum = qa.structure("Rectum")
    assert qa.organ_flag_metrics == ("Dmean",) and qa.to_json()["organ_flag_metrics"] == ["Dmean"]
    assert [m.name for m in rectum.metrics if m.flagged] == ["Dmean"]
    assert [m.name for m in rectum.metrics if m.can_flag] == ["Dmean"]
    # the rule lets 27 pass up to max(interval 23, 22 + tolerance 1.8) = 23.8 Gy: 3.2 Gy beyond
    assert rectum.reason == ("Dmean 27.0 Gy vs predicted 22.0 Gy [21.0, 23.0]: 5.0 Gy more than achievable, "
                             "3.2 Gy beyond what the flag rule lets pass")
    assert rectum.metric("V30Gy").reason == "V30Gy 50.0 % vs predicted 0.0 %: shown, not a flag metric"   # the folds agree
    assert all(m.can_flag for m in qa.structure("PTV").metrics)   # targets: every metric
    on_v30, *_ = _hand_case(organ_flag_metrics=["V30Gy"])
    assert [m.name for m in on_v30.structure("Rectum").metrics if m.flagged] == ["V30Gy"]
    with pytest.raises(NndoseError, match="unknown organ flag metric D95; choose from Dmean, D0.1cc"):
        _hand_case(organ_flag_metrics=["D95"])
    with pytest.raises(NndoseError, match="organ flag metric Dmean named twice"):
        _hand_case(organ_flag_metrics=["Dmean", "Dmean"])


def test_excess_in_one_organ_flags_that_organ_only():
    qa, *_ = _hand_case(organ_flag_metrics=EVERY_OAR_METRIC)
    # targets first; body, the empty mask and the unknown kind skipped
    assert [s.name for s in qa.structures] == ["PTV", "Rectum", "Bladder"]
    assert qa.reference_dose_gy == 60.0
    rectum = qa.structure("Rectum")
    assert rectum.flagged and qa.flagged_organs == ("Rectum",) and qa.n_flagged_organs == 1
    assert {m.name for m in rectum.metrics if m.flagged} == {"Dmean", "D0.1cc", "D2", "V20Gy", "V30Gy"}
    # (clinical, predicted, lower, upper, excess, tolerance); dose tolerance min(2, 3 % of 60) = 1.8 Gy
    expected = {"Dmean": (27.0, 22.0, 21.0, 23.0, 5.0, 1.8),    # (12 * 21 + 12 * 33) / 24 = 27
                "D0.1cc": (33.0, 28.0, 27.0, 29.0, 5.0, 1.8),   # top voxel: the upper level
                "D2": (33.0, 28.0, 27.0, 29.0, 5.0, 1.8),
                "V5Gy": (100.0, 100.0, 100.0, 100.0, 0.0, 3.0),
                "V20Gy": (100.0, 50.0, 50.0, 50.0, 50.0, 3.0),  # 21 and 33 >= 20; 15/16/17 < 20 <= 27/28/29
                "V30Gy": (50.0, 0.0, 0.0, 0.0, 50.0, 3.0),      # 33 >= 30; 29 < 30
                "V40Gy": (0.0, 0.0, 0.0, 0.0, 0.0, 3.0)}
    got = {m.name: (m.clinical, m.predicted, m.lower, m.upper, m.excess, m.tolerance) for m in rectum.metrics}
    assert got.keys() == expected.keys()
    for name, values in expected.items():
        assert got[name] == pytest.approx(values), name
    assert rectum.metric("Dmean").reason == ("Dmean 27.0 Gy vs predicted 22.0 Gy [21.0, 23.0]: "
                                             "5.0 Gy more than achievable, 3.2 Gy beyond what the flag rule lets pass")
    assert rectum.reason.startswith(rectum.metric("Dmean").reason + "; D0.1cc 33.0 Gy")
    assert rectum.reason.count(";") == 4
    bladder, ptv = qa.structure("Bladder"), qa.structure("PTV")
    assert not bladder.flagged and bladder.reason.endswith("no worse than predicted")   # its closest metric
    assert (bladder.metric("Dmean").lower, bladder.metric("Dmean").upper) == (9.0, 11.0)
    assert not ptv.flagged and [m.name for m in ptv.metrics] == ["D95", "D98", "D2"]
    assert [(m.lower, m.predicted, m.upper, m.excess) for m in ptv.metrics] == [(59.0, 60.0, 61.0, 0.0)] * 3
    # sparing left: rectum 27 - max(23 (interval), 22 + 1.8 (tolerance)) = 3.2, bladder max(0, 10 - 11) = 0
    assert qa.sparing_left_gy == pytest.approx(3.2)


def _one_organ(clinical_gy, fold_offsets_gy, rx_gy, ensemble_gy=20.0):
    """A 40-voxel organ beside a target; the folds are the ensemble plus offsets that average to 0."""
    masks = {"PTV": np.zeros((1, 6, 10), bool), "Organ": np.zeros((1, 6, 10), bool)}
    masks["PTV"][0, :2], masks["Organ"][0, 2:] = True, True
    mean = np.where(masks["PTV"], rx_gy, ensemble_gy)
    folds = [mean + o * masks["Organ"] for o in fold_offsets_gy]
    clinical = np.where(masks["Organ"], clinical_gy, mean)
    qa = compare_case("c", clinical, folds, masks, {"PTV": "target", "Organ": "oar"}, {"PTV": rx_gy}, VOXEL_MM3)
    return qa.structure("Organ")


def test_tolerance_is_two_gy_or_three_percent_of_the_prescription_whichever_is_smaller():
    on_70 = _one_organ(21.5, [0.0], 70.0).metric("Dmean")   # min(2, 2.1) = 2 Gy
    assert (on_70.tolerance, on_70.excess, on_70.flagged) == pytest.approx((2.0, 1.5, False))
    assert on_70.lower == on_70.upper == on_70.predicted == 20.0  # one fold: the interval is the point
    assert on_70.reason.endswith("within the 2.0 Gy tolerance")
    on_40 = _one_organ(21.5, [0.0], 40.0).metric("Dmean")   # min(2, 1.2) = 1.2 Gy
    assert (on_40.tolerance, on_40.excess, on_40.flagged) == pytest.approx((1.2, 1.5, True))


def test_an_excess_inside_the_fold_interval_is_not_flagged():
    inside = _one_organ(22.5, [-3.0, 0.0, 3.0], 70.0).metric("Dmean")  # interval [17, 23]
    assert (inside.lower, inside.upper, inside.excess) == (17.0, 23.0, 2.5)
    assert not inside.flagged and inside.reason.endswith("inside the folds' interval")
    assert _one_organ(23.5, [-3.0, 0.0, 3.0], 70.0).metric("Dmean").flagged


def test_volume_tolerance_is_in_percentage_points():
    def v20(raised_voxels):  # organ at 19 Gy, some of its 40 voxels raised to 21 Gy
        masks_organ = np.zeros((1, 6, 10), bool)
        masks_organ[0, 2:] = True
        clinical = np.full(40, 19.0)
        clinical[:raised_voxels] = 21.0
        volume = np.where(masks_organ, 0.0, 70.0)
        volume[masks_organ] = clinical
        masks = {"PTV": ~masks_organ, "Organ": masks_organ}
        prediction = np.where(masks_organ, 19.0, 70.0)
        qa = compare_case("c", volume, [prediction], masks, {"PTV": "target", "Organ": "oar"}, {"PTV": 70.0}, VOXEL_MM3,
                          organ_flag_metrics=["V20Gy"])
        return qa.structure("Organ").metric("V20Gy")
    assert (v20(1).excess, v20(1).flagged) == (2.5, False)   # 1 / 40 = 2.5 points < 3
    assert (v20(2).excess, v20(2).flagged) == (5.0, True)    # 2 / 40 = 5 points > 3


def test_a_full_volume_metric_says_it_cannot_show_worse_sparing():
    """An organ every voxel of which gets 20 Gy or more in both the plan and the prediction: V20Gy is 100 %
    whatever the plan, so its reason says so instead of calling the plan no worse. Where the prediction is
    below 100 % (V30Gy: 50 % against 0 %; V20Gy of a second organ: 100 % against 50 %; both flagged) or
    the metric is not a flag metric (D2 of the first), the usual reasons stand."""
    organ, half = np.zeros((1, 6, 10), bool), np.zeros((1, 6, 10), bool)
    organ[0, 2:4] = True      # 20 voxels
    half[0, 4:6] = True       # 20 voxels
    clinical = np.where(organ | half, 25.0, 70.0)
    clinical[0, 2, :] = 35.0   # 10 of the organ's 20 voxels: V30Gy 50 % against 0 %
    prediction = np.where(organ, 21.0, 70.0)
    prediction[0, 4:6, :5] = 21.0
    prediction[0, 4:6, 5:] = 15.0   # half of the second organ below 20 Gy: V20Gy 50 %
    qa = compare_case("c", clinical, [prediction], {"PTV": ~(organ | half), "Organ": organ, "Half": half},
                      {"PTV": "target", "Organ": "oar", "Half": "oar"}, {"PTV": 70.0}, VOXEL_MM3,
                      organ_flag_metrics=["V20Gy", "V30Gy"])
    v20, v30 = qa.structure("Organ").metric("V20Gy"), qa.structure("Organ").metric("V30Gy")
    assert (v20.clinical, v20.predicted, v20.flagged) == (100.0, 100.0, False)
    assert v20.reason == ("V20Gy 100.0 % vs predicted 100.0 %: the whole organ gets 20 Gy or more in both, "
                          "so V20Gy cannot show worse sparing")
    assert (v30.clinical, v30.predicted, v30.flagged) == (50.0, 0.0, True) and "cannot show" not in v30.reason
    half_v20 = qa.structure("Half").metric("V20Gy")
    assert (half_v20.clinical, half_v20.predicted, half_v20.flagged) == (100.0, 50.0, True)
    assert "cannot show" not in half_v20.reason
    assert qa.structure("Organ").metric("D2").reason.endswith("shown, not a flag metric")


def _target_case(clinical_target_gy, name="c"):
    """A 20-voxel target, ensemble 60 Gy, folds 59 / 60 / 61 Gy."""
    masks = {"PTV": np.zeros((1, 4, 10), bool)}
    masks["PTV"][0, 1:3] = True
    mean = np.where(masks["PTV"], 60.0, 5.0)
    clinical = mean.copy()
    clinical[masks["PTV"]] = clinical_target_gy
    qa = compare_case(name, clinical, [mean - 1, mean, mean + 1], masks, {"PTV": "target"}, {"PTV": 60.0}, VOXEL_MM3)
    return qa


def test_target_coverage_and_hot_spot_flags():
    # 4 of 20 voxels at 50 Gy: D95 and D98 (linear index 0.95 and 0.38 of the sorted doses) are 50 Gy
    cold = _target_case([50.0] * 4 + [60.0] * 16)
    ptv = cold.structure("PTV")
    assert {m.name: (m.clinical, m.excess, m.flagged) for m in ptv.metrics} == {
        "D95": (50.0, 10.0, True), "D98": (50.0, 10.0, True), "D2": (60.0, 0.0, False)}
    # the rule lets D95 pass down to min(interval 59, 60 - tolerance 1.8) = 58.2 Gy: 8.2 Gy short
    assert ptv.metric("D95").reason == ("D95 50.0 Gy vs predicted 60.0 Gy [59.0, 61.0]: 10.0 Gy less than achievable, "
                                        "8.2 Gy beyond what the flag rule lets pass")
    assert cold.flagged_targets == ("PTV",) and cold.n_flagged_organs == 0 and cold.sparing_left_gy == 0.0
    # 4 of 20 voxels at 70 Gy: D2 (linear index 18.62) is 70 Gy, coverage untouched
    hot = _target_case([60.0] * 16 + [70.0] * 4).structure("PTV")
    assert {m.name: (m.clinical, m.excess, m.flagged) for m in hot.metrics} == {
        "D95": (60.0, 0.0, False), "D98": (60.0, 0.0, False), "D2": (70.0, 10.0, True)}


def test_bad_input_is_one_line_error():
    masks, mean = _masks(), _ensemble()
    with pytest.raises(NndoseError, match="no fold predictions"):
        compare_case("c", mean, [], masks, KINDS, {"PTV": 60.0}, VOXEL_MM3)
    with pytest.raises(NndoseError, match=r"fold prediction 1 has shape \(2, 8, 9\)"):
        compare_case("c", mean, [mean, mean[..., :9]], masks, KINDS, {"PTV": 60.0}, VOXEL_MM3)
    with pytest.raises(NndoseError, match="NaN"):
        compare_case("c", mean * np.nan, [mean], masks, KINDS, {"PTV": 60.0}, VOXEL_MM3)
    with pytest.raises(NndoseError, match="no prescription"):
        compare_case("c", mean, [mean], masks, KINDS, {}, VOXEL_MM3)
    with pytest.raises(NndoseError, match="not negative"):
        Tolerance(gy=-1.0)


def _cohort():
    # sparing left beyond 23.8 Gy (22 predicted + 1.8 tolerance, above the interval's 23): excess 0 -> 0;
    # 5 -> 27 - 23.8 = 3.2; 2.5 -> (12 * 18.5 + 12 * 30.5) / 24 - 23.8 = 0.7
    return [_hand_case(n, e)[0] for n, e in (("case_a", 0.0), ("case_b", 5.0), ("case_c", 2.5))]


def test_cohort_ranks_by_sparing_left():
    ranked = rank_cases(_cohort())
    assert [(c.case, c.sparing_left_gy) for c in ranked] == [("case_b", pytest.approx(3.2)), ("case_c", pytest.approx(0.7)),
                                                                  ("case_a", 0.0)]


def test_cohort_ranks_a_flagged_plan_above_unflagged_ones_at_equal_sparing_left():
    # no organ excess anywhere (sparing left 0 each): the plan with a cold target comes first, then by name
    cold = _target_case([50.0] * 4 + [60.0] * 16, name="z_cold_target")
    plain = [_hand_case(n, 0.0)[0] for n in ("b_plain", "a_plain")]
    assert [c.case for c in rank_cases([*plain, cold])] == ["z_cold_target", "a_plain", "b_plain"]


def test_qa_csv_and_json(tmp_path):
    qa, *_ = _hand_case()
    write_case_outputs(qa, tmp_path)
    with open(tmp_path / "qa.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = {r["structure"]: r for r in reader}
    assert reader.fieldnames[:5] == ["case", "structure", "kind", "flagged", "reason"]
    assert len(reader.fieldnames) == 5 + 6 * 9  # clinical, predicted, lower, upper, margin, bias of 9 metrics: 7 of organs, D95 and D98 of targets (D2 is shared)
    assert "V30Gy_upper" in reader.fieldnames and "D98_lower" in reader.fieldnames
    rectum = rows["Rectum"]
    assert (rectum["case"], rectum["kind"], rectum["flagged"]) == ("case", "oar", "true")
    fields = ("clinical", "predicted", "lower", "upper")
    assert [float(rectum[f"Dmean_{f}"]) for f in fields] == [27.0, 22.0, 21.0, 23.0]
    assert [float(rectum[f"V30Gy_{f}"]) for f in fields] == [50.0, 0.0, 0.0, 0.0]
    assert rectum["Dmean_margin"] == "" and float(rectum["Dmean_bias"]) == 0.0   # uncalibrated
    assert rectum["D95_clinical"] == "" and rectum["reason"].startswith("Dmean 27.0 Gy vs predicted 22.0 Gy")
    assert rows["PTV"]["flagged"] == "false" and rows["PTV"]["Dmean_clinical"] == ""
    assert float(rows["PTV"]["D95_lower"]) == 59.0 and rows["Bladder"]["flagged"] == "false"
    data = json.loads((tmp_path / "qa.json").read_text())
    assert data["flagged_organs"] == ["Rectum"] and data["sparing_left_gy"] == pytest.approx(3.2)
    dmean = next(m for s in data["structures"] if s["name"] == "Rectum" for m in s["metrics"] if m["name"] == "Dmean")
    assert (dmean["excess"], dmean["flagged"], dmean["tolerance"]) == pytest.approx((5.0, True, 1.8))

    write_cohort_outputs(_cohort(), tmp_path / "cohort")
    with open(tmp_path / "cohort" / "qa.csv", newline="") as f:
        cases = [r["case"] for r in csv.DictReader(f)]
    assert cases == ["case_b"] * 3 + ["case_c"] * 3 + ["case_a"] * 3
    ranking = json.loads((tmp_path / "cohort" / "qa.json").read_text())["ranking"]
    assert [r["case"] for r in ranking] == ["case_b", "case_c", "case_a"]


def _report(tmp_path, name="case"):
    qa, clinical, folds, masks = _hand_case(name)
    ct = np.where(masks["Body"], 0.0, -1000.0)
    ct[:, :, 0] = -1000.0
    path = tmp_path / "report.html"
    write_case_report(qa, clinical, folds, masks, ct, path)
    return path.read_text()


def test_case_report_is_self_contained_with_the_flags_first(tmp_path):
    html = _report(tmp_path)
    flags, first_image = html.index('<table class="flags">'), html.index("<img")
    assert flags < html.index('<table class="metrics">') < first_image
    table = html[flags:html.index("</table>", flags)]
    assert table.count('<tr class="flagged">') == 1 and '<tr class="flagged"><td>Rectum</td>' in table
    # the flagged rectum above the target listed before it
    assert table.index("<td>Rectum</td>") < table.index("<td>PTV</td>") < table.index("<td>Bladder</td>")
    assert "1 organ at risk flagged</b> (Rectum)" in html
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) == 2  # the DVH overlay and the rectum's slices
    assert all(base64.b64decode(i.split('"')[0])[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    for external in ("http://", "https://", 'src="/', "<script", "<link"):
        assert external not in html


def test_a_one_fold_report_says_it_has_no_band_or_interval(tmp_path):
    """One fold: the interval is the prediction itself, so the page shows no 'range of the folds'."""
    masks, mean = _masks(), _ensemble()
    clinical = mean + 5.0 * masks["Rectum"]
    qa = compare_case("case", clinical, [mean], masks, KINDS, {"PTV": 60.0}, VOXEL_MM3, Tolerance())
    write_case_report(qa, clinical, [mean], masks, None, tmp_path / "one.html")
    html = (tmp_path / "one.html").read_text()
    assert "one fold (no band)" in html and "range of the folds" not in html
    assert "(with one fold, the prediction itself)" in html and qa.n_folds == qa.to_json()["n_folds"] == 1
    write_cohort_report([qa], tmp_path / "index.html", {})   # the cohort page states the same rule
    assert "(with one fold, the prediction itself)" in (tmp_path / "index.html").read_text()
    assert qa.structure("Rectum").reason.startswith("Dmean 27.0 Gy vs predicted 22.0 Gy: 5.0 Gy more than achievable")
    metrics = html[html.index('<table class="metrics">'):]
    assert '<td class="num">-</td>' in metrics and " - " not in metrics[:metrics.index("</table>")]
    three = _report(tmp_path)
    assert "range of the folds (band)" in three and "with one fold" not in three


def test_names_are_escaped(tmp_path):
    html = _report(tmp_path, name='pt<1>&"x"')
    assert "pt&lt;1&gt;&amp;&quot;x&quot;" in html and "pt<1>" not in html


def test_cohort_page_lists_cases_in_ranking_order(tmp_path):
    path = tmp_path / "index.html"
    write_cohort_report(_cohort(), path, {c: f"{c}/report.html" for c in ("case_a", "case_b", "case_c")})
    html = path.read_text()
    b, c, a = (html.index(f'href="{n}/report.html"') for n in ("case_b", "case_c", "case_a"))
    assert b < c < a
    assert '<td class="num">1</td><td><a href="case_b/report.html">case_b</a></td>' in html
    assert '<td class="num">3.20</td>' in html  # case_b's sparing left
    assert "A value is flagged when it is worse than the ensemble prediction" in html   # the rule stated
    for external in ("http://", "https://", 'src="/'):
        assert external not in html


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
def test_case_report_renders_in_headless_chromium(tmp_path):
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    import matplotlib.image

    _report(tmp_path)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
                    (tmp_path / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280) and pixels.std() > 0.1
    highlight = np.array([int(FLAG_COLOR[k:k + 2], 16) / 255 for k in (1, 3, 5)])
    assert np.count_nonzero(np.abs(pixels - highlight).max(-1) < 3 / 255) > 2000  # the rectum's flagged rows
