"""The heuristic labeller: vorticity and distances on the sphere against analytic fields,
planted cyclones found in each hemisphere (and not without their warm core, their wind,
or with the wrong sense of rotation), planted rivers kept or dropped by each shape
condition, the date line, time linking, and the command end to end on a generated series
and on an ERA5-named file, with bad inputs answered in one line."""

import os
import shutil
import subprocess
import sys

import netCDF4
import numpy as np
import pytest

from climseg import sphere
from climseg.analytics.cyclones import detect_cyclones, link_cyclones, relative_vorticity
from climseg.analytics.label import LabelOptions
from climseg.analytics.rivers import detect_rivers
from climseg.cli import main

R = sphere.EARTH_RADIUS_KM * 1000.0


def _grid(h, w, gaussian=False):
    if gaussian:
        x, _ = np.polynomial.legendre.leggauss(h)
        lat = np.rad2deg(np.arcsin(x))
    else:
        lat = -90.0 + (np.arange(h) + 0.5) * 180.0 / h
    return lat, np.arange(w) * 360.0 / w


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("gaussian", [False, True])
def test_vorticity_of_analytic_winds(gaussian):
    rng = np.random.default_rng()
    lat, lon = _grid(181, 361, gaussian)
    phi, lam = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    big_u, big_v = rng.uniform(5, 30), rng.uniform(5, 30)
    u = big_u * np.cos(phi) * np.ones_like(lam)  # solid-body rotation: zeta = 2 U sin(phi) / R
    v = big_v * np.sin(lam) * np.ones_like(phi)  # zeta = V cos(lambda) / (R cos(phi))
    zeta = relative_vorticity(u, v, lat, lon, periodic=True)
    want = 2.0 * big_u * np.sin(phi) / R + big_v * np.cos(lam) / (R * np.cos(phi))
    inner = np.abs(lat) < 80
    err = np.abs(zeta - want)[inner].max() / np.abs(want[inner]).max()
    assert err < 2e-3, err


def test_distances_and_spacings():
    assert sphere.haversine_km(0.0, 0.0, 0.0, 90.0) == pytest.approx(np.pi * sphere.EARTH_RADIUS_KM / 2)
    assert sphere.haversine_km(0.0, 179.5, 0.0, -179.5) == pytest.approx(2 * np.pi * sphere.EARTH_RADIUS_KM / 360)
    assert sphere.haversine_km(-90.0, 0.0, 90.0, 0.0) == pytest.approx(np.pi * sphere.EARTH_RADIUS_KM)
    lat = np.array([-60.0, 0.0, 60.0])
    ns, ew = sphere.grid_spacings_km(lat, np.arange(360.0))
    degree = np.pi * sphere.EARTH_RADIUS_KM / 180.0
    np.testing.assert_allclose(ns, 60 * degree)
    np.testing.assert_allclose(ew, [0.5 * degree, degree, 0.5 * degree])


# ----------------------------------------------------------------------------- cyclones


def _vortex_fields(lat, lon, centres, vmax=40.0, warm=3.0, sense=1.0, rng=None):
    """Quiet background with a cyclone (modified Rankine winds, Holland-like pressure, warm
    core) at each (lat, lon); ``sense`` -1 turns the wind the anticyclonic way."""
    rng = rng or np.random.default_rng()
    h, w = len(lat), len(lon)
    f = dict(
        PSL=np.full((h, w), 101200.0) + rng.normal(0, 20, (h, w)),
        U850=rng.normal(0, 0.5, (h, w)),
        V850=rng.normal(0, 0.5, (h, w)),
        T200=np.full((h, w), 218.0),
        T500=np.full((h, w), 252.0),
    )
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    for c_lat, c_lon in centres:
        r = sphere.haversine_km(c_lat, c_lon, la, lo) * 1000.0 + 1.0
        dlon = (lo - c_lon + 180.0) % 360.0 - 180.0
        dx = np.deg2rad(dlon) * R * np.cos(np.deg2rad(la))
        dy = np.deg2rad(la - c_lat) * R
        rm = 80e3
        speed = np.where(r < rm, vmax * r / rm, vmax * (rm / r) ** 0.5) * np.exp(-((r / 1.5e6) ** 4))
        hemisphere = 1.0 if c_lat >= 0 else -1.0
        f["U850"] += -speed * dy / r * hemisphere * sense
        f["V850"] += speed * dx / r * hemisphere * sense
        f["PSL"] -= 2.5 * vmax**2 * (1.0 - np.exp(-((rm / r) ** 1.5)))
        core = warm * np.exp(-((r / 300e3) ** 2))
        f["T500"] += core
        f["T200"] += 1.3 * core
    f["UBOT"], f["VBOT"] = 0.8 * f["U850"], 0.8 * f["V850"]
    return f


@pytest.mark.parametrize("centre", [(18.0, 140.0), (-15.0, 75.0), (22.0, 0.0)])  # north, south, the date line
def test_planted_cyclone_found_and_not_without_warm_core_or_wind(centre):
    lat, lon = _grid(181, 361)  # about 0.5 x 1 degree: odd sizes
    rng = np.random.default_rng()
    storms = detect_cyclones(_vortex_fields(lat, lon, [centre], rng=rng), lat, lon, True)
    assert len(storms) == 1
    s = storms[0]
    assert sphere.haversine_km(s["lat"], s["lon"], *centre) < 120.0
    assert s["vorticity"] > 3.5e-5 and s["warm_core"] > 1.0 and s["wind"] > 17.0
    rows, cols = np.divmod(s["index"], len(lon))
    d = sphere.haversine_km(lat[rows], lon[cols], *centre)
    assert d.max() <= 500.0 + 120.0 and s["index"].size >= 10  # not a point: 20 cells or so at this resolution
    if centre[1] == 0.0:  # the mask wraps round the date line
        assert cols.min() == 0 and cols.max() == len(lon) - 1
    assert detect_cyclones(_vortex_fields(lat, lon, [centre], warm=0.0, rng=rng), lat, lon, True) == []
    assert detect_cyclones(_vortex_fields(lat, lon, [centre], vmax=14.0, rng=rng), lat, lon, True) == []
    assert detect_cyclones(_vortex_fields(lat, lon, [centre], sense=-1.0, rng=rng), lat, lon, True) == []


def test_linking_drops_short_lived_storms():
    hours = np.arange(12) * 3.0
    steps = [[] for _ in hours]
    for t in range(12):  # a long track, cut by both ends of the series
        steps[t].append((15.0, 130.0 - 0.5 * t))
    for t in (5, 6):  # a 6-hour blip
        steps[t].append((-20.0, 60.0))
    for t in range(0, 3):  # a short track cut by the start: kept
        steps[t].append((25.0, 200.0))
    keep, tracks = link_cyclones(steps, hours, LabelOptions())
    assert all(k[0] for k in keep)
    assert keep[5][1] is False and keep[6][1] is False
    assert keep[0][1] and keep[2][1]  # steps 0-2 hold the long track and the start-cut one
    assert len({tracks[t][0] for t in range(12)}) == 1


# ----------------------------------------------------------------------------- rivers


def _river(lat, lon, start, heading_deg, length_km, width_km, inside=500.0):
    """A filament of vapour transport ``inside`` along a path from ``start`` (lat, lon)."""
    n = 80
    s = np.linspace(0.0, length_km, n) / sphere.EARTH_RADIUS_KM
    h = np.deg2rad(heading_deg)
    plat = start[0] + np.rad2deg(s * np.sin(h))
    plon = start[1] + np.rad2deg(s * np.cos(h) / np.cos(np.deg2rad(plat)))
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    d = np.min(sphere.haversine_km(la[..., None], lo[..., None], plat, plon), axis=-1)
    field = np.where(d <= width_km / 2, inside, 50.0)
    return field


@pytest.mark.parametrize(
    "case, kwargs, options, kept",
    [
        ("river", {}, {}, True),
        ("short", dict(length_km=1500.0), {}, False),
        ("wide", dict(width_km=1400.0, length_km=5000.0), {}, False),
        (
            "stubby",
            dict(width_km=2400.0, length_km=300.0),
            dict(ar_max_width_km=5000.0),
            False,
        ),  # long enough, not narrow
        ("midlatitude only", dict(start=(50.0, 150.0), heading_deg=10.0), {}, False),
        ("tropics only", dict(start=(5.0, 150.0), heading_deg=5.0, length_km=3000.0), {}, False),
        ("across the date line", dict(start=(22.0, 340.0), heading_deg=30.0), {}, True),
    ],
)
def test_river_shape_conditions(case, kwargs, options, kept):
    lat, lon = _grid(120, 241)
    args = dict(start=(22.0, 150.0), heading_deg=40.0, length_km=3500.0, width_km=500.0)
    args.update(kwargs)
    field = _river(lat, lon, **args)
    poleward = np.where(field > 100, 120.0, 0.0) * np.sign(lat)[:, None]
    mask, objects = detect_rivers(field, 250.0, lat, lon, True, LabelOptions(**options), poleward=poleward)
    assert (len(objects) == 1) == kept, (case, objects)
    assert mask.any() == kept
    if kept:
        assert 0.9 * args["length_km"] < objects[0]["length_km"] < 1.1 * (args["length_km"] + args["width_km"])
    if case == "across the date line":
        assert mask[:, 0].any() and mask[:, -1].any()
    if case == "river":  # equatorward transport: not a river
        mask, objects = detect_rivers(field, 250.0, lat, lon, True, LabelOptions(), poleward=-poleward)
        assert objects == [] and not mask.any()


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    from climseg.data.timeseries import generate_timeseries

    root = tmp_path_factory.mktemp("series") / "gen"
    generate_timeseries(str(root), 10, 3.0, 96, 144, 5, workers=1, progress=False)
    return root


def test_label_series_end_to_end(series, tmp_path, capsys):
    from climseg.analytics.track import track
    from climseg.bench.label import score

    files = sorted(series.glob("*.nc"))
    out = tmp_path / "labels"
    assert main(["label", str(series), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    masks = [out / (f.stem + "_mask.nc") for f in files]
    with netCDF4.Dataset(masks[0]) as ds:
        m = ds.variables["mask"]
        assert m.dimensions == ("time", "lat", "lon") and m.flag_meanings.split()[1] == "tropical_cyclone"
        assert set(np.unique(m[:])) <= {0, 1, 2}
        assert ds.variables["time"].calendar == "noleap"
    result = score([str(m) for m in masks], [str(f) for f in files])
    assert result["steps"] == 10
    assert result["tropical_cyclone"]["iou"] is None or result["tropical_cyclone"]["iou"] >= 0.0
    track([str(m) for m in masks], str(tmp_path / "track"), progress=False)


def _era5_from_cam5(src, dst):
    """The same fields under ERA5 names, units and coordinates (pressure levels, descending
    latitudes, PSL in hPa... as the CDS writes them)."""
    with netCDF4.Dataset(src) as s, netCDF4.Dataset(dst, "w") as d:
        nt, h, w = s.variables["TMQ"].shape
        d.createDimension("valid_time", None)
        d.createDimension("pressure_level", 3)
        d.createDimension("latitude", h)
        d.createDimension("longitude", w)
        t = d.createVariable("valid_time", "f8", ("valid_time",))
        t.units, t.calendar = s.variables["time"].units, "noleap"
        t[:] = s.variables["time"][:]
        p = d.createVariable("pressure_level", "f8", ("pressure_level",))
        p.units = "hPa"
        p[:] = [850.0, 500.0, 200.0]
        la = d.createVariable("latitude", "f8", ("latitude",))
        la[:] = s.variables["lat"][::-1]
        lo = d.createVariable("longitude", "f8", ("longitude",))
        lo[:] = s.variables["lon"][:]
        flip = lambda name: np.asarray(s.variables[name][:])[:, ::-1]  # noqa: E731

        def put(name, value, units, dims=("valid_time", "latitude", "longitude")):
            v = d.createVariable(name, "f4", dims)
            v.units = units
            v[:] = value

        level = ("valid_time", "pressure_level", "latitude", "longitude")
        zeros = np.zeros((nt, h, w), np.float32)
        put("tcwv", flip("TMQ"), "kg m**-2")
        put("u", np.stack([flip("U850"), zeros, zeros], 1), "m s**-1", level)
        put("v", np.stack([flip("V850"), zeros, zeros], 1), "m s**-1", level)
        put("t", np.stack([zeros, flip("T500") - 273.15, flip("T200") - 273.15], 1), "degC", level)
        put("msl", flip("PSL") / 100.0, "hPa")
        put("u10", flip("UBOT"), "m s**-1")
        put("v10", flip("VBOT"), "m s**-1")


def test_era5_named_file_gets_the_same_labels(series, tmp_path):
    first = sorted(series.glob("*.nc"))[0]
    era5 = tmp_path / "era5_pl_sfc.nc"
    _era5_from_cam5(str(first), str(era5))
    assert main(["label", str(first), "--out", str(tmp_path / "cam5"), "--no-progress"]) == 0
    assert main(["label", str(era5), "--out", str(tmp_path / "era5"), "--no-progress"]) == 0
    with (
        netCDF4.Dataset(tmp_path / "cam5" / (first.stem + "_mask.nc")) as a,
        netCDF4.Dataset(tmp_path / "era5" / "era5_pl_sfc_mask.nc") as b,
    ):
        assert np.array_equal(np.asarray(a["mask"][:]), np.asarray(b["mask"][:])[:, ::-1])  # b: north to south
        assert b["latitude"][0] > b["latitude"][-1]


def _check_one_line_exit_2(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("climseg: error: "), err
    for f in fragments:
        assert f in err[0], (f, err[0])


def test_bad_inputs_one_line_exit_2(series, tmp_path, capsys):
    first = sorted(series.glob("*.nc"))[0]
    era5 = tmp_path / "era5.nc"
    _era5_from_cam5(str(first), str(era5))
    out = str(tmp_path / "o")
    with netCDF4.Dataset(era5, "a") as d:
        d.renameVariable("msl", "mslp")
    _check_one_line_exit_2(capsys, ["label", str(era5), "--out", out], "missing variable(s) PSL", "PSL: msl")
    with netCDF4.Dataset(era5, "a") as d:
        d.renameVariable("mslp", "msl")
        d.variables["pressure_level"][:] = [925.0, 500.0, 200.0]
    _check_one_line_exit_2(
        capsys, ["label", str(era5), "--out", out], "U850: u has no 850 hPa level (levels: 200, 500, 925"
    )
    with netCDF4.Dataset(era5, "a") as d:
        d.variables["pressure_level"][:] = [850.0, 500.0, 200.0]
        d.variables["msl"].units = "inches of mercury"
    _check_one_line_exit_2(capsys, ["label", str(era5), "--out", out, "--no-progress"], "msl", "'inches of mercury'")
    _check_one_line_exit_2(capsys, ["label", str(tmp_path / "none*.nc"), "--out", out], "no files match")
    _check_one_line_exit_2(capsys, ["label", str(first), "--out", out, "--ar-field", "wind"], "--ar-field wind")


def test_labelled_series_becomes_a_training_set(series, tmp_path):
    from climseg.data.deepcam import read_sample
    from climseg.data.stats import read_stats

    data = tmp_path / "dataset"
    assert (
        main(
            [
                "label",
                str(series),
                "--out",
                str(tmp_path / "labels"),
                "--dataset",
                str(data),
                "--validation-fraction",
                "0.2",
                "--no-progress",
            ]
        )
        == 0
    )
    train, val = sorted((data / "train").iterdir()), sorted((data / "validation").iterdir())
    assert len(train) == 8 and len(val) == 2
    fields, labels = read_sample(str(val[-1]))
    assert fields.shape == (96, 144, 16) and labels.shape == (96, 144)
    with netCDF4.Dataset(sorted((tmp_path / "labels").glob("*_mask.nc"))[-1]) as ds:
        assert np.array_equal(np.asarray(ds["mask"][-1]), labels)
    stats = read_stats(str(data / "stats.h5"))
    assert stats.minval.shape == (16,) and abs(float(stats.class_frequencies.sum()) - 1.0) < 1e-5
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                "--out",
                str(tmp_path / "run"),
                "--no-progress",
            ]
        )
        == 0
    )


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec (pip install mpich mpi4py)")
def test_under_mpiexec_same_masks(series, tmp_path):
    import climseg

    root = os.path.dirname(os.path.dirname(os.path.abspath(climseg.__file__)))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
    )
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    proc = subprocess.run(
        [
            shutil.which("mpiexec"),
            "-n",
            "2",
            sys.executable,
            "-m",
            "climseg",
            "label",
            str(series),
            "--out",
            str(tmp_path / "mpi"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("climseg: labelled") == 1  # rank 0 reports
    assert main(["label", str(series), "--out", str(tmp_path / "one"), "--no-progress"]) == 0
    for f in sorted(series.glob("*.nc")):
        with (
            netCDF4.Dataset(tmp_path / "mpi" / (f.stem + "_mask.nc")) as a,
            netCDF4.Dataset(tmp_path / "one" / (f.stem + "_mask.nc")) as b,
        ):
            assert np.array_equal(np.asarray(a["mask"][:]), np.asarray(b["mask"][:]))
    assert (tmp_path / "mpi" / "summary.json").is_file()
