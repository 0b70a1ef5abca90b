"""Left-right mirroring that keeps laterality true: the image flips along x (data axis 2, right ->
left) and the channels of paired organs (X_L/X_R, LeftX/RightX, ...) swap. Test-time augmentation
uses it, and so does training's mirroring augmentation."""
from __future__ import annotations

import re

import torch

_PAIRS = ((r"_L$", "_R"), (r"Left", "Right"), (r"_left$", "_right"), (r"^(organ_)L_", r"\1R_"))


def lateral_pairs(channels: list[str]) -> list[tuple[int, int]]:
    """Index pairs of channels that swap under a left-right mirror (X_L/X_R, LeftX/RightX, ...)."""
    pairs = []
    index = {c: i for i, c in enumerate(channels)}
    for c, i in index.items():
        for pat, rep in _PAIRS:
            other = re.sub(pat, rep, c)
            if other != c and other in index and (i, index[other]) not in pairs:
                pairs.append((i, index[other]))
    return pairs


def mirror_lr(image: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """Flip a (C, Z, Y, X) or (B, C, Z, Y, X) tensor left-right and swap paired channels."""
    ch = image.ndim - 4
    out = torch.flip(image, (image.ndim - 1,))
    if pairs:
        perm = list(range(image.shape[ch]))
        for i, j in pairs:
            perm[i], perm[j] = j, i
        out = out.index_select(ch, torch.tensor(perm, device=image.device))
    return out
