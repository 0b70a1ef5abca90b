"""OpenKBP at full scale on one GPU, as jobs in stages: each stage finishes well inside 10 minutes, can be
run again, and keeps its state in a work folder, so the run fits bounded GPU jobs (a cluster's queue,
a rented machine, a lease of a few minutes per call).

  python -m benchmarks.openkbp_gpu split   --openkbp DIR -o PARTS [--mib 15]   # here: archives -> parts
  python -m benchmarks.openkbp_gpu prepare --openkbp DIR [--work W] [-np N]   # unpack, convert, plan, preprocess
  python -m benchmarks.openkbp_gpu train   --minutes 20 [--work W] [--wait]   # trains in the background
  python -m benchmarks.openkbp_gpu status  [--work W]                         # progress, whenever polled
  python -m benchmarks.openkbp_gpu finish  [--work W] [-o result.json]        # predict, score, export the model and its card

DIR holds the OpenKBP data as train-pats/ and validation-pats/ folders, as the openkbp-*.tar.xz
archives, or as parts of them (`split`: openkbp-train-00.tar.xz.part000, ...) that may arrive in
several uploads; parts are joined and checked against DIR/SHA256SUMS. `train` starts nndose_train
in its own session (it survives the calling shell), returns at once (or waits with --wait), and
continues an interrupted run with --c and what is left of the budget; run `train` again on a new
machine and it goes on from the last epoch. `finish` predicts the 33 validation patients with
mirroring, scores them as the challenge does, writes the submission CSVs and the result JSON (the
GPU named), and exports the model in half precision with a model card beside it (<model>.md).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.model_card import model_card
from nndose.cli.common import OneLineParser, run_cli
from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write, atomic_write_json
from nndose.paths import ENV_VARIABLES

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = 960
DATASET = f"Dataset{DATASET_ID:03d}_OpenKBP"
SPLITS = ("train", "validation")
CONFIG = "3d_fullres"
PART = re.compile(r"^(openkbp-[a-z0-9-]+\.tar\.xz)\.part(\d{3})$")


# ----- the work folder --------------------------------------------------------------------------

def use_work(work: Path) -> Path:
    """Point nndose's three folders into the work folder (for this process and the ones it starts)."""
    work = work.resolve()
    for var in ENV_VARIABLES:
        os.environ[var] = str(work / var)
        (work / var).mkdir(parents=True, exist_ok=True)
    return work


def _model_dir(work: Path, trainer: str) -> Path:
    from nndose.io.layout import model_folder
    return model_folder(work / "nndose_results" / DATASET, trainer, "nndosePlans", CONFIG)


def _state(work: Path) -> dict:
    path = work / "train.json"
    return json.loads(path.read_text()) if path.is_file() else {}


# ----- split and join archives ------------------------------------------------------------------

def split_archives(source: Path, out: Path, mib: int) -> list[Path]:
    """Cut every openkbp-*.tar.xz into parts of at most `mib` MiB (and copy SHA256SUMS along)."""
    archives = sorted(source.glob("openkbp-*.tar.xz"))
    if not archives:
        raise NndoseError(f"{source}: no openkbp-*.tar.xz archives to split")
    out.mkdir(parents=True, exist_ok=True)
    parts = []
    for archive in archives:
        data = archive.read_bytes()
        for k, start in enumerate(range(0, len(data), mib << 20)):
            part = out / f"{archive.name}.part{k:03d}"
            atomic_write(part, lambda p, chunk=data[start:start + (mib << 20)]: p.write_bytes(chunk))
            parts.append(part)
    if (source / "SHA256SUMS").is_file():
        atomic_write(out / "SHA256SUMS", lambda p: p.write_bytes((source / "SHA256SUMS").read_bytes()))
    return parts


def _checksums(source: Path) -> dict[str, str]:
    sums = source / "SHA256SUMS"
    if not sums.is_file():
        return {}
    return {name.strip().lstrip("*"): digest for digest, name in
            (line.split(maxsplit=1) for line in sums.read_text().splitlines() if line.strip())}


def join_parts(source: Path, dest: Path) -> list[Path]:
    """Reassemble archives from their parts into dest; each must match SHA256SUMS where it is listed."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    for p in source.iterdir():
        m = PART.match(p.name)
        if m:
            groups.setdefault(m.group(1), []).append((int(m.group(2)), p))
    sums = _checksums(source)
    joined = []
    for name, parts in sorted(groups.items()):
        numbers = sorted(n for n, _ in parts)
        if numbers != list(range(len(numbers))):
            missing = sorted(set(range(numbers[-1] + 1)) - set(numbers))
            raise NndoseError(f"{name}: part {missing[0]:03d} is missing (parts {numbers[0]:03d}..{numbers[-1]:03d} found)")
        digest = hashlib.sha256()

        def write(target: Path, parts=sorted(parts)) -> None:
            with open(target, "wb") as f:
                for _, part in parts:
                    chunk = part.read_bytes()
                    digest.update(chunk)
                    f.write(chunk)
        target = dest / name
        atomic_write(target, write)
        if name in sums and digest.hexdigest() != sums[name]:
            target.unlink()
            raise NndoseError(f"{name}: its parts do not make the archive SHA256SUMS names (a part missing or cut short?)")
        joined.append(target)
    return joined


def patient_folders(source: Path, work: Path, split: str) -> Path:
    """A folder of pt_* folders for the split, unpacking (and first joining) archives as needed."""
    from nndose.datasets.openkbp_archives import extract_patients
    if (source / f"{split}-pats").is_dir():
        return source / f"{split}-pats"
    dest = work / "csv" / split
    if dest.is_dir():
        return dest
    archives = sorted(source.glob(f"openkbp-{split}*.tar.xz"))
    if not archives and any(PART.match(p.name) for p in source.iterdir()):
        joined = work / "archives"
        joined.mkdir(parents=True, exist_ok=True)
        join_parts(source, joined)
        archives = sorted(joined.glob(f"openkbp-{split}*.tar.xz"))
    if not archives:
        raise NndoseError(f"{source}: neither {split}-pats/ nor openkbp-{split}*.tar.xz (or its parts)")
    unpacking = dest.parent / f".{split}.unpacking"   # renamed to dest only once every archive is unpacked
    shutil.rmtree(unpacking, ignore_errors=True)
    for archive in archives:
        extract_patients(archive, unpacking)
    unpacking.rename(dest)
    return dest


# ----- stages -----------------------------------------------------------------------------------

def prepare(args) -> None:
    from nndose.datasets.openkbp import convert_openkbp
    from nndose.experiment_planning.plan_and_preprocess import PreprocessingRun, plan_and_preprocess
    from nndose.experiment_planning.planner import CPU_PLANNER, PlannerOptions
    from nndose.io.layout import TEST_DIR, TRAIN_DIR
    from nndose.io.raw_dataset import list_cases
    work = use_work(args.work)
    done = work / "prepare.json"
    if done.is_file():
        print(f"{work}: prepared already ({json.loads(done.read_text())['training_patients']} training patients); "
              f"delete {done.name} to prepare again")
        return
    start = time.time()
    if not args.openkbp.is_dir():
        raise NndoseError(f"{args.openkbp}: OpenKBP folder not found")
    raw = work / "nndose_raw" / DATASET
    train = patient_folders(args.openkbp, work, "train")
    if args.n_train:
        subset = work / "csv" / f"train_first_{args.n_train}"
        subset.mkdir(parents=True, exist_ok=True)
        for name in sorted((p.name for p in train.iterdir() if p.name.startswith("pt_")),
                           key=lambda n: int(n[3:]))[: args.n_train]:
            if not (subset / name).exists():
                (subset / name).symlink_to(train / name)
        train = subset
    np_ = args.np or os.cpu_count() or 1
    if len(list_cases(raw, TRAIN_DIR)) == 0:
        convert_openkbp(train, raw, num_processes=np_)
    if len(list_cases(raw, TEST_DIR)) == 0:
        convert_openkbp(patient_folders(args.openkbp, work, "validation"), raw, test=True, num_processes=np_)
    converted = time.time()
    options = CPU_PLANNER if args.small_network else PlannerOptions()
    if args.max_batch:
        from dataclasses import replace
        options = replace(options, max_batch=args.max_batch)
    plan_and_preprocess(DATASET_ID, options, PreprocessingRun(configurations=(CONFIG,), num_processes=np_))
    result = {"training_patients": len(list_cases(raw, TRAIN_DIR)), "validation_patients": len(list_cases(raw, TEST_DIR)),
              "processes": np_, "seconds": {"convert": converted - start, "plan_and_preprocess": time.time() - converted}}
    atomic_write_json(done, result)
    print(json.dumps(result))


def _alive(state: dict) -> bool:
    from nndose.io.atomic import process_alive
    return bool(state) and state.get("host") == socket.gethostname() and process_alive(int(state["pid"]))


def _log_epochs(model_dir: Path) -> list[str]:
    from nndose.io.layout import TRAINING_LOG, fold_folder
    log = fold_folder(model_dir, "all") / TRAINING_LOG
    return log.read_text().splitlines() if log.is_file() else []


def _trained_seconds(lines: list[str]) -> float:
    return sum(float(m.group(1)) for line in lines if (m := re.search(r"  ([\d.]+) s$", line)))


def status_line(work: Path, trainer: str) -> str:
    from nndose.io.layout import CHECKPOINT_FINAL, fold_folder
    state, model = _state(work), _model_dir(work, trainer)
    lines = _log_epochs(model)
    minutes = _trained_seconds(lines) / 60
    last = lines[-1].split("  ")[:3] if lines else ["no epoch yet"]
    if (fold_folder(model, "all") / CHECKPOINT_FINAL).is_file():
        return f"finished: {len(lines)} epochs in {minutes:.1f} min; {' '.join(last[1:])}; run finish"
    if _alive(state):
        return f"running (pid {state['pid']}): {' '.join(last)}; {minutes:.1f} of {state['minutes']:g} min trained"
    if lines:
        return f"stopped after {len(lines)} epochs ({minutes:.1f} min): run train again to continue"
    return "not started: run train"


def train(args) -> None:
    from nndose.io.layout import CHECKPOINT_FINAL, CHECKPOINT_LATEST, fold_folder
    work = use_work(args.work)
    if not (work / "prepare.json").is_file():
        raise NndoseError(f"{work}: run prepare first")
    model = _model_dir(work, args.trainer)
    fold = fold_folder(model, "all")
    state = _state(work)
    if (fold / CHECKPOINT_FINAL).is_file() or _alive(state):
        print(status_line(work, args.trainer))
        return
    resume = (fold / CHECKPOINT_LATEST).is_file()
    iterations = args.iterations or (state.get("iterations_per_epoch") if resume else None)   # an epoch keeps its size
    left = args.minutes - _trained_seconds(_log_epochs(model)) / 60 if resume else args.minutes
    if left <= 0.01:
        left = 0.01   # the budget is spent: one last epoch, then the final checkpoint
    command = [sys.executable, "-c", "from nndose.cli.train import main; main()", str(DATASET_ID), CONFIG, "all",
               "-tr", args.trainer, "--device", args.device, "--time_budget_minutes", f"{left:.4f}",
               *(["--c"] if resume else []), *(["--iterations_per_epoch", str(iterations)] if iterations else [])]
    with open(work / "train.log", "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy())
    atomic_write_json(work / "train.json", {"pid": proc.pid, "host": socket.gethostname(), "minutes": args.minutes,
                                            "started": time.time(), "resumed": resume, "trainer": args.trainer,
                                            "iterations_per_epoch": iterations})
    print(f"{'continuing' if resume else 'started'} training (pid {proc.pid}, {left:.2f} min left of {args.minutes:g}); "
          f"log: {work / 'train.log'}")
    if args.wait:
        code = proc.wait()
        if code != 0:
            raise NndoseError(f"training stopped with exit status {code}; see {work / 'train.log'}")
        print(status_line(work, args.trainer))


def status(args) -> None:
    print(status_line(use_work(args.work), args.trainer))


def _device_name() -> str:
    import torch
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or "cpu")


def finish(args) -> None:
    import torch
    from benchmarks import pipeline
    from nndose.datasets.openkbp import export_openkbp
    from nndose.devices import resolve_device
    from nndose.inference.predict_cases import predict_cases
    from nndose.inference.predictor import DosePredictor
    from nndose.io.layout import CHECKPOINT_FINAL, TEST_DIR, fold_folder
    from nndose.io.raw_dataset import list_cases
    from nndose.model_sharing import export_model
    work = use_work(args.work)
    model = _model_dir(work, args.trainer)
    if not (fold_folder(model, "all") / CHECKPOINT_FINAL).is_file():
        raise NndoseError(f"no finished training in {model} ({status_line(work, args.trainer)})")
    raw = work / "nndose_raw" / DATASET
    cases = list_cases(raw, TEST_DIR)
    predictor = DosePredictor(model, CONFIG, folds=["all"], device=resolve_device(args.device), use_tta=True)
    start = time.time()
    predict_cases(cases, work / "predictions", predictor)
    seconds_per_case = (time.time() - start) / len(cases)
    scores = pipeline.score(cases, raw, work / "predictions")
    export_openkbp(work / "predictions", work / "submission")
    zip_path = args.model or work / "model.zip"
    export_model(work / "nndose_results" / DATASET, args.trainer, "nndosePlans", CONFIG, zip_path, ["all"], half=True)
    lines = _log_epochs(model)
    conf = predictor.conf
    result = {"device": _device_name(), "torch": torch.__version__, "trainer": args.trainer,
              "training_minutes": _trained_seconds(lines) / 60, "epochs": len(lines),
              "iterations_per_epoch": _state(work).get("iterations_per_epoch"), "plan": {"patch_size_zyx": list(conf.patch_size_zyx),
                                                                 "batch_size": conf.batch_size,
                                                                 "network": conf.network.to_json(),
                                                                 "training": predictor.plans.training.chosen()},
              "prepare": json.loads((work / "prepare.json").read_text()),
              "validation_patients": len(cases), "tta": True, "seconds_per_patient": seconds_per_case,
              "dose_score_gy": scores["dose_score_gy"], "dvh_score_gy": scores["dvh_score_gy"], "scores": scores,
              "model_zip_mib": zip_path.stat().st_size / 2 ** 20, "submission_csvs": str(work / "submission")}
    card = model_card(result, zip_path.name, DATASET_ID)
    out = args.o or work / "result.json"
    atomic_write_json(out, result)
    atomic_write(zip_path.with_suffix(".md"), lambda p: p.write_text(card))
    print(json.dumps({k: v for k, v in result.items() if k not in ("scores", "plan", "prepare")}, indent=2))


def _main(argv) -> None:
    ap = OneLineParser(prog="benchmarks.openkbp_gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=("split", "prepare", "train", "status", "finish"))
    ap.add_argument("--work", type=Path, default=Path("nndose_openkbp_gpu"), help="work folder (default ./nndose_openkbp_gpu)")
    ap.add_argument("--openkbp", type=Path, default=REPO.parent / "shared" / "data" / "openkbp")
    ap.add_argument("-o", type=Path, help="split: the parts folder; finish: the result JSON (default WORK/result.json)")
    ap.add_argument("--mib", type=int, default=15, help="split: part size in MiB (default 15)")
    ap.add_argument("-np", type=int, help="prepare: processes (default: every core)")
    ap.add_argument("--n_train", type=int, help="prepare: only the first N training patients")
    ap.add_argument("--small_network", action="store_true", help="prepare: the demo's CPU-sized plan (a CPU check)")
    ap.add_argument("--max_batch", type=int, help="prepare: the planner's --max_batch")
    ap.add_argument("--minutes", type=float, default=20.0, help="train: the training budget in minutes (default 20)")
    ap.add_argument("--iterations", type=int, help="train: iterations per epoch (default: the trainer's)")
    ap.add_argument("--trainer", default="nndoseTrainer")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--wait", action="store_true", help="train: wait for the training to end")
    ap.add_argument("--model", type=Path, help="finish: the model zip (default WORK/model.zip)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.mib < 1 or any(v is not None and v < 1 for v in (args.np, args.n_train, args.iterations)):
        raise NndoseError("--minutes, --mib, -np, --n_train and --iterations must be positive")
    if args.stage == "split":
        if args.o is None:
            raise NndoseError("split needs -o PARTS_FOLDER")
        parts = split_archives(args.openkbp, args.o, args.mib)
        print(f"{args.o}: {len(parts)} part(s) of at most {args.mib} MiB")
        return
    {"prepare": prepare, "train": train, "status": status, "finish": finish}[args.stage](args)


def main(argv=None) -> None:
    run_cli("benchmarks.openkbp_gpu", _main, argv)


if __name__ == "__main__":
    main()
