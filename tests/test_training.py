"""Training: loss goes down, checkpoints load with weights_only, a killed run resumes, DDP stays in sync,
and the trained model predicts and is evaluated from the command line."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from nndose.cli.evaluate import main as evaluate_main
from nndose.cli.predict import main as predict_main
from nndose.cli.train import main as train_main
from nndose.datasets.phantoms import generate_phantom_dataset
from nndose.plans import PLANS_VERSION, load_plans
from nndose.training.trainer import TrainerSettings
from nndose.training.trainer_variants import trainer_class
from nndose.paths import ENV_VARIABLES
from tests.conftest import TINY_PLANNER, plan_quietly, run_command, run_ok

MODEL = "nndoseTrainer__nndosePlans__3d_fullres"


def _trainer(root, cls="nndoseTrainer", fold="all", **settings):
    pre = root / "nndose_preprocessed" / "Dataset042_Tiny"
    t = trainer_class(cls)(load_plans(pre / "nndosePlans.json"), "3d_fullres", fold, pre,
                           root / "nndose_results" / "x" / f"fold_{fold}", torch.device("cpu"),
                           TrainerSettings(epochs=2, iterations_per_epoch=2, **settings))
    t.initialize()
    return t


@pytest.mark.parametrize("cls", ["nndoseTrainer", "nndoseTrainer_MAE_DVH", "nndoseTrainer_MSE", "nndoseTrainer_MAE_OrganMean"])
def test_training_lowers_the_loss(env, cls):
    torch.manual_seed(0)
    t = _trainer(env, cls)
    batch = next(iter(t._loader(t.train_cases, None, seed=3)))
    image, target = batch[0], batch[1]
    first = t.train_step(image, target)
    for _ in range(25):
        last = t.train_step(image, target)
    assert np.isfinite(first) and last < 0.6 * first


def test_batch_stream_is_the_same_for_any_worker_count_and_restartable(env):
    t = _trainer(env)
    transforms = t.get_training_transforms()

    def batches(workers, first, n):
        it = iter(t._loader(t.train_cases, transforms, 5, first_batch=first, num_workers=workers))
        return [next(it) for _ in range(n)]

    serial, parallel, restarted = batches(0, 0, 5), batches(2, 0, 5), batches(0, 3, 2)
    assert not torch.equal(serial[0][0], serial[1][0])
    for a, b in zip(serial, parallel):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for a, b in zip(serial[3:], restarted):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_checkpoints_load_with_weights_only(env, capsys):
    code, _, err = run_command(train_main, ["42", "3d_fullres", "all", "--epochs", "2", "--iterations_per_epoch", "2",
                                            "--device", "cpu"], capsys)
    assert code == 0, err
    fold = env / "nndose_results/Dataset042_Tiny" / MODEL / "fold_all"
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        ck = torch.load(fold / name, weights_only=True)
        assert ck["epoch"] >= 1 and "network" in ck
    assert len(ck["log"]["val_mae_gy"]) == 2 and (fold / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (fold / "checkpoint_latest.pth").exists()
    assert (fold.parent / "plans.json").is_file() and (fold.parent / "dataset.json").is_file()


def _flat(state: dict) -> torch.Tensor:
    return torch.cat([v.flatten().double() for _, v in sorted(state.items()) if v.is_floating_point()])


def test_killed_run_resumes_to_the_same_weights(env, capsys):
    """A run killed in another process and resumed ends where the uninterrupted run does. Not to the bit:
    CPU kernels can round differently from one process to the next (CI saw 2.6e-5 once), and 15 AdamW
    steps amplify rounding, so the test bounds the drift relative to how far training moved the weights.
    Measured on this dataset: every initial weight nudged by one ulp drifts 2.1-2.4 %; the wrong resumes
    drift far more (fresh optimizer state 33 %, batches re-drawn from the first 18 %, learning-rate
    schedule one epoch late 16 %)."""
    args = ["42", "3d_fullres", "all", "--epochs", "5", "--iterations_per_epoch", "3", "--device", "cpu"]
    assert run_command(train_main, args, capsys)[0] == 0
    fold = env / "nndose_results/Dataset042_Tiny" / MODEL / "fold_all"
    reference = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    shutil.rmtree(fold)
    proc = subprocess.Popen([sys.executable, "-c", "from nndose.cli.train import main; main()", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline:
        latest = fold / "checkpoint_latest.pth"
        if latest.is_file() and torch.load(latest, weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (fold / "checkpoint_final.pth").exists()
    code, _, err = run_command(train_main, args + ["--c"], capsys)
    assert code == 0, err
    resumed = torch.load(fold / "checkpoint_final.pth", weights_only=True)
    assert resumed["epoch"] == 5 and len(resumed["log"]["train_loss"]) == 5
    assert sorted(resumed["network"]) == sorted(reference["network"])
    init, ref = _flat(_trainer(env).evaluated_network.state_dict()), _flat(reference["network"])
    drift = float((_flat(resumed["network"]) - ref).norm() / (ref - init).norm())
    assert drift < 0.05, f"resumed weights drift {drift:.1%} of training's own change"


def _ddp_step(rank, world, port, result_dir):
    import torch.distributed as dist
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial weights on both ranks
    from nndose.networks.resenc_unet import ResEncUNet
    net = ResEncUNet(3, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [1, 1], [1])
    model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(100 + rank)     # different data on each rank
    x = torch.randn(2, 3, 8, 8, 8)
    model(x).abs().mean().backward()
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.save(flat, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.barrier()   # tearing gloo down while the other rank still talks to it aborts the process
    dist.destroy_process_group()


def test_ddp_two_processes_hold_identical_weights_after_a_step(tmp_path):
    from nndose.training.run import _free_port
    torch.multiprocessing.spawn(_ddp_step, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.manual_seed(0)
    from nndose.networks.resenc_unet import ResEncUNet
    initial = torch.cat([p.detach().flatten() for p in ResEncUNet(3, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]],
                                                                   [1, 1], [1]).parameters()])
    assert torch.equal(a, b) and not torch.equal(a, initial)


def test_trainer_runs_under_ddp_on_cpu(env, capsys):
    code, _, err = run_command(train_main, ["42", "3d_fullres", "all", "--epochs", "1", "--iterations_per_epoch", "2",
                                            "--device", "cpu", "-num_gpus", "2"], capsys)
    assert code == 0, err
    assert (env / "nndose_results/Dataset042_Tiny" / MODEL / "fold_all/checkpoint_final.pth").is_file()


def test_predict_and_evaluate_from_the_command_line(env, capsys, tmp_path):
    run_ok(train_main, ["42", "3d_fullres", "all", "--epochs", "1", "--iterations_per_epoch", "2", "--device", "cpu"], capsys)
    raw = env / "nndose_raw/Dataset042_Tiny"
    out = tmp_path / "pred"
    code, stdout, err = run_command(predict_main, ["-i", str(raw / "casesTs"), "-o", str(out), "-d", "42", "-c", "3d_fullres",
                                                   "-f", "all", "--save_spread", "--device", "cpu"], capsys)
    assert code == 0, err
    from nndose.io.volumes import read_volume
    pred, grid = read_volume(out / "phantom_005.nii.gz")
    ref, rgrid = read_volume(raw / "casesTs/phantom_005/dose.nii.gz")
    body, _ = read_volume(raw / "casesTs/phantom_005/structures/Body.nii.gz")
    assert grid.same_as(rgrid) and np.all(pred[body == 0] == 0) and pred.min() >= 0
    spread, _ = read_volume(out / "spread/phantom_005.nii.gz")   # a single fold: no spread across folds
    assert np.all(spread == 0) and not (out / "phantom_005_spread.nii.gz").exists()
    code, stdout, err = run_command(evaluate_main, ["-ref", str(raw / "casesTs"), "-pred", str(out), "--plots"], capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    # the OpenKBP dose score by hand: sum of |reference - prediction| over all voxels / body voxels
    by_hand = np.abs(ref.astype(np.float64) - pred).sum() / np.count_nonzero(body)
    assert summary["aggregate"]["dose_score"] == pytest.approx(by_hand, rel=1e-6) and by_hand > 0.1
    assert (out / "plots/summary.png").is_file()
    # a perfect prediction scores zero
    perfect = tmp_path / "perfect"
    perfect.mkdir()
    shutil.copy(raw / "casesTs/phantom_005/dose.nii.gz", perfect / "phantom_005.nii.gz")
    code, _, err = run_command(evaluate_main, ["-ref", str(raw / "casesTs"), "-pred", str(perfect)], capsys)
    agg = json.loads((perfect / "summary.json").read_text())["aggregate"]
    assert code == 0 and agg["dose_score"] == 0 and agg["dvh_score"] == 0
    assert set(json.loads((perfect / "summary.json").read_text())["breakdown"]) == {"site", "modality", "reference_dose_gy"}
    # paired comparison needs two cases: duplicate the test case under a second name
    shutil.copytree(raw / "casesTs/phantom_005", raw / "casesTs/phantom_105")
    for folder in (out, perfect):
        shutil.copy(folder / "phantom_005.nii.gz", folder / "phantom_105.nii.gz")
    code, _, err = run_command(evaluate_main, ["-ref", str(raw / "casesTs"), "-pred", str(out), "--compare", str(perfect)], capsys)
    comparison = json.loads((out / "summary.json").read_text())["comparison"]
    shutil.rmtree(raw / "casesTs/phantom_105")
    assert code == 0, err
    assert comparison["n"] == 2 and comparison["dose_error_openkbp"]["mean_other"] == 0
    assert 0 < comparison["dose_error_openkbp"]["wilcoxon_p"] <= 1


def test_bad_input_to_train_and_predict(env, capsys, tmp_path):
    cases = [
        (train_main, ["42", "3d_superres", "0"], "configuration '3d_superres' is not in the plan"),
        (train_main, ["77", "3d_fullres", "0"], "no preprocessed dataset 077"),
        (train_main, ["42", "3d_fullres", "9"], "fold '9'"),
        (train_main, ["42", "3d_fullres", "0", "-tr", "NoSuchTrainer"], "unknown trainer 'NoSuchTrainer'"),
        (predict_main, ["-i", str(tmp_path), "-o", str(tmp_path / "o"), "-d", "42", "-c", "3d_fullres"], "no trained dataset 042"),
    ]
    for main, argv, needle in cases:
        code, _, err = run_command(main, argv, capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, (argv, err)
    run_ok(train_main, ["42", "3d_fullres", "all", "--epochs", "1", "--iterations_per_epoch", "1", "--device", "cpu"], capsys)
    raw = env / "nndose_raw/Dataset042_Tiny"
    code, _, err = run_command(predict_main, ["-i", str(raw / "casesTs"), "-o", str(tmp_path / "o"), "-d", "42",
                                              "-c", "3d_fullres", "-f", "3"], capsys)
    assert code == 2 and "fold_3/checkpoint_final.pth: checkpoint not found" in err
    plans = env / "nndose_results/Dataset042_Tiny" / MODEL / "plans.json"
    d = json.loads(plans.read_text())
    d["plans_version"] = 99
    plans.write_text(json.dumps(d))
    code, _, err = run_command(predict_main, ["-i", str(raw / "casesTs"), "-o", str(tmp_path / "o"), "-d", "42",
                                              "-c", "3d_fullres"], capsys)
    assert code == 2 and "plan version 99 is not supported" in err
    assert not (tmp_path / "o").exists()
    d["plans_version"] = PLANS_VERSION
    plans.write_text(json.dumps(d))
    # a case holding a structure the model's dataset does not know
    case = tmp_path / "in" / "odd_case"
    shutil.copytree(raw / "casesTs/phantom_005", case)
    shutil.copy(case / "structures/Body.nii.gz", case / "structures/Pancreas.nii.gz")
    code, _, err = run_command(predict_main, ["-i", str(case.parent), "-o", str(tmp_path / "o"), "-d", "42",
                                              "-c", "3d_fullres"], capsys)
    assert code == 2 and "unknown structure 'Pancreas'" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_export_install_and_predict_without_training_data(env, capsys, tmp_path, monkeypatch):
    import zipfile
    from nndose.cli.model_sharing import export_main, install_main
    run_ok(train_main, ["42", "3d_fullres", "all", "--epochs", "1", "--iterations_per_epoch", "1", "--device", "cpu"], capsys)
    points = env / f"nndose_results/Dataset042_Tiny/{MODEL}/fold_all/validation/dvh_points.json"
    points.parent.mkdir(parents=True)
    points.write_text('[{"site": "prostate", "reference_dose_gy": 70.0, "structures": {}}]')   # plan QA's calibration
    archive = tmp_path / "model.zip"
    code, _, err = run_command(export_main, ["-d", "42", "-c", "3d_fullres", "-o", str(archive)], capsys)
    assert code == 0, err
    names = zipfile.ZipFile(archive).namelist()
    assert f"Dataset042_Tiny/{MODEL}/fold_all/checkpoint_final.pth" in names
    assert f"Dataset042_Tiny/{MODEL}/fold_all/validation/dvh_points.json" in names
    assert not any(n.endswith("summary.json") for n in names)   # case names stay home
    # a fresh results folder and no training data: only the archive and the case to predict
    cases = tmp_path / "to_predict"
    shutil.copytree(env / "nndose_raw/Dataset042_Tiny/casesTs", cases)
    fresh = tmp_path / "fresh_results"
    monkeypatch.setenv("nndose_results", str(fresh))
    monkeypatch.setenv("nndose_raw", str(tmp_path / "no_raw"))
    monkeypatch.setenv("nndose_preprocessed", str(tmp_path / "no_preprocessed"))
    code, _, err = run_command(install_main, [str(archive)], capsys)
    assert code == 0, err
    code, _, err = run_command(predict_main, ["-i", str(cases), "-o", str(tmp_path / "pred"), "-d", "42",
                                              "-c", "3d_fullres", "--device", "cpu", "--disable_tta"], capsys)
    assert code == 0, err
    assert (tmp_path / "pred/phantom_005.nii.gz").is_file()
    assert (fresh / f"Dataset042_Tiny/{MODEL}/fold_all/validation/dvh_points.json").read_text() == points.read_text()
    # a validation file that is not a list of cases is refused, and nothing installed
    (fresh / f"Dataset042_Tiny/{MODEL}/fold_all/validation/dvh_points.json").write_text('{"not": "a list"}')
    run_ok(export_main, ["-d", "42", "-c", "3d_fullres", "-o", str(tmp_path / "bad.zip")], capsys)
    monkeypatch.setenv("nndose_results", str(tmp_path / "other_results"))
    code, _, err = run_command(install_main, [str(tmp_path / "bad.zip")], capsys)
    assert code != 0 and "dvh_points.json: not a list of validation cases" in err and err.count("\n") == 1
    assert not (tmp_path / "other_results").exists()


@pytest.mark.parametrize("member", ["../evil.json", "/etc/evil.json", "Dataset042_Tiny/x__y__z/../../evil.json",
                                    "Dataset042_Tiny/x__y__z/notes.txt"])
def test_install_refuses_unsafe_archives(tmp_path, monkeypatch, capsys, member):
    import zipfile
    from nndose.cli.model_sharing import install_main
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("Dataset042_Tiny/x__y__z/plans.json", "{}")
        z.writestr(member, "boom")
    results = tmp_path / "results"
    monkeypatch.setenv("nndose_results", str(results))
    code, _, err = run_command(install_main, [str(archive)], capsys)
    assert code == 2 and "refusing archive member" in err
    assert not (tmp_path / "evil.json").exists() and not results.exists()


def test_finetune_freezes_the_encoder_and_predicts(env, capsys, tmp_path):
    from nndose.cli.finetune import main as finetune_main
    run_ok(train_main, ["42", "3d_fullres", "all", "--epochs", "1", "--iterations_per_epoch", "2", "--device", "cpu"], capsys)
    source = env / "nndose_results/Dataset042_Tiny" / MODEL
    target_raw = env / "nndose_raw/Dataset043_Sparing"
    if not target_raw.exists():
        generate_phantom_dataset(target_raw, 6, seed=2, style="sparing", num_processes=1, progress=False)
        plan_quietly(43, TINY_PLANNER)
    code, _, err = run_command(finetune_main, ["-d", "43", "-c", "3d_fullres", "-f", "all", "--pretrained", str(source),
                                               "--epochs", "2", "--iterations_per_epoch", "3", "--device", "cpu"], capsys)
    assert code == 0, err
    before = torch.load(source / "fold_all/checkpoint_final.pth", weights_only=True)["network"]
    tuned_dir = env / "nndose_results/Dataset043_Sparing/nndoseTrainer_Finetune__nndosePlans__3d_fullres"
    tuned = torch.load(tuned_dir / "fold_all/checkpoint_final.pth", weights_only=True)
    after = tuned["network"]
    # pretrained layers at a tenth of the rate, the re-initialised head at the full rate
    groups = tuned["optimizer"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [0.1, 1.0] and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    assert len(groups[1]["params"]) == 2   # head weight and bias
    encoder = [k for k in before if k.startswith(("stem.", "encoder."))]
    decoder = [k for k in before if k.startswith("decoder.") and k.endswith("weight")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in decoder)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    code, _, err = run_command(predict_main, ["-i", str(target_raw / "casesTs"), "-o", str(tmp_path / "p"), "-d", "43",
                                              "-c", "3d_fullres", "-tr", "nndoseTrainer_Finetune", "--device", "cpu"], capsys)
    assert code == 0, err


def test_least_squares_head_fits_the_target_style_better_than_a_random_head(env, capsys):
    from nndose.training.finetune import FinetuneOptions, nndoseTrainer_Finetune
    run_ok(train_main, ["42", "3d_fullres", "all", "--epochs", "1", "--iterations_per_epoch", "2", "--device", "cpu"], capsys)
    pre = env / "nndose_preprocessed" / "Dataset042_Tiny"
    t = nndoseTrainer_Finetune(load_plans(pre / "nndosePlans.json"), "3d_fullres", "all", pre,
                               env / "nndose_results" / "ft" / "fold_all", torch.device("cpu"),
                               TrainerSettings(epochs=1, iterations_per_epoch=1),
                               finetune=FinetuneOptions(pretrained=env / "nndose_results/Dataset042_Tiny" / MODEL),
                               pretrained_checkpoint=env / "nndose_results/Dataset042_Tiny" / MODEL / "fold_all/checkpoint_final.pth")
    t.initialize()
    image, target, _ = next(iter(t._loader(t.train_cases, None, t.seed + 104729, num_workers=0)))
    body = t.body_mask(image)

    def body_mse():
        with torch.no_grad():
            return float((((t.network(image) - target) ** 2) * body).sum() / body.sum())

    random_head = body_mse()
    t.fit_head(n_batches=1)
    fitted = body_mse()
    assert fitted < 0.5 * random_head
    # the least-squares optimum: nudging the bias either way fits worse
    bias = t.network.head.bias.detach().clone()
    for delta in (-0.05, 0.05):
        with torch.no_grad():
            t.network.head.bias.copy_(bias + delta)
        assert body_mse() > fitted


def test_finetune_refuses_a_plan_with_other_channels(env, capsys, tmp_path):
    from nndose.cli.finetune import main as finetune_main
    run_ok(train_main, ["42", "3d_fullres", "all", "--epochs", "1", "--iterations_per_epoch", "1", "--device", "cpu"], capsys)
    source = env / "nndose_results/Dataset042_Tiny" / MODEL
    plans = json.loads((source / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["channels"] = plans["configurations"]["3d_fullres"]["channels"][:-1]
    alien = tmp_path / "alien_model"
    shutil.copytree(source, alien)
    (alien / "plans.json").write_text(json.dumps(plans))
    code, _, err = run_command(finetune_main, ["-d", "42", "-c", "3d_fullres", "-f", "all", "--pretrained", str(alien),
                                               "--device", "cpu"], capsys)
    assert code == 2 and "channels differ from the pretrained model's (beam_dose)" in err


def test_cascade_trains_on_out_of_fold_stage1_predictions(env, capsys, tmp_path):
    base = ["--epochs", "1", "--iterations_per_epoch", "1", "--device", "cpu"]
    code, _, err = run_command(train_main, ["42", "3d_cascade_fullres", "0", *base], capsys)
    assert code == 2 and "lack one" in err and "train all five folds of 3d_fullres" in err
    for fold in range(5):
        assert run_command(train_main, ["42", "3d_fullres", str(fold), *base], capsys)[0] == 0
    results = env / "nndose_results/Dataset042_Tiny"
    oof = results / MODEL / "oof_predictions"
    splits = json.loads((env / "nndose_preprocessed/Dataset042_Tiny/splits_final.json").read_text())
    assert sorted(p.stem for p in oof.glob("*.b2nd")) == sorted(c for s in splits for c in s["val"])
    from nndose.preprocessing.storage import load_case as load_preprocessed, open_array
    data_dir = env / "nndose_preprocessed/Dataset042_Tiny" / load_plans(
        env / "nndose_preprocessed/Dataset042_Tiny/nndosePlans.json").configuration("3d_fullres").data_identifier
    for p in oof.glob("*.b2nd"):   # out-of-fold predictions lie on the stored preprocessed grid
        assert open_array(p).shape[1:] == load_preprocessed(data_dir, p.stem)[0].shape[1:]
    code, out, err = run_command(train_main, ["42", "3d_cascade_fullres", "0", *base], capsys)
    assert code == 0, err
    cascade = results / "nndoseTrainer__nndosePlans__3d_cascade_fullres"
    ck = torch.load(cascade / "fold_0/checkpoint_final.pth", weights_only=True)
    assert ck["channels"][-1] == "dose_mask_10" and (cascade / "fold_0/validation/summary.json").is_file()
    raw = env / "nndose_raw/Dataset042_Tiny"
    code, _, err = run_command(predict_main, ["-i", str(raw / "casesTs"), "-o", str(tmp_path / "p"), "-d", "42",
                                              "-c", "3d_cascade_fullres", "--device", "cpu", "--disable_tta"], capsys)
    assert code == 0, err
    assert (tmp_path / "p/phantom_005.nii.gz").is_file()


def test_leave_site_out_training_never_sees_the_site(env, capsys):
    code, _, err = run_command(train_main, ["42", "3d_fullres", "all", "--epochs", "1", "--iterations_per_epoch", "1",
                                            "--device", "cpu", "--exclude_sites", "head_neck"], capsys)
    assert code == 0, err
    folder = env / "nndose_results/Dataset042_Tiny/nndoseTrainer_without_head_neck__nndosePlans__3d_fullres"
    assert (folder / "fold_all/checkpoint_final.pth").is_file()
    t = _trainer(env, exclude_sites=("head_neck",))
    train, val = t._cases()
    pre = env / "nndose_preprocessed/Dataset042_Tiny/nndosePlans_3d_fullres"
    sites = {json.loads((pre / f"{c}.json").read_text())["site"] for c in train + val}
    assert "head_neck" not in sites and len(sites) == 3
    code, _, err = run_command(train_main, ["42", "3d_fullres", "all", "--device", "cpu", "--exclude_sites",
                                            "head_neck", "prostate", "lung", "liver"], capsys)
    assert code == 2 and "leaves no case to train on" in err


def test_time_budget_shortens_the_schedule(env, capsys):
    t = _trainer(env)
    t.num_epochs = t.epoch_cap = 300
    t.time_budget_s = 100.0
    t.epoch = 2
    t.fit_to_time_budget(elapsed_s=20.0, epochs_done=2)      # 10 s per epoch, 80 s left -> 8 more epochs
    assert t.num_epochs == 10 and t.lr_at(9) == pytest.approx(1e-3 * 0.1 ** 0.9)   # polynomial decay over 10
    t.epoch = 5
    t.fit_to_time_budget(elapsed_s=25.0, epochs_done=5)      # epochs got faster: 5 s each, 75 s left -> 15 more
    assert t.num_epochs == 20
    t.epoch = 19
    t.fit_to_time_budget(elapsed_s=1.9, epochs_done=19)      # never past the requested number of epochs
    assert t.num_epochs == 300
    t.epoch = 20
    t.fit_to_time_budget(elapsed_s=130.0, epochs_done=20)    # over budget: stop after this epoch
    assert t.num_epochs == 20
    t.time_budget_s = None
    t.fit_to_time_budget(elapsed_s=1e6, epochs_done=20)
    assert t.num_epochs == 20
    code, out, err = run_command(train_main, ["42", "3d_fullres", "all", "--epochs", "50", "--iterations_per_epoch", "1",
                                              "--device", "cpu", "--time_budget_minutes", "0.02"], capsys)
    assert code == 0, err
    log = (env / "nndose_results/Dataset042_Tiny" / MODEL / "fold_all/training_log.txt").read_text().splitlines()
    assert 1 <= len(log) < 50
    code, _, err = run_command(train_main, ["42", "3d_fullres", "0", "--time_budget_minutes", "0"], capsys)
    assert code == 2 and "must be positive" in err
