"""Training memory of the network a plan builds, from the real module (bytes).

The network is built exactly as training builds it (`nndose.networks`), on PyTorch's meta device
(no memory, no arithmetic), and a forward pass counts every tensor autograd saves for the backward
pass that is not a parameter. For every patch the pooling divides, that count is a*voxels + b (the
feature maps scale with the patch; b holds the normalization statistics), so it is measured once
per topology at two such patches and extrapolated exactly.

bytes = batch x (saved activation elements + output and target) x 2 (AMP half precision)
      + parameters x 16 (fp32 weight, gradient and AdamW's two moments)
      + 1 GiB (CUDA context and workspace).
A test checks the parameter count against a hand computation and the saved elements against a real
forward pass on the CPU.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from nndose.networks import build_from_architecture
from nndose.plans import Architecture

ACT_BYTES = 2
PARAM_BYTES = 16
FIXED_BYTES = 1 << 30


def unit_patch(arch: Architecture) -> tuple[int, int, int]:
    """The smallest patch every stage of the network accepts in training: twice the total pooling
    (instance norm needs more than one voxel per feature map)."""
    return tuple(2 * math.prod(s[a] for s in arch.strides) for a in range(3))


def saved_activation_elements(net: torch.nn.Module, input_shape) -> int:
    """Elements of the non-parameter tensors a forward pass of `net` saves for backward (each storage
    once), for an input of `input_shape` on the module's device."""
    params = {p.untyped_storage()._cdata for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage.nbytes() // t.element_size()
        return t

    device = next(net.parameters()).device
    x = torch.empty(input_shape, device=device) if device.type == "meta" else torch.randn(input_shape, device=device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    del out
    return sum(saved.values())


@lru_cache(maxsize=64)
def _linear_model(arch: Architecture, in_channels: int) -> tuple[float, float, int]:
    """(a, b, parameter count) of the real module: one sample saves a*voxels + b elements."""
    with torch.device("meta"):
        net = build_from_architecture(in_channels, arch)
    unit = unit_patch(arch)
    double = (2 * unit[0], *unit[1:])
    small = saved_activation_elements(net, (1, in_channels, *unit))
    large = saved_activation_elements(net, (1, in_channels, *double))
    a = (large - small) / math.prod(unit)
    return a, small - a * math.prod(unit), sum(p.numel() for p in net.parameters())


def count_parameters(arch: Architecture, in_channels: int) -> int:
    return _linear_model(arch, in_channels)[2]


def activation_elements(arch: Architecture, in_channels: int, patch_zyx) -> int:
    """Saved activation elements of one sample of a patch the pooling divides."""
    a, b, _ = _linear_model(arch, in_channels)
    return int(round(a * math.prod(patch_zyx) + b))


def estimate_training_bytes(arch: Architecture, in_channels: int, patch_zyx, batch_size: int) -> int:
    per_sample = activation_elements(arch, in_channels, patch_zyx) + 2 * math.prod(patch_zyx)   # + output, target
    return int(batch_size * per_sample * ACT_BYTES + count_parameters(arch, in_channels) * PARAM_BYTES + FIXED_BYTES)
