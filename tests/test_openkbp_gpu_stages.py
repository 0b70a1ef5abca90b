"""The staged OpenKBP GPU job (benchmarks/openkbp_gpu.py), end to end on the CPU with a tiny budget:
archives cut into parts and joined again, prepare, train in the background, killed and continued,
status, finish (scores, submission CSVs, a half-precision model that installs and predicts)."""
import json
import os
import signal
import tarfile
import time
import zipfile
import hashlib

import pytest
import torch

from benchmarks.openkbp_gpu import main as stages
from tests.conftest import run_command, run_ok
from tests.openkbp_helpers import synthetic_patient


def _archive(src, split, out):
    path = out / f"openkbp-{split}.tar.xz"
    with tarfile.open(path, "w:xz", preset=0) as tar:
        tar.add(src / f"{split}-pats", arcname=f"{split}-pats")
    return path


@pytest.fixture
def openkbp_parts(tmp_path):
    """Six training and two validation patients as archives, cut into 1 MiB parts with SHA256SUMS."""
    src = tmp_path / "folders"
    for i in range(1, 7):
        synthetic_patient(src / "train-pats" / f"pt_{i}", seed=i)
    for i in (7, 8):
        synthetic_patient(src / "validation-pats" / f"pt_{i}", seed=i)
    archives = tmp_path / "archives"
    archives.mkdir()
    sums = [f"{hashlib.sha256(_archive(src, s, archives).read_bytes()).hexdigest()}  openkbp-{s}.tar.xz"
            for s in ("train", "validation")]
    (archives / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return archives


def test_split_parts_are_checked_when_joined(openkbp_parts, tmp_path, capsys, nndose_env):
    parts = tmp_path / "parts"
    run_ok(stages, ["split", "--openkbp", str(openkbp_parts), "-o", str(parts), "--mib", "1"], capsys)
    names = sorted(p.name for p in parts.iterdir())
    assert "SHA256SUMS" in names and sum(n.startswith("openkbp-train.tar.xz.part") for n in names) >= 2
    last = sorted(parts.glob("openkbp-train.tar.xz.part*"))[-1]
    last.write_bytes(last.read_bytes()[:-10])                 # cut short in transfer
    code, _, err = run_command(stages, ["prepare", "--openkbp", str(parts), "--work", str(tmp_path / "w"), "-np", "1",
                                        "--small_network"], capsys)
    assert code == 2 and "do not make the archive SHA256SUMS names" in err
    sorted(parts.glob("openkbp-train.tar.xz.part*"))[0].unlink()
    code, _, err = run_command(stages, ["prepare", "--openkbp", str(parts), "--work", str(tmp_path / "w"), "-np", "1",
                                        "--small_network"], capsys)
    assert code == 2 and "part 000 is missing" in err


def _wait(predicate, seconds=180):
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def test_stages_end_to_end_with_a_kill_in_the_middle(openkbp_parts, tmp_path, capsys, nndose_env, monkeypatch):
    parts, work = tmp_path / "parts", tmp_path / "work"
    run_ok(stages, ["split", "--openkbp", str(openkbp_parts), "-o", str(parts), "--mib", "1"], capsys)
    common = ["--work", str(work), "--device", "cpu"]
    out = run_ok(stages, ["prepare", "--openkbp", str(parts), "-np", "1", "--small_network", *common], capsys)
    assert json.loads(out.strip().splitlines()[-1])["training_patients"] == 6
    assert "prepared already" in run_ok(stages, ["prepare", "--openkbp", str(parts), *common], capsys)
    # a budget too long for the test: start it, let it train, kill it as a lost machine would be
    assert "started training" in run_ok(stages, ["train", "--minutes", "10", "--iterations", "2", *common], capsys)
    state = json.loads((work / "train.json").read_text())
    log = work / "nndose_results/Dataset960_OpenKBP/nndoseTrainer__nndosePlans__3d_fullres/fold_all/training_log.txt"
    _wait(lambda: log.is_file() and len(log.read_text().splitlines()) >= 2)
    assert run_ok(stages, ["status", *common], capsys).startswith(f"running (pid {state['pid']}): epoch")
    assert "running" in run_ok(stages, ["train", "--minutes", "10", *common], capsys)   # polled, not started twice
    os.killpg(state["pid"], signal.SIGKILL)
    _wait(lambda: "stopped after" in run_ok(stages, ["status", *common], capsys), 30)
    epochs_before = len(log.read_text().splitlines())
    # the next call goes on from the last epoch with what is left of a (now short) budget
    out = run_ok(stages, ["train", "--minutes", "0.05", "--wait", *common], capsys)
    assert "continuing training" in out and "finished:" in out
    assert json.loads((work / "train.json").read_text())["iterations_per_epoch"] == 2   # epochs keep their size
    assert len(log.read_text().splitlines()) > epochs_before
    out = run_ok(stages, ["finish", *common], capsys)
    result = json.loads((work / "result.json").read_text())
    assert result["validation_patients"] == 2 and result["tta"] is True
    assert 0 < result["dose_score_gy"] < 70 and 0 < result["dvh_score_gy"] < 70
    assert sorted(p.name for p in (work / "submission").iterdir()) == ["pt_7.csv", "pt_8.csv"]
    card = (work / "model.md").read_text()   # the model card carries the run's own numbers
    assert f"| this model | {result['dose_score_gy']:.2f} | {result['dvh_score_gy']:.2f} |" in card
    assert "6 OpenKBP training patients" in card and f"{result['epochs']} epochs of 2 iterations" in card
    assert "| 2.43 | 1.48 |" in card
    with zipfile.ZipFile(work / "model.zip") as z:
        member = next(n for n in z.namelist() if n.endswith(".pth"))
        z.extract(member, tmp_path / "unzipped")
    ck = torch.load(tmp_path / "unzipped" / member, weights_only=True)
    assert {v.dtype for v in ck["network"].values()} == {torch.float16} and "optimizer" not in ck
    from nndose.cli.model_sharing import install_main
    monkeypatch.setenv("nndose_results", str(tmp_path / "elsewhere"))
    run_ok(install_main, [str(work / "model.zip")], capsys)
