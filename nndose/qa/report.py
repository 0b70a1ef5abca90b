"""Self-contained HTML plan-QA reports: a page per case and a cohort index ranking the plans.

Inline CSS, every figure a PNG in a data: URI, every name escaped; nothing external, no JavaScript.
Case page: title, the flags, all metrics, DVH overlays with the folds' band, and dose / difference
slices through every flagged structure.
"""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path

import numpy as np

from nndose.errors import NndoseError
from nndose.io.atomic import atomic_write_text
from nndose.qa.calibration import basis_in_words
from nndose.qa.compare import CaseQA, ensemble_mean, flag_metrics_in_words, rank_cases
from nndose.qa.figures import dvh_band_in_words, dvh_png, slice_png

FLAG_COLOR = "#ffc8c8"  # background of a flagged row
STYLE = f"""
body {{ font-family: sans-serif; margin: 24px; color: #222; background: #fff; }}
table {{ border-collapse: collapse; margin: 8px 0 24px; }}
th, td {{ border: 1px solid #bbb; padding: 3px 8px; text-align: left; font-size: 14px; }}
th {{ background: #eee; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.flagged td {{ background: {FLAG_COLOR}; }}
p.summary {{ font-size: 15px; }}
img {{ max-width: 100%; display: block; margin: 8px 0 16px; }}
"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _row(cells: list[str], flagged: bool, numeric: tuple[int, ...] = ()) -> str:
    tds = "".join(f'<td class="num">{c}</td>' if k in numeric else f"<td>{c}</td>" for k, c in enumerate(cells))
    return f'<tr class="flagged">{tds}</tr>' if flagged else f"<tr>{tds}</tr>"


def _table(header: list[str], rows: list[str], css_class: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    return f'<table class="{css_class}"><tr>{head}</tr>\n' + "\n".join(rows) + "\n</table>"


def _flag_table(case_qa: CaseQA) -> str:
    """Every structure with its verdict, the flagged ones first."""
    rows = [_row([escape(s.name), escape(s.kind), "yes" if s.flagged else "no",
                  escape(s.reason)], s.flagged)
            for s in sorted(case_qa.structures, key=lambda s: not s.flagged)]
    return _table(["structure", "kind", "flagged", "reason"], rows, "flags")


def _metrics_table(case_qa: CaseQA) -> str:
    """Every metric; a zero-width interval (one fold, or folds that agree) shown as a dash."""
    rows = [_row([escape(s.name), escape(s.kind), escape(m.name), m.unit, f"{m.clinical:.2f}", f"{m.predicted:.2f}",
                  f"{m.lower:.2f} - {m.upper:.2f}" if m.has_interval else "-", f"{m.excess:+.2f}", f"{m.tolerance:.2f}",
                  "" if m.margin is None else f"{m.margin:.2f}", f"{m.bias:+.2f}" if m.bias else "",
                  "higher" if m.higher_is_worse else "lower",
                  ("yes" if m.flagged else "no") if m.can_flag else "shown only"],
                 m.flagged, numeric=(4, 5, 6, 7, 8, 9, 10))
            for s in case_qa.structures for m in s.metrics]
    return _table(["structure", "kind", "metric", "unit", "clinical", "predicted", "fold interval",
                   "excess (+ worse)", "tolerance", "model's error margin", "model's bias (+ worse)", "worse when", "flagged"],
                  rows, "metrics")


def _rule_paragraph(case_qa: CaseQA) -> str:
    """The flag rule in words, with the tolerance and what the margins were learnt on (with one fold, the
    interval is the prediction itself)."""
    tol, cal = case_qa.tolerance, case_qa.calibration
    text = (f"Flagged: {flag_metrics_in_words(case_qa.organ_flag_metrics)}. A value is flagged when it is worse "
            f"than the ensemble prediction by more than the tolerance "
            f"({tol.gy:g} Gy or {tol.percent:g} % of the reference dose, whichever is smaller; "
            f"{tol.percent:g} percentage points for V-x), lies outside the folds' interval"
            + (" (with one fold, the prediction itself)" if case_qa.n_folds == 1 else ""))
    if cal:
        kinds, source, missing = basis_in_words(cal)
        text += (f", and, for {kinds}, is worse by more than the model's own error allows (margins learnt on "
                 f"{cal['cases']} {source}, set for at most {100 * cal['false_alarm']:g} % of the structures of plans "
                 f"made like the training plans flagged)")
        if cal.get("scaled_kinds"):
            text += ("; where a structure's margins are its own, the tolerance and the interval are measured from the "
                     "prediction corrected by the model's bias on it (its mean error there)")
        text += f"; {missing} had too few calibration structures for margins." if missing else "."
    else:
        text += (". No margins from the model's own error (no validated folds or calibration plans, or "
                 "--no_calibration): expect flags where the model predicts poorly.")
    return f"<p>{escape(text)}</p>"


def case_report_html(case_qa: CaseQA, clinical_gy: np.ndarray, fold_predictions_gy: list[np.ndarray],
                     structures: dict[str, np.ndarray], ct_hu: np.ndarray | None = None) -> str:
    """The case page as one HTML string."""
    missing = [s.name for s in case_qa.structures if s.name not in structures]
    if missing:
        raise NndoseError(f"no mask for structure {missing[0]} of case {case_qa.case}")
    predicted = ensemble_mean(fold_predictions_gy)
    n = case_qa.n_flagged_organs
    flagged = [s for s in case_qa.structures if s.flagged]
    parts = [f"<h1>Plan QA: {escape(case_qa.case)}</h1>",
             f'<p class="summary">Reference dose {case_qa.reference_dose_gy:.2f} Gy (highest prescription); '
             f"<b>{n} organ{'' if n == 1 else 's'} at risk flagged</b>"
             + (f" ({escape(', '.join(case_qa.flagged_organs))})" if n else "")
             + (f"; targets flagged: {escape(', '.join(case_qa.flagged_targets))}" if case_qa.flagged_targets else "")
             + f"; sparing left {case_qa.sparing_left_gy:.2f} Gy (organ Dmean beyond the interval, tolerance and margin, the first two moved by the model's bias where known, summed); "
             f"{len(fold_predictions_gy)} fold{'' if len(fold_predictions_gy) == 1 else 's'}.</p>",
             _rule_paragraph(case_qa),
             "<h2>Flags</h2>", _flag_table(case_qa),
             "<h2>All metrics</h2>", _metrics_table(case_qa),
             f"<h2>DVH: clinical (solid), predicted (dashed), {dvh_band_in_words(len(fold_predictions_gy))}</h2>",
             _img(dvh_png(case_qa, clinical_gy, predicted, fold_predictions_gy, structures), "DVH overlay"),
             "<h2>Flagged structures: clinical dose, predicted dose, difference</h2>"]
    for s in flagged:
        parts += [f"<h3>{escape(s.name)}</h3>",
                  _img(slice_png(s.name, structures[s.name], clinical_gy, predicted, ct_hu), f"{s.name} slices")]
    if not flagged:
        parts.append("<p>No structure flagged.</p>")
    return _page(f"Plan QA: {case_qa.case}", "\n".join(parts))


def write_case_report(case_qa: CaseQA, clinical_gy: np.ndarray, fold_predictions_gy: list[np.ndarray],
                      structures: dict[str, np.ndarray], ct_hu: np.ndarray | None, path: Path | str) -> None:
    """The case page (e.g. <case>/report.html), written atomically."""
    atomic_write_text(path, case_report_html(case_qa, clinical_gy, fold_predictions_gy, structures, ct_hu))


def cohort_report_html(case_qas: list[CaseQA], case_links: dict[str, str]) -> str:
    """The cohort index as one HTML string: plans ranked by sparing left, largest first."""
    rows = []
    for rank, c in enumerate(rank_cases(case_qas), 1):
        name = escape(c.case)
        link = f'<a href="{escape(case_links[c.case], quote=True)}">{name}</a>' if c.case in case_links else name
        rows.append(_row([str(rank), link, f"{c.reference_dose_gy:.2f}", f"{c.sparing_left_gy:.2f}",
                          str(c.n_flagged_organs), escape(", ".join(c.flagged_organs)),
                          escape(", ".join(c.flagged_targets))],
                         bool(c.flagged_organs or c.flagged_targets), numeric=(0, 2, 3, 4)))
    body = (f"<h1>Plan QA: {len(case_qas)} plan{'' if len(case_qas) == 1 else 's'}</h1>\n"
            "<p>Ranked by sparing left: the organs' mean dose beyond what the flag rule lets pass (the folds' "
            "interval and the tolerance, moved by the model's bias where known, and the model's error margin), summed (Gy); then by the number of flagged "
            "organs and targets.</p>\n"
            + (_rule_paragraph(case_qas[0]) + "\n" if case_qas else "")
            + _table(["rank", "case", "reference dose (Gy)", "sparing left (Gy)", "number of organs flagged",
                      "organs flagged", "targets flagged"], rows, "ranking"))
    return _page("Plan QA: cohort", body)


def write_cohort_report(case_qas: list[CaseQA], path: Path | str, case_links: dict[str, str]) -> None:
    """The cohort index (e.g. index.html) linking each case to case_links[case], written atomically."""
    atomic_write_text(path, cohort_report_html(case_qas, case_links))
