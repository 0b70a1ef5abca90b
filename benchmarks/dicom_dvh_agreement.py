"""DVH agreement between nndose_evaluate and an independent reader (dicompyler-core) on an
RTDOSE written by nndose_export_dicom. Two steps, because dicompyler-core 0.5.6 needs pydicom < 3:

python -m benchmarks.dicom_dvh_agreement export --work /tmp/dvh      # in the nndose environment
python benchmarks/dicom_dvh_agreement.py compare --work /tmp/dvh -o benchmarks/results/dicom_dvh_agreement.json
                                                                     # in an environment with dicompyler-core

`export` writes a synthetic DICOM patient, converts it with nndose_convert_dicom, exports the
converted dose as an RTDOSE and evaluates it with nndose_evaluate; `compare` computes each ROI's
DVH with dicompyler-core from the original RTSTRUCT and the exported RTDOSE and reports the
relative difference of Dmean, D95, D50 and D2 (points under 1 Gy are compared in absolute Gy).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

ROIS = {2: "PTV70", 3: "Ring", 4: "Islands"}


def export(work: Path) -> None:
    from nndose.dicom import synthetic
    from nndose.dicom.convert import convert_dicom
    from nndose.dicom.export import export_dicom
    from nndose.dicom.structure_map import parse_structure_map
    from nndose.evaluation.evaluate import evaluate_folder
    from nndose.io.atomic import atomic_write_json
    from nndose.io.layout import DOSE_FILE, NIFTI, TEST_DIR, prediction_path

    shutil.rmtree(work, ignore_errors=True)
    synthetic.write_patient(work / "dicom" / "P001", "P001")
    dataset = work / "raw" / "Dataset003_DICOM"
    report = convert_dicom(work / "dicom", dataset, parse_structure_map(synthetic.STRUCTURE_MAP, "map"), test=True,
                           progress=False)
    if report.problems:
        raise SystemExit("; ".join(report.problems))
    case = dataset / TEST_DIR / "P001"
    (work / "pred").mkdir()
    shutil.copy(case / f"{DOSE_FILE}{NIFTI}", prediction_path(work / "pred", "P001"))
    export_dicom(work / "pred", work / "dicom", work / "rtdose")
    atomic_write_json(work / "nndose_summary.json", evaluate_folder(case.parent, work / "pred"))


def compare(work: Path, out: Path) -> None:
    from dicompylercore import dvhcalc

    ours = json.loads((work / "nndose_summary.json").read_text())["cases"][0]["structures"]
    rows, worst = [], 0.0
    for roi, name in ROIS.items():
        dvh = dvhcalc.get_dvh(str(work / "dicom" / "P001" / "RS.dcm"), str(work / "rtdose" / "P001" / "RTDOSE_P001.dcm"), roi)
        for point, theirs in (("Dmean", dvh.mean), ("D95", dvh.D95.value), ("D50", dvh.D50.value), ("D2", dvh.D2.value)):
            mine = ours[name]["prediction"][point]
            diff = abs(float(theirs) - mine)
            rel = diff / mine * 100 if mine >= 1.0 else None
            worst = max(worst, rel or 0.0)
            rows.append({"structure": name, "point": point, "dicompyler_gy": float(theirs), "nndose_gy": mine,
                         "abs_diff_gy": diff, "rel_diff_percent": rel})
    result = {"rows": rows, "worst_relative_difference_percent": worst}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("step", choices=["export", "compare"])
    ap.add_argument("--work", type=Path, default=Path("/tmp/nndose_dvh_agreement"))
    ap.add_argument("-o", type=Path, default=Path("dicom_dvh_agreement.json"))
    args = ap.parse_args()
    export(args.work) if args.step == "export" else compare(args.work, args.o)


if __name__ == "__main__":
    main()
