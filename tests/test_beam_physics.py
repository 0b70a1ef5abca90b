"""Physics of the beam-geometry channel: rotation, mirroring, no upstream dose, depth and distance."""
import numpy as np
import pytest
from scipy import ndimage

from nndose.geometry.beams import BeamDirection, arc_directions, plan_directions
from nndose.geometry.rasterizer import attenuation_coefficient_per_mm, beam_geometry_channel
from nndose.io.plan_file import Arc, parse_plan
from nndose.io.volumes import Grid


def _grid(n=41, nz=21, sp=5.0):
    return Grid((nz, n, n), (sp, sp, sp), (-(n - 1) / 2 * sp, -(n - 1) / 2 * sp, -(nz - 1) / 2 * sp))


def _xyz(grid):
    p = grid.physical_points()
    return p[..., 0], p[..., 1], p[..., 2]


def _channel(ct, grid, target, gantries, iso, couches=None, sad=1000.0):
    couches = couches or [0.0] * len(gantries)
    dirs = [BeamDirection(g, c) for g, c in zip(gantries, couches)]
    return beam_geometry_channel(ct, grid, target, dirs, iso, sad, 6.0)


def test_rotating_gantry_angles_rotates_channel_about_isocenter():
    grid = _grid()
    x, y, z = _xyz(grid)
    body = x ** 2 + y ** 2 <= 90 ** 2
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    ct[(x ** 2 + y ** 2 <= 90 ** 2) & (x ** 2 + y ** 2 >= 80 ** 2)] = 400.0  # a symmetric bone ring
    target = x ** 2 + y ** 2 + z ** 2 <= 22 ** 2
    base = _channel(ct, grid, target, [0.0, 50.0, 120.0], (0, 0, 0))
    turned = _channel(ct, grid, target, [90.0, 140.0, 210.0], (0, 0, 0))
    # gantry +90 degrees moves the source from anterior (-y) to the patient's left (+x): (x, y) -> (-y, x)
    expected = base[:, ::-1, :].transpose(0, 2, 1)
    assert np.abs(turned - expected).max() < 1e-3 * base.max()
    assert np.abs(turned - base).max() > 0.2 * base.max()  # the test is not trivially symmetric
    # an arbitrary angle: rotate by 30 degrees with interpolation, compare inside the body
    turned30 = _channel(ct, grid, target, [30.0, 80.0, 150.0], (0, 0, 0))
    inner = x ** 2 + y ** 2 <= 75 ** 2

    def error(angle):  # mean |difference| inside the body after resampling `base` rotated by angle
        rotated = ndimage.rotate(base, angle, axes=(1, 2), reshape=False, order=1)
        return np.abs(turned30 - rotated)[inner].mean() / base[inner].mean()
    assert error(-30.0) < 0.05      # interpolation of 5 mm voxels only (measured 3.8 %)
    assert error(+30.0) > 0.2       # the wrong sense of rotation is far off


def test_mirrored_patient_and_plan_give_mirrored_channel():
    grid = _grid()
    x, y, z = _xyz(grid)
    body = (x / 95) ** 2 + (y / 80) ** 2 <= 1
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    ct[((x - 40) ** 2 + (y - 20) ** 2 <= 15 ** 2)] = 900.0   # bone on the left
    ct[((x + 30) ** 2 + (y + 30) ** 2 <= 20 ** 2)] = -750.0  # lung-like on the right
    target = (x + 25) ** 2 + (y - 10) ** 2 + (z - 5) ** 2 <= 18 ** 2
    iso = (-25.0, 10.0, 5.0)
    gantries, couches = [20.0, 100.0, 230.0], [0.0, 0.0, 15.0]
    original = _channel(ct, grid, target, gantries, iso, couches)
    mirrored = _channel(ct[:, :, ::-1].copy(), grid, target[:, :, ::-1].copy(), [(360 - g) % 360 for g in gantries],
                        (25.0, 10.0, 5.0), [(360 - c) % 360 for c in couches])
    assert np.abs(mirrored - original[:, :, ::-1]).max() < 1e-3 * original.max()
    assert np.abs(original - original[:, :, ::-1]).max() > 0.2 * original.max()


@pytest.mark.parametrize("gantry", [0.0, 73.0, 180.0, 290.0])
def test_no_dose_upstream_of_the_body_surface(gantry):
    grid = _grid()
    x, y, z = _xyz(grid)
    body = (x / 80) ** 2 + (y / 70) ** 2 <= 1
    ct = np.where(body, 10.0, -1000.0).astype(np.float32)
    target = x ** 2 + y ** 2 + z ** 2 <= 20 ** 2
    ch = _channel(ct, grid, target, [gantry], (0, 0, 0))
    assert ch[~body].max() == 0.0
    assert ch[target].min() > 0.5


def test_anterior_beam_enters_at_the_surface():
    grid = _grid()
    x, y, z = _xyz(grid)
    body = (x / 80) ** 2 + (y / 70) ** 2 <= 1
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    target = x ** 2 + y ** 2 + z ** 2 <= 20 ** 2
    ch = _channel(ct, grid, target, [0.0], (0, 0, 0))
    column = ch[10, :, 20]          # central axis (x = 0), anterior (y < 0) first
    inside = np.flatnonzero(body[10, :, 20])
    assert np.all(column[: inside[0]] == 0)
    assert column[inside[0]] > 0
    # past the build-up the dose only falls with depth
    beyond = column[inside[0] + 4: inside[-1]]
    assert np.all(np.diff(beyond) < 0)


@pytest.mark.parametrize("sad", [800.0, 1000.0])
def test_depth_dose_follows_attenuation_and_inverse_square(sad):
    grid = _grid(n=61, nz=21, sp=4.0)
    x, y, z = _xyz(grid)
    body = (np.abs(x) <= 110) & (np.abs(y) <= 110)
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    target = (np.abs(x) <= 40) & (np.abs(y) <= 100) & (np.abs(z) <= 30)
    ch = _channel(ct, grid, target, [0.0], (0, 0, 0), sad=sad)
    j1, j2 = 30 - 10, 30 + 10             # y = -40 mm and +40 mm on the central axis
    d1, d2 = 110 - 40, 110 + 40            # depths in water below the anterior surface (y = -110)
    r1, r2 = sad - 40, sad + 40
    expected = (r1 / r2) ** 2 * np.exp(-attenuation_coefficient_per_mm(6.0) * (d2 - d1))
    assert ch[10, j2, 30] / ch[10, j1, 30] == pytest.approx(expected, rel=0.02)


def test_arc_sampling_and_plan_directions():
    dirs = arc_directions(Arc(181.0, 179.0, "CW"), 10.0)
    assert len(dirs) == 36
    assert dirs[0].gantry_deg == pytest.approx(181.0 + 358.0 / 72)
    assert sum(d.weight for d in dirs) == pytest.approx(35.8)
    ccw = arc_directions(Arc(90.0, 0.0, "CCW"), 30.0)
    assert [round(d.gantry_deg) for d in ccw] == [75, 45, 15]
    plan = parse_plan({"site": "s", "modality": "VMAT", "machine": {"name": "m", "sad_mm": 1000, "energy_mv": 6},
                       "prescriptions": [{"structure": "P", "dose_gy": 2, "fractions": 1}], "isocenter_mm": [0, 0, 0],
                       "beams": [{"gantry_deg": 0}], "arcs": [{"gantry_start_deg": 0, "gantry_stop_deg": 90}]})
    assert len(plan_directions(plan, 10.0)) == 1 + 9


def test_couch_rotation_makes_a_non_coplanar_beam_along_the_cranio_caudal_axis():
    grid = _grid(n=31, nz=31, sp=5.0)
    x, y, z = _xyz(grid)
    ct = np.where((np.abs(x) <= 70) & (np.abs(y) <= 70) & (np.abs(z) <= 70), 0.0, -1000.0).astype(np.float32)
    target = (np.abs(x) <= 12) & (np.abs(y) <= 12) & (np.abs(z) <= 12)
    coplanar = _channel(ct, grid, target, [90.0], (0, 0, 0))
    turned = _channel(ct, grid, target, [90.0], (0, 0, 0), couches=[90.0])
    c = 15  # the isocenter's index on every axis
    # couch 0: the lateral beam crosses the body along x and misses the slices far above and below
    assert coplanar[c, c, 2] > 0 and coplanar[c, c, -3] > 0 and coplanar[2, c, c] == 0 and coplanar[-3, c, c] == 0
    # couch 90: the same gantry angle now enters through a cranio-caudal face and spares the lateral parts
    assert turned[2, c, c] > 0 and turned[-3, c, c] > 0 and turned[c, c, 2] == 0 and turned[c, c, -3] == 0
    axis = turned[2:-2, c, c]
    entry_first = axis[0] > axis[-1]   # whichever face the source is on, dose falls with depth past the build-up
    profile = axis if entry_first else axis[::-1]
    assert np.all(np.diff(profile[4:]) < 0)


def test_one_beam_channel_per_delivery_sums_to_the_single_channel():
    """A plan with a coplanar beam, a couch-turned beam and an arc: its three delivery channels are the
    single channel's parts (each the channel of its directions alone, on the single channel's scale),
    and sum to it; a delivery the plan does not use is zero."""
    from nndose.geometry.beams import directions_by_delivery
    from nndose.plans import BeamChannelSettings
    from nndose.preprocessing.channels import beam_channels
    grid = _grid(n=31, nz=31, sp=5.0)
    x, y, z = _xyz(grid)
    body = (np.abs(x) <= 70) & (np.abs(y) <= 70) & (np.abs(z) <= 70)
    ct = np.where(body, 0.0, -1000.0).astype(np.float32)
    target = (np.abs(x) <= 12) & (np.abs(y) <= 12) & (np.abs(z) <= 12)
    plan = parse_plan({"site": "s", "modality": "VMAT", "machine": {"name": "m", "sad_mm": 1000, "energy_mv": 6},
                       "prescriptions": [{"structure": "P", "dose_gy": 2, "fractions": 1}], "isocenter_mm": [0, 0, 0],
                       "beams": [{"gantry_deg": 90}, {"gantry_deg": 30, "couch_deg": 270}],
                       "arcs": [{"gantry_start_deg": 0, "gantry_stop_deg": 90}]})
    groups = directions_by_delivery(plan, 10.0)
    assert [len(groups[d]) for d in ("static", "arc", "noncoplanar")] == [1, 9, 1]
    settings = BeamChannelSettings(True, 10.0, 5.0, 3.0, 2.0)
    channels = beam_channels(ct, grid, body, plan, target, settings)
    single = beam_geometry_channel(ct, grid, target, plan_directions(plan, 10.0), (0, 0, 0), 1000.0, 6.0,
                                   5.0, 3.0, 2.0, within=body) * body
    assert channels["beam_dose"] == pytest.approx(single, abs=1e-5)
    assert channels["beam_dose"][target].mean() == pytest.approx(1.0)
    parts = [channels[f"beam_dose_{d}"] for d in ("static", "arc", "noncoplanar")]
    assert sum(parts) == pytest.approx(channels["beam_dose"], abs=1e-5)
    # each part, normalized on its own, is the channel of its directions alone
    for part, delivery in zip(parts, ("static", "arc", "noncoplanar")):
        alone = beam_geometry_channel(ct, grid, target, groups[delivery], (0, 0, 0), 1000.0, 6.0, 5.0, 3.0, 2.0,
                                      within=body) * body
        assert part.max() > 0 and part / part[target].mean() == pytest.approx(alone, abs=1e-5)
    arcs_only = parse_plan({"site": "s", "modality": "VMAT", "machine": {"name": "m", "sad_mm": 1000, "energy_mv": 6},
                            "prescriptions": [{"structure": "P", "dose_gy": 2, "fractions": 1}],
                            "isocenter_mm": [0, 0, 0], "beams": [], "arcs": [{"gantry_start_deg": 0, "gantry_stop_deg": 90}]})
    only = beam_channels(ct, grid, body, arcs_only, target, settings)
    assert not only["beam_dose_static"].any() and not only["beam_dose_noncoplanar"].any()
    assert only["beam_dose_arc"] == pytest.approx(only["beam_dose"])
