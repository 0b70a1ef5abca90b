"""Sliding window, network shapes, mirroring with laterality."""
import numpy as np
import torch

from nndose.inference.sliding_window import (gaussian_weights, sliding_window, tile_starts, window_starts,
                                             windows_per_forward)
from nndose.inference.mirroring import lateral_pairs, mirror_lr
from nndose.networks.resenc_unet import ResEncUNet
from nndose.training.augmentation import LateralMirror, training_transforms


def test_tiles_cover_the_volume():
    assert tile_starts(10, 16, 0.5) == [0]
    starts = tile_starts(50, 16, 0.5)
    assert starts[0] == 0 and starts[-1] == 34 and max(np.diff(starts)) <= 8


def test_sliding_window_reproduces_a_pointwise_function_exactly():
    image = torch.rand(2, 21, 37, 30)
    out = sliding_window(lambda x: x[:, :1] * 3 + x[:, 1:2], image, (16, 16, 16), 0.5)
    assert out.dtype == torch.float32 and out.shape == (21, 37, 30)
    assert torch.allclose(out, image[0] * 3 + image[1], atol=1e-5)


def test_batched_windows_give_the_same_dose_in_even_groups():
    torch.manual_seed(0)
    net = ResEncUNet(2, [4, 8], [[3, 3, 3]] * 2, [[1, 1, 1], [2, 2, 2]], [1, 1], [1]).eval()
    image = torch.rand(2, 21, 37, 30)   # 2 x 4 x 3 = 24 windows of 16^3
    sizes = []

    def predict(x):
        sizes.append(len(x))
        return net(x)
    one = sliding_window(predict, image, (16, 16, 16), 0.5, batch=1)
    assert sizes == [1] * 24
    sizes.clear()
    five = sliding_window(predict, image, (16, 16, 16), 0.5, batch=5)
    assert sizes == [4, 5, 5, 5, 5]   # 24 windows in 5 groups, no lone window
    assert torch.allclose(one, five, atol=1e-5)
    sizes.clear()
    sliding_window(predict, image, (16, 16, 16), 0.5)   # default: windows_per_forward(16^3) = 8
    assert sizes == [8, 8, 8] and len(window_starts(image.shape[1:], (16, 16, 16))) == 24
    assert windows_per_forward((32, 28, 48)) == 8 and windows_per_forward((96, 80, 128)) == 1
    assert windows_per_forward((64, 64, 64)) == 2


def test_sliding_window_pads_small_images_with_channel_values():
    image = torch.zeros(2, 5, 6, 7)
    seen = []

    def predict(x):
        seen.append(x.clone())
        return x[:, :1]
    out = sliding_window(predict, image, (8, 8, 8), 0.5, pad_values=[-3.0, 0.0])
    assert out.shape == (5, 6, 7) and torch.all(out == 0)
    assert seen[0][0, 0].min() == -3.0 and seen[0][0, 1].min() == 0.0


def test_gaussian_weights_peak_in_the_centre():
    w = gaussian_weights((9, 9, 9))
    assert w[4, 4, 4] == 1.0 and w.min() > 0 and w[0, 0, 0] < 0.01


def test_network_shapes_and_linear_output():
    net = ResEncUNet(5, [4, 8, 16], [[3, 3, 3]] * 3, [[1, 1, 1], [2, 2, 2], [1, 2, 2]], [1, 1, 1], [1, 1])
    y = net(torch.randn(2, 5, 16, 16, 16))
    assert y.shape == (2, 1, 16, 16, 16)
    # linear head: shifting its bias moves every output one for one (an activation after it would not)
    net.eval()
    x = torch.randn(1, 5, 16, 16, 16)
    with torch.no_grad():
        before = net(x)
        net.head.bias += 5.0
        after = net(x)
    assert before.min() < 0 and torch.allclose(after, before + 5.0, atol=1e-5)


def test_lateral_pairs_and_mirror_commute():
    channels = ["ct", "organ_Parotid_L", "organ_Parotid_R", "organ_LeftLung", "organ_RightLung", "body"]
    assert lateral_pairs(channels) == [(1, 2), (3, 4)]
    x = torch.rand(6, 3, 4, 5)
    m = mirror_lr(x, lateral_pairs(channels))
    assert torch.equal(m[1], torch.flip(x[2], (2,))) and torch.equal(m[0], torch.flip(x[0], (2,)))
    assert torch.equal(mirror_lr(m, lateral_pairs(channels)), x)  # an involution


def test_lateral_mirror_moves_dose_with_anatomy():
    t = LateralMirror([(1, 2)], p=1.0)
    image = torch.rand(3, 4, 5, 6)
    dose = torch.rand(1, 4, 5, 6)
    out = t(image=image.clone(), regression_target=dose.clone())
    assert torch.equal(out["regression_target"], torch.flip(dose, (3,)))
    assert torch.equal(out["image"][2], torch.flip(image[1], (2,)))


def test_training_transforms_keep_shapes_and_leave_masks_unflipped_in_value():
    channels = ["ct", "prescription", "organ_Cord", "body", "beam_dose"]
    t = training_transforms((8, 12, 12), channels, p_rotation=1.0, p_scaling=1.0)
    image = torch.rand(5, 9, 18, 18)
    out = t(image=image, regression_target=torch.rand(1, 9, 18, 18))
    assert out["image"].shape == (5, 8, 12, 12) and out["regression_target"].shape == (1, 8, 12, 12)
    assert torch.isfinite(out["image"]).all()
