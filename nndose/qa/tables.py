"""qa.json (every number and flag) and qa.csv (one row per case and structure) of plan QA results."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from nndose.io.atomic import atomic_write_json, atomic_write_text
from nndose.io.layout import QA_TABLE_CSV, QA_TABLE_JSON
from nndose.qa.compare import METRIC_NAMES, CaseQA, rank_cases

FIELDS = ("clinical", "predicted", "lower", "upper", "margin", "bias")
COLUMNS = ("case", "structure", "kind", "flagged", "reason",
           *(f"{m}_{f}" for m in METRIC_NAMES for f in FIELDS))


def csv_rows(case_qa: CaseQA) -> list[dict[str, str]]:
    """One row per structure; empty cells for the metrics that do not apply to its kind."""
    rows = []
    for s in case_qa.structures:
        row = dict.fromkeys(COLUMNS, "")
        row.update(case=case_qa.case, structure=s.name, kind=s.kind, flagged="true" if s.flagged else "false",
                   reason=s.reason)
        for m in s.metrics:
            row.update({f"{m.name}_{f}": "" if getattr(m, f) is None else f"{getattr(m, f):.4f}" for f in FIELDS})
        rows.append(row)
    return rows


def _csv_text(case_qas: list[CaseQA]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in case_qas:
        writer.writerows(csv_rows(c))
    return buffer.getvalue()


def write_case_outputs(case_qa: CaseQA, folder: Path | str) -> None:
    """folder/qa.json and folder/qa.csv of one case."""
    atomic_write_json(Path(folder) / QA_TABLE_JSON, case_qa.to_json())
    atomic_write_text(Path(folder) / QA_TABLE_CSV, _csv_text([case_qa]))


def write_cohort_outputs(case_qas: list[CaseQA], folder: Path | str, calibration: dict | None = None) -> None:
    """folder/qa.json and folder/qa.csv of every case, ranked by sparing left (largest first); qa.json
    also holds the calibrated margins the flags used (null: none)."""
    ranked = rank_cases(case_qas)
    atomic_write_json(Path(folder) / QA_TABLE_JSON, {
        "calibration": calibration,
        "ranking": [{"case": c.case, "sparing_left_gy": c.sparing_left_gy, "n_flagged_organs": c.n_flagged_organs}
                    for c in ranked],
        "cases": [c.to_json() for c in ranked]})
    atomic_write_text(Path(folder) / QA_TABLE_CSV, _csv_text(ranked))
