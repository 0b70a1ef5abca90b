"""The main job end to end (slow: about six minutes on two cores; run with pytest -m slow)."""
import json

import pytest

from nndose.cli.demo import main as demo_main
from tests.conftest import run_command


@pytest.mark.slow
def test_demo_network_beats_the_falloff_baseline(tmp_path, capsys):
    code, out, err = run_command(demo_main, ["-o", str(tmp_path / "demo")], capsys)
    assert code == 0, err
    net = json.loads((tmp_path / "demo/predictions/network/summary.json").read_text())["aggregate"]
    base = json.loads((tmp_path / "demo/predictions/falloff_baseline/summary.json").read_text())["aggregate"]
    # unmistakably better than the rule of thumb: the DVH score at least 30 % below the baseline's
    assert net["dose_score"] < 0.7 * base["dose_score"] and net["dvh_score"] < 0.7 * base["dvh_score"]
    assert (tmp_path / "demo/plots/summary.png").is_file() and "distance-falloff baseline" in out
    # the demo's plan QA finds the organ it re-planned worse
    assert "plan QA flagged" in out and "(missed" not in out and (tmp_path / "demo/plan_qa/index.html").is_file()


def test_demo_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    code, _, err = run_command(demo_main, ["-o", str(tmp_path / "mine")], capsys)
    assert code == 2 and "not an nndose demo folder" in err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"
