"""The raw dataset: DatasetXXX_Name/{dataset.json, casesTr/<case>/, casesTs/<case>/}.

A case folder holds ct.nii.gz (HU), dose.nii.gz (Gy, optional in casesTs), structures/<name>.nii.gz
(binary) and plan.json (names in `layout`). `read_case` loads one case and lists every problem it
finds, so that the verifier and the preprocessor share one set of checks; `write_case` is the one
writer every dataset builder (phantoms, OpenKBP, DICOM) uses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nndose.errors import FileProblem, NndoseError
from nndose.io.atomic import atomic_write_json
from nndose.io.json_file import read_json
from nndose.io.layout import CT_FILE, DATASET_JSON, DOSE_FILE, NIFTI, PLAN_FILE, STRUCTURES_DIR, TRAIN_DIR, case_folders
from nndose.io.plan_file import InvalidPlan, TreatmentPlan, load_plan
from nndose.io.volumes import Grid, read_volume, write_volume

STRUCTURE_KINDS = ("target", "oar", "body")


class StructureVocabulary:
    """The targets, organs and body of a `structures` mapping (name -> kind, in vocabulary order)."""
    structures: dict[str, str]

    @property
    def targets(self) -> list[str]:
        return [n for n, k in self.structures.items() if k == "target"]

    @property
    def organs(self) -> list[str]:
        return [n for n, k in self.structures.items() if k == "oar"]

    @property
    def body(self) -> str | None:
        return next((n for n, k in self.structures.items() if k == "body"), None)


@dataclass(frozen=True)
class DatasetInfo(StructureVocabulary):
    name: str
    structures: dict[str, str]  # name -> kind (target | oar | body), in vocabulary order
    file_ending: str = NIFTI
    num_training: int = 0
    description: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {"name": self.name, "description": self.description, "file_ending": self.file_ending,
             "numTraining": self.num_training,
             "structures": {n: {"kind": k} for n, k in self.structures.items()}}
        d.update(self.extra)
        return d


def parse_dataset_json(d: object, source: str) -> DatasetInfo:
    if not isinstance(d, dict):
        raise NndoseError(f"{source}: top level must be a JSON object")
    structures = d.get("structures")
    if not isinstance(structures, dict) or not structures:
        raise NndoseError(f"{source}: 'structures' must map each structure name to {{\"kind\": target|oar|body}}")
    vocab = {}
    for name, spec in structures.items():
        kind = spec.get("kind") if isinstance(spec, dict) else spec
        if kind not in STRUCTURE_KINDS:
            raise NndoseError(f"{source}: structure {name!r} has kind {kind!r}; expected one of {', '.join(STRUCTURE_KINDS)}")
        vocab[name] = kind
    if sum(k == "body" for k in vocab.values()) > 1:
        raise NndoseError(f"{source}: more than one structure of kind 'body'")
    if not any(k == "target" for k in vocab.values()):
        raise NndoseError(f"{source}: no structure of kind 'target'")
    num_training = d.get("numTraining", 0)
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
        raise NndoseError(f"{source}: numTraining must be a whole number >= 0, got {num_training!r}")
    ending = d.get("file_ending", NIFTI)
    if not isinstance(ending, str) or not ending.startswith(".") or "/" in ending:
        raise NndoseError(f"{source}: file_ending must be a suffix such as '.nii.gz', got {ending!r}")
    known = {"name", "description", "file_ending", "numTraining", "structures"}
    return DatasetInfo(str(d.get("name", "")), vocab, ending, num_training, str(d.get("description", "")),
                       {k: v for k, v in d.items() if k not in known})


def load_dataset_json(dataset_dir: Path) -> DatasetInfo:
    path = Path(dataset_dir) / DATASET_JSON
    return parse_dataset_json(read_json(path, "every raw dataset needs a dataset.json"), str(path))


def write_dataset_json(dataset_dir: Path, info: DatasetInfo) -> None:
    atomic_write_json(Path(dataset_dir) / DATASET_JSON, info.to_json())


def list_cases(dataset_dir: Path, split: str = TRAIN_DIR) -> list[Path]:
    return case_folders(Path(dataset_dir) / split)


@dataclass
class RawCase:
    name: str
    grid: Grid
    ct: np.ndarray                      # HU, float32, (z, y, x)
    dose: np.ndarray | None             # Gy, float32
    structures: dict[str, np.ndarray]   # name -> bool mask
    plan: TreatmentPlan


def _mask_problems(name: str, rel: str, arr: np.ndarray) -> list[str]:
    if not np.all(np.isfinite(arr)):
        return [f"{rel}: mask holds NaN or infinite values"]
    values = np.unique(arr)
    if not np.all(np.isin(values, (0, 1))):
        return [f"{rel}: mask is not binary (values {values[:5].tolist()}{'...' if values.size > 5 else ''})"]
    if not values.max(initial=0):
        return [f"{rel}: mask of {name} is empty"]
    return []


MIN_D95_OVER_RX, MAX_D95_OVER_RX = 0.3, 1.5   # a target's D95 against its prescription (OpenKBP pt_131: 0.45)
# The maximum against the highest prescription: 1.5 x for conventional fractions; from 5 Gy per fraction
# (SBRT, radiosurgery prescribed to the 50 % or 40 % isodose: 2 or 2.5 x) 2.5 x.
MAX_DOSE_OVER_RX, MAX_DOSE_OVER_RX_HYPOFRACTIONATED, HYPOFRACTIONATED_GY_PER_FRACTION = 1.5, 2.5, 5.0


def max_dose_over_rx(plan: TreatmentPlan) -> float:
    """The highest plausible maximum dose of a plan, as a multiple of its highest prescription."""
    top = max(plan.prescriptions, key=lambda p: p.dose_gy)
    hypo = top.dose_gy / top.fractions >= HYPOFRACTIONATED_GY_PER_FRACTION
    return MAX_DOSE_OVER_RX_HYPOFRACTIONATED if hypo else MAX_DOSE_OVER_RX


def dose_problems(dose_gy: np.ndarray, structures: dict[str, np.ndarray], plan: TreatmentPlan, where: str) -> list[str]:
    """A planned dose that cannot belong to its prescriptions: zero everywhere, a target's D95 off by
    more than a factor 1.5 (or about 100 x: a dose in cGy), a maximum above max_dose_over_rx x the highest one."""
    peak = float(dose_gy.max())
    if peak <= 0:
        return [f"{where}: the dose is zero everywhere"]
    problems = []
    for p in plan.prescriptions:
        if p.structure in structures and structures[p.structure].any():
            d95 = float(np.percentile(dose_gy[structures[p.structure]], 5))
            ratio = d95 / p.dose_gy
            if 50 <= ratio <= 150:
                return [f"{where}: {p.structure} receives {d95:.4g} (D95), about 100 x its prescription of {p.dose_gy:g} Gy: "
                        f"is the dose in cGy? nndose reads Gy"]
            if not MIN_D95_OVER_RX <= ratio <= MAX_D95_OVER_RX:
                problems.append(f"{where}: {p.structure} D95 is {d95:.3g} Gy, {ratio:.2g} x its prescription of "
                                f"{p.dose_gy:g} Gy (a planned dose lies within {MIN_D95_OVER_RX:g} to {MAX_D95_OVER_RX:g} x)")
    limit = max_dose_over_rx(plan)
    if peak > limit * plan.reference_dose_gy:
        problems.append(f"{where}: maximum dose {peak:.4g} Gy is over {limit:g} x the highest prescription "
                        f"({plan.reference_dose_gy:g} Gy; {MAX_DOSE_OVER_RX_HYPOFRACTIONATED:g} x from "
                        f"{HYPOFRACTIONATED_GY_PER_FRACTION:g} Gy per fraction)")
    return problems


def _plan_and_structure_files(case_dir: Path, info: DatasetInfo) -> tuple[TreatmentPlan | None, dict[str, Path], list[str]]:
    """plan.json and the case's structure files by name, without reading any voxel."""
    c = case_dir.name
    problems: list[str] = []
    plan = None
    try:
        plan = load_plan(case_dir / PLAN_FILE)
    except InvalidPlan as e:
        problems += [f"{c}/{PLAN_FILE}: {p}" for p in e.problems]
    except FileProblem as e:
        problems.append(f"{c}/{PLAN_FILE}: {e.reason}")
    found, structure_problems = _structure_files(case_dir, info)
    return plan, found, problems + structure_problems


def _structure_files(case_dir: Path, info: DatasetInfo) -> tuple[dict[str, Path], list[str]]:
    """The case's known structure files by name, and the problems of the others (none read)."""
    c = case_dir.name
    problems: list[str] = []
    ending = info.file_ending
    sdir = case_dir / STRUCTURES_DIR
    files = sorted(f for f in sdir.glob("*") if not f.name.startswith(".")) if sdir.is_dir() else []
    if not files:
        problems.append(f"{c}/{STRUCTURES_DIR}: no structure files")
    found: dict[str, Path] = {}
    for f in files:
        rel = f"{STRUCTURES_DIR}/{f.name}"
        if not f.name.endswith(ending):
            problems.append(f"{c}/{rel}: unexpected file (structures must end in {ending})")
        elif f.name[: -len(ending)] not in info.structures:
            problems.append(f"{c}/{rel}: unknown structure {f.name[: -len(ending)]!r} (not in dataset.json's structures)")
        else:
            found[f.name[: -len(ending)]] = f
    return found, problems


def check_case_files(case_dir: Path, info: DatasetInfo, require_dose: bool) -> list[str]:
    """The problems that show without reading voxels: the folder, plan.json, files present, structure
    names. A quick first pass before long work; `read_case` does every check."""
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        return [f"{case_dir.name}: case folder {case_dir} not found"]
    _, _, problems = _plan_and_structure_files(case_dir, info)
    for stem, needed in ((CT_FILE, True), (DOSE_FILE, require_dose)):
        if needed and not (case_dir / f"{stem}{info.file_ending}").is_file():
            problems.append(f"{case_dir.name}/{stem}{info.file_ending}: file not found")
    return problems


def structure_names(case_dir: Path, info: DatasetInfo) -> list[str]:
    """The known structures a case folder has a mask file for (names only, no voxels read)."""
    return list(_structure_files(Path(case_dir), info)[0])


def read_case(case_dir: Path, info: DatasetInfo, require_dose: bool) -> tuple[RawCase | None, list[str]]:
    """Load a case and check it; returns (case or None, problems). Each problem names case and file."""
    case_dir = Path(case_dir)
    c = case_dir.name
    if not case_dir.is_dir():
        return None, [f"{c}: case folder {case_dir} not found"]
    ending = info.file_ending
    plan, structure_files, problems = _plan_and_structure_files(case_dir, info)
    unreadable: set[str] = set()

    def load(rel: str):
        try:
            return read_volume(case_dir / rel)
        except FileProblem as e:
            problems.append(f"{c}/{rel}: {e.reason}")
            unreadable.add(rel)
            return None, None

    ct, grid = load(CT_FILE + ending)
    dose = None
    if (case_dir / (DOSE_FILE + ending)).exists() or require_dose:
        dose, dgrid = load(DOSE_FILE + ending)
        if dose is not None and grid is not None and not dgrid.same_as(grid):
            problems.append(f"{c}/{DOSE_FILE}{ending}: grid {dgrid.describe()} differs from the CT's {grid.describe()}")
        if dose is not None:
            if not np.all(np.isfinite(dose)):
                problems.append(f"{c}/{DOSE_FILE}{ending}: dose holds NaN or infinite values")
            elif dose.min() < 0:
                problems.append(f"{c}/{DOSE_FILE}{ending}: negative dose ({dose.min():.3g} Gy)")
    if ct is not None and not np.all(np.isfinite(ct)):
        problems.append(f"{c}/{CT_FILE}{ending}: CT holds NaN or infinite values")
    if grid is not None and min(grid.shape_zyx) < 4:
        problems.append(f"{c}/{CT_FILE}{ending}: volume too small {grid.shape_zyx}")

    structures: dict[str, np.ndarray] = {}
    for name, f in structure_files.items():
        rel = f"{STRUCTURES_DIR}/{f.name}"
        arr, sgrid = load(rel)
        if arr is None:
            continue
        if grid is not None and not sgrid.same_as(grid):
            problems.append(f"{c}/{rel}: grid {sgrid.describe()} differs from the CT's {grid.describe()}")
            unreadable.add(rel)
            continue
        mask_problems = _mask_problems(name, f"{c}/{rel}", arr)
        problems += mask_problems
        if mask_problems:
            unreadable.add(rel)
        else:
            structures[name] = arr > 0.5

    body = info.body
    if body and body in structures:
        for t in info.targets:
            if t in structures:
                inside = np.count_nonzero(structures[t] & structures[body]) / np.count_nonzero(structures[t])
                if inside < 0.9:
                    problems.append(f"{c}/{STRUCTURES_DIR}/{t}{ending}: only {inside:.0%} of the target lies inside {body}")
    if plan is not None:
        for t in info.targets:
            if t in structures and plan.prescription_of(t) is None:
                problems.append(f"{c}/{PLAN_FILE}: target {t} has no prescription")
        for p in plan.prescriptions:
            if info.structures.get(p.structure) != "target":
                problems.append(f"{c}/{PLAN_FILE}: prescription for {p.structure!r}, which is not a target in dataset.json")
            elif p.structure not in structures and f"{STRUCTURES_DIR}/{p.structure}{ending}" not in unreadable:
                problems.append(f"{c}/{PLAN_FILE}: prescribed target {p.structure} has no mask in {STRUCTURES_DIR}/")
        if grid is not None and not grid.contains_point(plan.isocenter_mm):
            problems.append(f"{c}/{PLAN_FILE}: isocenter {list(plan.isocenter_mm)} lies outside the CT volume")
    if not problems and dose is not None:
        problems += dose_problems(dose, structures, plan, f"{c}/{DOSE_FILE}{ending}")
    if problems:
        return None, problems
    return RawCase(c, grid, ct, dose, structures, plan), []


def load_case(case_dir: Path, info: DatasetInfo, require_dose: bool) -> RawCase:
    """read_case that raises NndoseError on the first problem (with a count of the others)."""
    case, problems = read_case(case_dir, info, require_dose)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s); run nndose_verify_dataset)" if len(problems) > 1 else ""
        raise NndoseError(problems[0] + more)
    return case


def write_case(case_dir: Path, grid: Grid, ct_hu: np.ndarray, structures: dict[str, np.ndarray], plan: TreatmentPlan,
               dose_gy: np.ndarray | None = None) -> None:
    """Write a case folder in the raw format, as NIfTI (the file ending of every dataset nndose builds):
    CT as int16 HU (rounded), dose as float32 Gy, each non-empty structure as a uint8 mask, plan.json.
    The folder must not exist yet (builders stage cases and move them into place)."""
    case_dir = Path(case_dir)
    (case_dir / STRUCTURES_DIR).mkdir(parents=True)
    write_volume(case_dir / f"{CT_FILE}{NIFTI}", np.clip(np.round(ct_hu), -32768, 32767).astype(np.int16), grid)
    if dose_gy is not None:
        write_volume(case_dir / f"{DOSE_FILE}{NIFTI}", np.asarray(dose_gy, dtype=np.float32), grid)
    for name, mask in structures.items():
        if np.any(mask):
            write_volume(case_dir / STRUCTURES_DIR / f"{name}{NIFTI}", np.asarray(mask).astype(np.uint8), grid)
    atomic_write_json(case_dir / PLAN_FILE, plan.to_json())
