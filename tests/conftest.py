"""Shared fixtures: temporary nndose folders, the template dataset, and running a console command."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nndose.experiment_planning.plan_and_preprocess import PreprocessingRun, plan_and_preprocess
from nndose.experiment_planning.planner import PlannerOptions
from nndose.paths import ENV_VARIABLES

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "nndose_raw_template" / "Dataset000_Template"
OPENKBP_ARCHIVES = REPO.parent / "shared" / "data" / "openkbp"
# The smallest network that still trains: 4 features doubling to 16, one block per stage, 16^3 patches.
TINY_PLANNER = PlannerOptions(base_features=4, max_features=16, encoder_blocks=(1,), max_patch=16)


def plan_quietly(dataset_id: int, options: PlannerOptions = TINY_PLANNER, configurations=("3d_fullres",)):
    """Plan and preprocess a dataset through the API, one process, no progress output."""
    return plan_and_preprocess(dataset_id, options, PreprocessingRun(configurations=tuple(configurations), num_processes=1,
                                                                     progress=False, log=lambda line: None))


@pytest.fixture
def nndose_env(tmp_path, monkeypatch):
    """nndose_raw / nndose_preprocessed / nndose_results under tmp_path."""
    roots = {}
    for var in ENV_VARIABLES:
        roots[var] = tmp_path / var
        roots[var].mkdir()
        monkeypatch.setenv(var, str(roots[var]))
    return roots


@pytest.fixture
def template_dataset(nndose_env) -> Path:
    dst = nndose_env["nndose_raw"] / TEMPLATE.name
    shutil.copytree(TEMPLATE, dst)
    return dst


def run_command(main, argv, capsys) -> tuple[int, str, str]:
    """Run a console entry point; (exit status, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def run_ok(main, argv, capsys) -> str:
    """Run a console entry point that must succeed; its stdout."""
    code, out, err = run_command(main, argv, capsys)
    assert code == 0, f"{argv}: exit {code}: {err}"
    return out


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in Path(path).rglob("*")} if Path(path).exists() else set()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Six phantoms (five to train, one to predict), planned with a tiny network and preprocessed;
    one per test module."""
    from nndose.datasets.phantoms import generate_phantom_dataset
    root = tmp_path_factory.mktemp("nndose")
    env = {v: str(root / v) for v in ENV_VARIABLES}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    generate_phantom_dataset(root / "nndose_raw" / "Dataset042_Tiny", 6, seed=1, test_fraction=0.2,
                             num_processes=1, progress=False)
    plan_quietly(42, TINY_PLANNER)
    yield root, env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def env(workspace, monkeypatch):
    """The module's workspace with an empty results folder."""
    root, env = workspace
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    shutil.rmtree(root / "nndose_results", ignore_errors=True)
    return root
