"""The pretrained head-and-neck model kept in the repository (pretrained/*.zip, made by
benchmarks/openkbp_gpu.py on the 169 OpenKBP training patients): installed with nndose_install_model,
it predicts a validation patient it never saw, on the CPU and without any training data, with a dose
score below 3 Gy. Skips when the model file or the OpenKBP data is absent."""
import json
import shutil
from pathlib import Path

import pytest

from nndose.cli.convert_openkbp import main as convert_main
from nndose.cli.evaluate import main as evaluate_main
from nndose.cli.model_sharing import install_main
from nndose.cli.predict import main as predict_main
from nndose.paths import parse_dataset_id
from tests.conftest import OPENKBP_ARCHIVES, REPO, run_ok
from tests.openkbp_helpers import extract_real_patients

MODELS = sorted((REPO / "pretrained").glob("*.zip"))


@pytest.mark.skipif(not MODELS, reason="no pretrained/*.zip in this checkout")
@pytest.mark.skipif(not (OPENKBP_ARCHIVES / "openkbp-validation.tar.xz").is_file(), reason="OpenKBP data absent")
def test_the_pretrained_model_predicts_an_unseen_patient_on_the_cpu(nndose_env, tmp_path, capsys):
    patient = extract_real_patients(tmp_path / "csv", 1)[0]
    run_ok(convert_main, ["-i", str(patient.parent), "-d", "960", "--test", "-np", "1"], capsys)
    (nndose_env["nndose_results"]).rmdir()
    run_ok(install_main, [str(MODELS[0])], capsys)
    installed = sorted(nndose_env["nndose_results"].glob("Dataset*/*__*__3d_fullres"))
    assert installed, "the archive holds no 3d_fullres model"
    dataset_id = str(parse_dataset_id(installed[0].parent.name))
    trainer = installed[0].name.split("__")[0]
    raw = nndose_env["nndose_raw"] / "Dataset960_OpenKBP"
    shutil.rmtree(nndose_env["nndose_preprocessed"])       # no training data of any kind
    pred = tmp_path / "pred"
    run_ok(predict_main, ["-i", str(raw / "casesTs"), "-o", str(pred), "-d", dataset_id, "-c", "3d_fullres",
                          "-tr", trainer, "--device", "cpu"], capsys)
    run_ok(evaluate_main, ["-ref", str(raw / "casesTs"), "-pred", str(pred)], capsys)
    score = json.loads((pred / "summary.json").read_text())["aggregate"]["dose_score"]
    assert score < 3.0, f"{patient.name}: dose score {score:.2f} Gy"
