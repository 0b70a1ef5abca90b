"""Networks built from the plan alone: `build_network(configuration)` is shared by planning (its
memory estimate), training and inference. The plan names the class; only the classes registered
here can be named, so a plan file (e.g. inside an installed model) never chooses code to run."""
from __future__ import annotations

from torch import nn

from nndose.errors import NndoseError
from nndose.networks.resenc_unet import PlainConvUNet, ResEncUNet
from nndose.plans import Architecture, Configuration

NETWORKS: dict[str, type[ResEncUNet]] = {"ResEncUNet": ResEncUNet, "PlainConvUNet": PlainConvUNet}


def network_class(name: str) -> type[ResEncUNet]:
    if name not in NETWORKS:
        raise NndoseError(f"network class {name!r} is not known to this nndose (known: {', '.join(NETWORKS)})")
    return NETWORKS[name]


def build_from_architecture(in_channels: int, arch: Architecture) -> nn.Module:
    return network_class(arch.class_name).from_architecture(in_channels, arch)


def build_network(conf: Configuration) -> nn.Module:
    """The configuration's network: one input per channel, one output (dose / reference dose)."""
    return build_from_architecture(len(conf.channels), conf.network)
