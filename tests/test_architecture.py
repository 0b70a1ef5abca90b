"""The import graph: nndose's layers import only downward (io and paths -> geometry and networks ->
preprocessing -> dataset builders -> evaluation -> inference -> plan QA -> training and planning -> cli)."""
import ast
from pathlib import Path

import nndose

PACKAGE = Path(nndose.__file__).parent
# lowest first; a module may import a lower layer, its own package, or (in the core) the other core modules
LAYERS = (
    ("core", ("nndose", "nndose.errors", "nndose.paths", "nndose.parallel", "nndose.devices", "nndose.plans", "nndose.io",
              "nndose.kill_points")),
    ("geometry and networks", ("nndose.geometry", "nndose.networks")),
    ("preprocessing", ("nndose.preprocessing",)),
    ("dataset builders and verification", ("nndose.datasets", "nndose.dicom", "nndose.verification")),
    ("evaluation", ("nndose.evaluation",)),
    ("inference and model sharing", ("nndose.inference", "nndose.model_sharing")),
    ("plan QA", ("nndose.qa",)),
    ("training and planning (never each other)", ("nndose.training", "nndose.experiment_planning")),
    ("command line", ("nndose.cli",)),
)


def _layer(module: str) -> tuple[int, str]:
    """(rank, package) of a dotted module name: the longest listed prefix decides."""
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (rank, prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "nndose" or m.startswith("nndose.")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = _module_name(path)
        rank, package = _layer(importer)
        for imported in _imports(path):
            other_rank, other_package = _layer(imported)
            allowed = other_rank < rank or other_package == package or rank == other_rank == 0
            if not allowed:
                bad.append(f"{importer} ({LAYERS[rank][0]}) imports {imported} ({LAYERS[other_rank][0]})")
    return bad


def test_layers_import_only_downward():
    assert _violations() == []


def test_inference_imports_nothing_from_training_and_training_not_planning():
    for path in PACKAGE.rglob("*.py"):
        importer = _module_name(path)
        for imported in _imports(path):
            if importer.startswith("nndose.inference"):
                assert not imported.startswith("nndose.training"), (importer, imported)
            if importer.startswith(("nndose.inference", "nndose.training")):
                assert not imported.startswith("nndose.experiment_planning"), (importer, imported)


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule itself can fail: an evaluation module importing training is reported."""
    fake = tmp_path / "nndose"
    (fake / "evaluation").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "evaluation" / "__init__.py").write_text("")
    (fake / "evaluation" / "bad.py").write_text("from nndose.training.trainer import nndoseTrainer\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _violations() == ["nndose.evaluation.bad (evaluation) imports nndose.training.trainer "
                             "(training and planning (never each other))"]
