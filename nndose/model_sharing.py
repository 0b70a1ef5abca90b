"""Sharing trained models: export a results folder's model as a zip, install one safely.

The archive holds DatasetXXX_Name/<Trainer>__<Plans>__<config>/ with plans.json, dataset.json, the
fingerprint, each fold's checkpoint and, where the fold was validated, its validation cases' DVH
points without names (plan QA's calibration), plus the previous stage of a cascade. Installing refuses
absolute paths, '..', links and anything outside that layout; refuses archives whose declared size
or compression ratio is implausible (and stops extracting at the declared size, whatever the archive
claims); checks that the plan and dataset.json parse and that every checkpoint loads with
torch.load(weights_only=True) and fits the plan's network; and moves the model into place only when
all of it is sound. An installed model of the same name is replaced only with overwrite=True, and
only once the new one is complete.
"""
from __future__ import annotations

import io
import json
import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import torch

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write, remove_stale_temporaries, replace_path, staging_area
from nndose.io.checkpoints import load_checkpoint
from nndose.io.layout import (ALL_FOLD, CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINTS, FOLDS, MODEL_FILES, MODEL_PLANS_FILE, check_folds,
                              VALIDATION_DIR, VALIDATION_DVH_FILE, fold_folder, list_folds, model_folder,
                              parse_model_folder_name)
from nndose.io.raw_dataset import load_dataset_json
from nndose.kill_points import kill_point
from nndose.networks import build_network
from nndose.plans import load_plans

MAX_MODEL_BYTES = 16 << 30      # declared size of all members together
MAX_RATIO = 100                 # uncompressed / compressed size of any member (weights compress ~1.1x)
_CHUNK = 1 << 20
# what an archive may hold: DatasetXXX_Name/<trainer>__<plans>__<config>/ with the model files and the folds' checkpoints
_ALLOWED = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_-]+/[A-Za-z0-9_]+__[A-Za-z0-9_-]+__[A-Za-z0-9_]+/("
                      + "|".join(re.escape(name) for name in MODEL_FILES)
                      + "|fold_(" + "|".join((*FOLDS, ALL_FOLD)) + ")/(" + "|".join(map(re.escape, (CHECKPOINT_FINAL, CHECKPOINT_BEST)))
                      + "|" + re.escape(f"{VALIDATION_DIR}/{VALIDATION_DVH_FILE}") + "))$")


HALF_KEEPS = ("channels", "trainer", "config", "plans_name", "epoch")


def half_precision(path: Path) -> bytes:
    """A checkpoint for inference only: the network's weights in float16 and what identifies them
    (no optimizer state, no training log): about a sixth of a training checkpoint."""
    ck = load_checkpoint(path)
    slim = {"network": {k: v.half() if v.is_floating_point() else v for k, v in ck["network"].items()},
            **{k: ck[k] for k in HALF_KEEPS if k in ck}}
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    return buffer.getvalue()


def export_model(results_dataset_dir: Path, trainer: str, plans_name: str, config: str, out_zip: Path,
                 folds=None, checkpoint: str = CHECKPOINT_FINAL, half: bool = False) -> list[str]:
    """Write the model (and a cascade's previous stage) to out_zip; returns the archive's members.
    With half=True the checkpoints hold float16 weights for inference only."""
    model_dir = model_folder(results_dataset_dir, trainer, plans_name, config)
    if not model_dir.is_dir():
        raise NndoseError(f"{model_dir}: no trained model to export")
    if Path(out_zip).is_dir():
        raise NndoseError(f"{out_zip}: is a folder; -o names the .zip file to write")
    stages = [config]
    previous = load_plans(model_dir / MODEL_PLANS_FILE).configuration(config).previous_stage
    if previous:
        stages.append(previous)
    members: list[tuple[Path, str]] = []
    for stage in stages:
        stage_dir = model_folder(results_dataset_dir, trainer, plans_name, stage)
        chosen = check_folds(folds) if folds and stage == config else list_folds(stage_dir, checkpoint)
        if not chosen:
            raise NndoseError(f"{stage_dir}: no fold has {checkpoint}")
        prefix = f"{results_dataset_dir.name}/{stage_dir.name}"
        for name in MODEL_FILES:
            if (stage_dir / name).is_file():
                members.append((stage_dir / name, f"{prefix}/{name}"))
        for f in chosen:
            ck = fold_folder(stage_dir, f) / checkpoint
            if not ck.is_file():
                raise NndoseError(f"{ck}: checkpoint not found")
            members.append((ck, f"{prefix}/fold_{f}/{CHECKPOINT_FINAL}"))
            points = fold_folder(stage_dir, f) / VALIDATION_DIR / VALIDATION_DVH_FILE
            if points.is_file():
                members.append((points, f"{prefix}/fold_{f}/{VALIDATION_DIR}/{VALIDATION_DVH_FILE}"))

    def write(p: Path) -> None:
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            for src, arc in members:
                if half and arc.endswith(".pth"):
                    z.writestr(arc, half_precision(src))
                else:
                    z.write(src, arc)
    atomic_write(out_zip, write)
    return [arc for _, arc in members]


def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or path.is_absolute() or ".." in path.parts or "\\" in name or ":" in name:
        raise NndoseError(f"refusing archive member {name!r}: absolute path or '..'")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise NndoseError(f"refusing archive member {name!r}: a symbolic link")
    if not info.is_dir() and not _ALLOWED.match(name):
        raise NndoseError(f"refusing archive member {name!r}: not part of an nndose model")
    if info.file_size > MAX_RATIO * max(info.compress_size, 1) and info.file_size > _CHUNK:
        raise NndoseError(f"refusing archive member {name!r}: it would expand {info.file_size / max(info.compress_size, 1):.0f}x "
                          f"(a zip bomb?)")


def _check_sizes(archive: Path, infos: list[zipfile.ZipInfo], dest: Path) -> None:
    total = sum(i.file_size for i in infos)
    if total > MAX_MODEL_BYTES:
        raise NndoseError(f"{archive}: declares {total / 2 ** 30:.1f} GiB, more than a model may hold "
                          f"({MAX_MODEL_BYTES >> 30} GiB)")
    free = shutil.disk_usage(dest).free
    if total > free:
        raise NndoseError(f"{archive}: needs {total / 2 ** 20:.0f} MiB, only {free / 2 ** 20:.0f} MiB free under {dest}")


def _extract(z: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Stream one member, refusing to write a byte past its declared size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with z.open(info) as src, open(target, "wb") as dst:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise NndoseError(f"refusing archive member {info.filename!r}: larger than it declares")
            dst.write(chunk)


def check_model_folder(model_dir: Path, source: str) -> None:
    """Everything inference needs is there and usable: plan, dataset.json, checkpoints that fit."""
    plans = load_plans(model_dir / MODEL_PLANS_FILE)
    load_dataset_json(model_dir)
    config = parse_model_folder_name(model_dir.name)[2]
    conf = plans.configuration(config)
    for points in sorted(model_dir.glob(f"fold_*/{VALIDATION_DIR}/{VALIDATION_DVH_FILE}")):
        try:
            cases = json.loads(points.read_text())
            valid = isinstance(cases, list) and all(isinstance(c, dict) and isinstance(c.get("structures"), dict) for c in cases)
        except (json.JSONDecodeError, UnicodeDecodeError):
            valid = False
        if not valid:
            raise NndoseError(f"{source}: {points.relative_to(model_dir.parent)}: not a list of validation cases")
    checkpoints = [fold_folder(model_dir, f) / c for c in CHECKPOINTS for f in list_folds(model_dir, c)]
    if not checkpoints:
        raise NndoseError(f"{source}: {model_dir.name} holds no checkpoint")
    for ck_path in checkpoints:
        ck = load_checkpoint(ck_path)
        if list(ck["channels"]) != list(conf.channels):
            raise NndoseError(f"{source}: {ck_path.relative_to(model_dir.parent)}: its channels differ from the plan's")
        try:
            build_network(conf).load_state_dict(ck["network"])
        except RuntimeError as e:
            raise NndoseError(f"{source}: {ck_path.relative_to(model_dir.parent)}: weights do not fit the plan's network "
                              f"({str(e).splitlines()[0][:100]})") from None


def install_model(archive: Path, results_root: Path, overwrite: bool = False) -> list[Path]:
    """Extract a model archive into results_root; returns the installed model folders."""
    archive = Path(archive)
    if not archive.is_file():
        raise NndoseError(f"{archive}: file not found")
    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise NndoseError(f"{archive}: not a zip archive") from None
    results_root = Path(results_root)
    with z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        if not infos:
            raise NndoseError(f"{archive}: empty archive")
        for info in z.infolist():
            _check_member(info)
        created = not results_root.exists()
        results_root.mkdir(parents=True, exist_ok=True)
        try:
            return _install(z, infos, archive, results_root, overwrite)
        except BaseException:
            if created and not any(results_root.iterdir()):
                results_root.rmdir()
            raise


def _install(z: zipfile.ZipFile, infos: list[zipfile.ZipInfo], archive: Path, results_root: Path,
             overwrite: bool) -> list[Path]:
    """Extract into a staging area, check every model folder, then move them into place."""
    remove_stale_temporaries(results_root)
    _check_sizes(archive, infos, results_root)
    models = sorted({"/".join(i.filename.split("/")[:2]) for i in infos})
    clash = [m for m in models if (results_root / m).exists()]
    if clash and not overwrite:
        raise NndoseError(f"{results_root / clash[0]} is installed already; --overwrite replaces it")
    with staging_area(results_root, "install") as stage:
        for info in infos:
            try:
                _extract(z, info, stage / info.filename)
            except (zipfile.BadZipFile, EOFError, zlib.error) as e:
                raise NndoseError(f"{archive}: corrupt member {info.filename!r} ({type(e).__name__})") from None
        for m in models:
            try:
                check_model_folder(stage / m, str(archive))
            except NndoseError as e:   # name the member, not the staging folder it was checked in
                raise NndoseError(str(e).replace(f"{stage}/", f"{archive}: ")) from None
        kill_point("install:extracted")
        for m in models:
            replace_path(stage / m, results_root / m)
    return [results_root / m for m in models]
