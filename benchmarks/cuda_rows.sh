#!/usr/bin/env bash
# Every CUDA row of the performance benchmarks on this machine's GPU, each result named after it in
# benchmarks/results/: inference (1 fold, mirroring, 5 folds, the MONAI loop), the OpenKBP accuracy
# run within a training budget, the training step (AMP, torch.compile) and the data loader against it.
# usage: benchmarks/cuda_rows.sh [TRAINING_MINUTES]   (default 240; PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-240}
py=${PYTHON:-python}
if ! gpu=$("$py" -c "import torch; print(torch.cuda.get_device_name(0).lower().replace(' ', '_')) if torch.cuda.is_available() else exit(1)" 2>/dev/null); then
    echo "cuda_rows.sh: no CUDA device visible to $py (the CPU rows are benchmarks/*.py --device cpu)" >&2
    exit 2
fi
out=benchmarks/results
pre=/tmp/nndose_openkbp_run/nndose_preprocessed/Dataset960_OpenKBP
"$py" -m benchmarks.inference --device cuda -o "$out/inference_openkbp_$gpu.json"
"$py" -m benchmarks.openkbp --minutes "$minutes" -np "$(nproc)" -o "$out/openkbp_$gpu.json"
"$py" -m benchmarks.training_speed --preprocessed "$pre" -o "$out/training_speed_openkbp_${gpu}_compiled.json"
"$py" -m benchmarks.dataloader --preprocessed "$pre" -o "$out/dataloader_openkbp_$gpu.json"
