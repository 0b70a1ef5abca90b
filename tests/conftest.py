"""Shared fixtures: temporary nndose folders, the template dataset, and running a console command."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "nndose_raw_template" / "Dataset000_Template"
OPENKBP_ARCHIVES = REPO.parent / "shared" / "data" / "openkbp"


@pytest.fixture
def nndose_env(tmp_path, monkeypatch):
    """nndose_raw / nndose_preprocessed / nndose_results under tmp_path."""
    roots = {}
    for var in ("nndose_raw", "nndose_preprocessed", "nndose_results"):
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


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in Path(path).rglob("*")} if Path(path).exists() else set()
