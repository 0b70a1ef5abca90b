"""Training memory of a residual-encoder U-Net, estimated from its topology (bytes).

Activations kept for the backward pass, in AMP half precision (2 bytes):
  encoder stage s: blocks_s residual blocks x 2 convolutions x 3 tensors (conv, norm, activation)
                   x features_s x voxels_s; stage 0 also keeps its stem convolution (3 tensors);
  decoder stage s (all but the deepest): transposed-conv output (features_s x voxels_s), the
                   concatenation (2 features_s x voxels_s) and conv_dec_s x 3 tensors x features_s x voxels_s;
  input channels, output and target at full resolution.
Parameters in fp32 with gradient and two Adam moments: 16 bytes each. Plus a fixed 1 GiB for the
CUDA context and workspace. Deliberately simple and pinned by a test; the planner only compares it
with the budget.
"""
from __future__ import annotations

import numpy as np

ACT_BYTES = 2
PARAM_BYTES = 16
FIXED_BYTES = 1 << 30


def stage_voxels(patch_zyx, strides) -> list[int]:
    shape = np.asarray(patch_zyx, dtype=np.int64)
    out = []
    for s in strides:
        shape = shape // np.asarray(s)
        out.append(int(np.prod(shape)))
    return out


def count_parameters(n_in: int, features, kernels, blocks, conv_dec) -> int:
    k = [int(np.prod(kk)) for kk in kernels]
    total = k[0] * n_in * features[0]  # stem
    prev = features[0]
    for s, f in enumerate(features):
        if s > 0:
            total += k[s] * prev * f  # strided conv opening the stage
        total += blocks[s] * 2 * k[s] * f * f
        prev = f
    for s in range(len(features) - 1):
        total += 8 * features[s + 1] * features[s]  # transposed conv (2x2x2 upper bound)
        total += conv_dec[s] * k[s] * 2 * features[s] * features[s]
    total += features[0]  # 1x1x1 output head
    return int(total)


def estimate_training_bytes(patch_zyx, n_in: int, features, kernels, strides, blocks, conv_dec, batch_size: int) -> int:
    vox = stage_voxels(patch_zyx, strides)
    act = (n_in + 2) * vox[0] + 3 * features[0] * vox[0]
    for s, (f, v) in enumerate(zip(features, vox)):
        act += blocks[s] * 2 * 3 * f * v
        if s < len(features) - 1:
            act += (f + 2 * f + conv_dec[s] * 3 * f) * v
    params = count_parameters(n_in, features, kernels, blocks, conv_dec)
    return int(batch_size * act * ACT_BYTES + params * PARAM_BYTES + FIXED_BYTES)
