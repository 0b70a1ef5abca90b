"""Sharing trained models: export a results folder's model as a zip, install one safely.

The archive holds DatasetXXX_Name/<Trainer>__<Plans>__<config>/ with plans.json, dataset.json, the
fingerprint and each fold's checkpoint (plus the previous stage of a cascade). Installing refuses
absolute paths, '..', links and anything outside that layout, checks that every checkpoint loads
with torch.load(weights_only=True), and moves the model into place only when all of it is sound.
"""
from __future__ import annotations

import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from nndose.errors import NndoseError
from nndose.inference.predictor import available_folds, model_folder
from nndose.io.atomic import atomic_write
from nndose.plans import configuration, load_plans
from nndose.training.checkpoints import load_checkpoint

MODEL_FILES = ("plans.json", "dataset.json", "dataset_fingerprint.json")
_ALLOWED = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_-]+/[A-Za-z0-9_]+__[A-Za-z0-9_]+__[A-Za-z0-9_]+/"
                      r"((plans|dataset|dataset_fingerprint)\.json|fold_(\d|all)/checkpoint_(final|best)\.pth)$")


def export_model(results_dataset_dir: Path, trainer: str, plans_name: str, config: str, out_zip: Path,
                 folds=None, checkpoint: str = "checkpoint_final.pth") -> list[str]:
    """Write the model (and a cascade's previous stage) to out_zip; returns the archive's members."""
    stages = [config]
    model_dir = model_folder(results_dataset_dir, trainer, plans_name, config)
    if not model_dir.is_dir():
        raise NndoseError(f"{model_dir}: no trained model to export")
    previous = configuration(load_plans(model_dir / "plans.json"), config).get("previous_stage")
    if previous:
        stages.append(previous)
    members: list[tuple[Path, str]] = []
    for stage in stages:
        stage_dir = model_folder(results_dataset_dir, trainer, plans_name, stage)
        chosen = [str(f) for f in folds] if folds and stage == config else available_folds(stage_dir, checkpoint)
        if not chosen:
            raise NndoseError(f"{stage_dir}: no fold has {checkpoint}")
        prefix = f"{results_dataset_dir.name}/{stage_dir.name}"
        for name in MODEL_FILES:
            if (stage_dir / name).is_file():
                members.append((stage_dir / name, f"{prefix}/{name}"))
        for f in chosen:
            ck = stage_dir / f"fold_{f}" / checkpoint
            if not ck.is_file():
                raise NndoseError(f"{ck}: checkpoint not found")
            members.append((ck, f"{prefix}/fold_{f}/checkpoint_final.pth"))

    def write(p: Path) -> None:
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
            for src, arc in members:
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


def install_model(archive: Path, results_root: Path) -> list[Path]:
    """Extract a model archive into results_root; returns the installed model folders."""
    archive = Path(archive)
    if not archive.is_file():
        raise NndoseError(f"{archive}: file not found")
    try:
        z = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise NndoseError(f"{archive}: not a zip archive") from None
    with z:
        infos = z.infolist()
        if not infos:
            raise NndoseError(f"{archive}: empty archive")
        for info in infos:
            _check_member(info)
        results_root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".install.", dir=results_root))
        try:
            for info in infos:
                if not info.is_dir():
                    target = stage / info.filename
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            models = sorted({p.parent.parent if p.parent.name.startswith("fold_") else p.parent
                             for p in stage.rglob("*") if p.is_file()})
            for m in models:
                load_plans(m / "plans.json")
                if not (m / "dataset.json").is_file():
                    raise NndoseError(f"{archive}: {m.name} lacks dataset.json")
                for ck in m.glob("fold_*/checkpoint_*.pth"):
                    load_checkpoint(ck)
            installed = []
            for m in models:
                final = results_root / m.relative_to(stage)
                if final.exists():
                    shutil.rmtree(final)
                final.parent.mkdir(parents=True, exist_ok=True)
                m.rename(final)
                installed.append(final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return installed
