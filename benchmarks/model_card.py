"""The model card written beside a model zip that benchmarks/openkbp_gpu.py exports: what the model was
trained on, how, for how long on which device, how well it scores on the held-out validation
patients against the field's reference results, how to install and use it, and the licences."""
from __future__ import annotations

# The OpenKBP test-set results the field reports (dose score, DVH score in Gy); only C3D's was blinded.
REFERENCES = (("C3D, challenge winner (blinded; an ensemble trained about 50 hours)", 2.43, 1.48),
              ("BeamDose (scored after the test doses were public)", 2.28, 1.26),
              ("BDCL (scored after the test doses were public)", 2.07, 0.98))


def _shown(value) -> str:   # a score or time, n/a where the run had none
    return "n/a" if value is None else f"{value:.2f}"


def model_card(result: dict, zip_name: str, dataset_id: int) -> str:
    """Markdown for the model `zip_name` (of dataset `dataset_id`) from the result JSON of `openkbp_gpu finish`."""
    plan = result["plan"]
    network = plan["network"]
    prepare = result["prepare"]
    recipe = ", ".join(f"{k} {v}" for k, v in sorted(plan.get("training", {}).items())) or "the trainer's defaults"
    rows = "\n".join(f"| {name} | {dose:.2f} | {dvh:.2f} |" for name, dose, dvh in REFERENCES)
    return f"""# {zip_name}: head-and-neck IMRT dose prediction (OpenKBP)

## Data
Trained on the {prepare['training_patients']} OpenKBP training patients only (AAPM OpenKBP grand challenge, Babier
et al., Medical Physics 48:5549-5561, 2021: nine-beam coplanar 6 MV IMRT, PTV56/63/70 in 35 fractions).
The {result['validation_patients']} validation patients were kept out of training and scored below.

## Recipe
- Trainer `{result['trainer']}`, one model trained on every training patient (fold `all`).
- Network {network.get('class_name', '?')}, features {network.get('features_per_stage')}, patch
  {plan['patch_size_zyx']} (z, y, x), batch {plan['batch_size']}.
- Training options: {recipe}.
- {result['epochs']} epochs of {result.get('iterations_per_epoch') or "the trainer's"} iterations in
  {result['training_minutes']:.1f} minutes on {result['device']} (torch {result['torch']}).
- Weights stored in half precision ({result['model_zip_mib']:.1f} MiB).

## Validation scores ({result['validation_patients']} patients, mirroring on, the challenge's definitions)
| model | dose score (Gy) | DVH score (Gy) |
| --- | --- | --- |
| this model | {_shown(result['dose_score_gy'])} | {_shown(result['dvh_score_gy'])} |
{rows}

The reference rows are test-set results (100 patients), this model's are validation-set results:
comparable in kind, not patient for patient. Prediction took {_shown(result.get('seconds_per_patient'))} s per
patient on the training device (the model loaded).

## Use
```bash
nndose_install_model {zip_name}
nndose_predict -i CASES -o PREDICTIONS -d {dataset_id} -c 3d_fullres -f all -tr {result['trainer']}
```
The cases are nndose raw cases (`nndose_convert_openkbp` turns OpenKBP patient folders into them;
`nndose_convert_dicom` DICOM RT). The model predicts the dose of a plan in the OpenKBP style; a
clinic's own style needs fine-tuning (`nndose_finetune`).

## Licence
The weights are released with nndose under Apache-2.0. They were learnt from the OpenKBP data: the
open-kbp repository is MIT-licensed, its CTs and contours come from The Cancer Imaging Archive (TCIA),
whose data usage policy applies to the data itself (the data is not in this zip).
"""
