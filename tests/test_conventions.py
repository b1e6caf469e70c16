"""Real files' conventions, end to end: one generated series written the way CAM5, the classic
CDS (ERA5 as netCDF-3, packed int16, ``level`` in millibars), the new CDS (ERA5 with
``valid_time``, separate pressure-level and single-level files, longitudes from -180), CMIP6
(one variable per file, ``time_bnds``/``lat_bnds``, pieces in time) and MPI-ESM-LR's CMIP5
output (``tas``/``uas``/``vas`` 3-hourly and ``psl``/``ua``/``va``/``ta`` 6-hourly, one variable
per file, a Gaussian grid, netCDF-3) write it (``tests/convention_files.py``), each run through
``label -> predict -> track -> analyze`` from the command line; the labels must equal those of
the CAM5 files cell for cell, and the outputs of -180..180 input keep those longitudes. Then
the README's analytics commands, word for word, on an ERA5 download and on a CMIP6 set;
scoring a network's tracks by predict's file names; and the input checks every command shares
(masks of whole classes, times that strictly increase, coordinates in range, a header that
declares far more than its file holds)."""

import csv
import glob
import json
import os
import re
import shlex
import shutil
import sys
import tracemalloc

import netCDF4
import numpy as np
import pytest

from climseg import sphere
from climseg.cli import main
from climseg.constants import CHANNELS
from climseg.data.inputs import open_input_series
from climseg.data.masks import MaskReader, open_mask_series
from climseg.data.netcdf import open_netcdf, read_netcdf_step, write_cam5_netcdf
from climseg.errors import DataError
from climseg.plotting import latitude_label, longitude_label

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convention_files as cf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, H, W = 16, 96, 144  # two model days, 3-hourly


def _listing(folder):
    """The files of an output folder, sorted, without climseg's own bookkeeping (``.climseg-lock``,
    ``.climseg-run-COMMAND.json``: the run lock and the manifest of a run's files)."""
    return sorted(n for n in os.listdir(folder) if not n.startswith(".climseg-"))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generated CAM5-like series (2 daily files) and its fields in memory."""
    from climseg.data.timeseries import generate_timeseries

    folder = tmp_path_factory.mktemp("conventions") / "series"
    generate_timeseries(str(folder), STEPS, 3.0, H, W, seed=5, workers=1, progress=False)
    return folder, cf.read_series(str(folder))


@pytest.fixture(scope="module")
def cam5_run(generated, network, tmp_path_factory):
    """The chain on the CAM5 files themselves (see :func:`_chain`): the reference."""
    out = tmp_path_factory.mktemp("cam5")
    _chain(out, [generated[0]], network)
    return out


@pytest.fixture(scope="module")
def cam5_labels(cam5_run):
    """``climseg label`` of the CAM5 files: (T, H, W) rows south to north."""
    return _masks(cam5_run / "labels")


def _train(data, out, channels=None):
    from climseg.train import train

    options = dict(data=data, out=str(out), epochs=1, batch_size=2, progress=False)
    if channels:
        options["channels"] = channels
    train(options, log=lambda *a: None)
    return str(out / "last.pt")


@pytest.fixture(scope="module")
def network(small_dataset, tmp_path_factory):
    """A network of the 16 channels (one epoch: its masks are not the point here, their files are)."""
    return _train(small_dataset, tmp_path_factory.mktemp("net") / "run")


@pytest.fixture(scope="module")
def surface_network(small_dataset, tmp_path_factory):
    """A network trained on TREFHT, UBOT and VBOT only (CMIP5's tas, uas, vas)."""
    return _train(small_dataset, tmp_path_factory.mktemp("net3") / "run", "TREFHT,UBOT,VBOT")


def _masks(folder, pattern="*_mask.nc"):
    """Every mask of a folder in time order, rows south to north, columns as in the files."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        with netCDF4.Dataset(path) as ds:
            lat_name = "lat" if "lat" in ds.variables else "latitude"
            m = np.asarray(ds["mask"][:])
            out.append(m[:, ::-1] if ds[lat_name][0] > ds[lat_name][-1] else m)
    return np.concatenate(out)


def _ok(*argv):
    progress = [] if argv[0] == "analyze" else ["--no-progress"]
    assert main([*map(str, argv), *progress]) == 0, argv


def _chain(tmp, inputs, network, label=(), predict_maps=False):
    """label -> predict -> track (both sets of masks) -> analyze, each from the command line."""
    _ok("label", *inputs, "--out", tmp / "labels", *label)
    _ok("predict", network, *inputs, "--out", tmp / "masks", *([] if predict_maps else ["--no-maps"]))
    _ok("track", tmp / "labels", "--out", tmp / "events")  # a folder of masks
    _ok("track", *sorted(glob.glob(str(tmp / "masks" / "*_mask.nc"))), "--out", tmp / "net-events")
    _ok("analyze", tmp / "events", "--out", tmp / "analysis", "--no-maps")
    _ok("analyze", tmp / "net-events", "--out", tmp / "net-analysis", "--no-maps")


def _events(folder):
    with open(os.path.join(folder, "events.csv"), newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- one test per convention


def test_cam5_history_files(generated, cam5_run):
    _, series = generated
    names = _listing(cam5_run / "masks")
    assert names == sorted([os.path.basename(f)[:-3] + "_mask.nc" for f in series["files"]] + ["summary.json"])
    assert names == _listing(cam5_run / "labels")
    assert len(_events(cam5_run / "events")) > 0 and (cam5_run / "analysis" / "climatology.nc").is_file()


def test_classic_cds_era5(generated, cam5_labels, network, tmp_path):
    """netCDF-3, every field packed int16, ``level`` in millibars, int32 hours since 1900."""
    _, series = generated
    files = tmp_path / "era5"
    files.mkdir()
    pl, _ = cf.era5_classic(series, str(files))
    with netCDF4.Dataset(pl) as ds:
        assert ds.data_model == "NETCDF3_64BIT_OFFSET" and ds["level"].units == "millibars"
        assert ds["u"].dtype == np.int16 and hasattr(ds["u"], "scale_factor")
    info = open_netcdf(str(files))
    assert info.convention == "ERA5" and info.flipped and len(info.times) == STEPS
    packed = {
        "PSL": ("sfc", "msl", 1.0),
        "U850": ("pl", "u", 1.0),
        "T200": ("pl", "t", 1.0),
        "Z200": ("pl", "z", 9.80665),
    }
    got = read_netcdf_step(info, 5, list(packed) + ["QREFHT"])
    for k, (c, (kind, name, per)) in enumerate(packed.items()):
        with netCDF4.Dataset(files / f"era5_2020-09_{kind}.nc") as ds:
            step = ds[name].scale_factor / per  # one packing step: the error is at most half of it
        truth = series["fields"][c][5]
        np.testing.assert_allclose(got[..., k], truth, atol=step + 1e-6 * np.abs(truth).max(), err_msg=c)
    np.testing.assert_allclose(got[..., -1], series["fields"]["QREFHT"][5], rtol=1e-3)  # from packed d2m and sp
    _chain(tmp_path, [files], network)
    assert np.array_equal(_masks(tmp_path / "labels"), cam5_labels)  # packing changes no label
    for out in ("labels", "masks"):  # one mask, named after the file of the first channel's variable
        assert _listing(tmp_path / out) == ["era5_2020-09_sfc_mask.nc", "summary.json"]


def test_classic_cds_era5_with_era5t(generated, tmp_path):
    """A download reaching the near-real-time months: an ``expver`` axis (1: ERA5, 5: ERA5T), each
    step in one member and missing in the other, is read as one field per step."""
    _, series = generated
    cf.era5_classic(series, str(tmp_path), expver=True)
    info = open_netcdf(str(tmp_path))
    for step in (0, STEPS // 2 - 1, STEPS // 2, STEPS - 1):  # both sides of the switch
        got = read_netcdf_step(info, step, ["PSL", "U850"])
        for k, c in enumerate(["PSL", "U850"]):
            truth = series["fields"][c]
            step_size = (truth.max() - truth.min()) / 65532.0
            np.testing.assert_allclose(got[..., k], truth[step], atol=step_size + 1e-6 * np.abs(truth).max())


def _ids(folder):
    paths = sorted(glob.glob(os.path.join(folder, "*_event_id.nc")))
    out = []
    for p in paths:
        with netCDF4.Dataset(p) as ds:
            out.append(np.asarray(ds["event_id"][:]))
    return np.concatenate(out)


def test_new_cds_era5_from_minus_180(generated, cam5_run, cam5_labels, network, tmp_path):
    """``valid_time``, pressure-level and single-level files, longitudes -180..180: the labels and
    events are those of the CAM5 files (from 0 east), shifted; the masks, event ids, occupancy.nc
    and climatology.nc keep -180..180 (monotonic CF coordinates), and events.csv gives positions
    from -180."""
    _, series = generated
    files = tmp_path / "era5"
    files.mkdir()
    cf.era5_new(series, str(files), west=-180.0)
    _, roll = cf.rolled(series, -180.0)
    _chain(tmp_path, [files], network, predict_maps=True)
    assert np.array_equal(_masks(tmp_path / "labels"), np.roll(cam5_labels, roll, axis=-1))
    with netCDF4.Dataset(tmp_path / "labels" / "data_stream-oper_stepType-instant_mask.nc") as ds:
        assert "valid_time" in ds.variables and ds["longitude"][0] == -180.0
    for name in ("occupancy.nc", "data_stream-oper_stepType-instant_mask_event_id.nc"):
        with netCDF4.Dataset(tmp_path / "events" / name) as ds:
            lon = np.asarray(ds["lon"][:])
            assert np.all(np.diff(lon) > 0) and lon[0] == -180.0 and lon[-1] < 180.0, name
            assert ds["lon"].units == "degrees_east" and ds["lon"].standard_name == "longitude"
    # the same events on the same cells (numbered in the order met, so from another first column)
    ids, ref_ids = _ids(tmp_path / "events"), np.roll(_ids(cam5_run / "events"), roll, axis=-1)
    assert np.array_equal(ids > 0, ref_ids > 0)
    pairs = set(zip(ids[ids > 0].tolist(), ref_ids[ids > 0].tolist()))
    same = dict(pairs)
    events, reference = _events(tmp_path / "events"), _events(cam5_run / "events")  # the CAM5 files: from 0 east
    assert len(events) == len(reference) == len(pairs) == len(same) == len(set(same.values())) > 0
    for e in events:
        r = reference[same[int(e["id"])] - 1]
        assert e["class"] == r["class"] and e["steps"] == r["steps"]
        assert abs(float(e["genesis_lat"]) - float(r["genesis_lat"])) < 1e-3
        for key in ("genesis_lon", "lysis_lon"):
            assert -180.0 <= float(e[key]) < 180.0 and 0.0 <= float(r[key]) < 360.0
            assert abs((float(e[key]) - float(r[key]) + 180.0) % 360.0 - 180.0) < 1e-3
    with netCDF4.Dataset(tmp_path / "analysis" / "climatology.nc") as ds:
        assert np.all(np.diff(ds["lon"][:]) > 0) and ds["lon"][0] == -180.0
        assert ds["glon"][0] == -177.5 and ds["glon"][-1] == 177.5  # genesis cells from -180 too
        genesis = np.asarray(ds["genesis_density"][:])
    with netCDF4.Dataset(cam5_run / "analysis" / "climatology.nc") as ds:
        assert ds["lon"][0] == 0.0 and ds["glon"][0] == 2.5
        assert np.array_equal(genesis, np.roll(np.asarray(ds["genesis_density"][:]), 36, axis=-1))
    assert len([n for n in os.listdir(tmp_path / "masks") if n.endswith(".png")]) == STEPS


def test_cmip6_set(generated, cam5_labels, network, tmp_path):
    """One variable per file, time_bnds/lat_bnds/lon_bnds, plev in Pa, prw/tas/ua in two pieces:
    predict merges the set as label does (no hand merging) and writes one mask per prw file."""
    _, series = generated
    files = tmp_path / "cmip6"
    files.mkdir()
    paths = cf.cmip6_set(series, str(files))
    _chain(tmp_path, [files / "*.nc"], network)  # a glob pattern, as a quoted shell argument
    assert np.array_equal(_masks(tmp_path / "labels"), cam5_labels)
    prw = sorted(os.path.basename(p)[:-3] + "_mask.nc" for p in paths if os.path.basename(p).startswith("prw_"))
    psl = sorted(os.path.basename(p)[:-3] + "_mask.nc" for p in paths if os.path.basename(p).startswith("psl_"))
    assert len(prw) == 2 and _listing(tmp_path / "masks") == prw + ["summary.json"]
    assert _listing(tmp_path / "labels") == psl + ["summary.json"]  # label's first channel is PSL
    with netCDF4.Dataset(tmp_path / "masks" / prw[0]) as ds:
        assert ds["time"].calendar == "noleap" and ds["mask"].shape == (STEPS // 2, H, W)


def test_cmip5_mpi_esm_lr(generated, surface_network, tmp_path):
    """MPI-ESM-LR's CMIP5 output as it is published: tas, uas, vas (3hr) and psl, ua, va, ta
    (6hrPlev), one variable per file, split by day, netCDF-3, T63 Gaussian latitudes. A network
    trained on TREFHT, UBOT and VBOT reads the 3-hourly set as it is (it said "missing variable(s)
    UBOT, VBOT" reading each file alone); the labeller labels cyclones in the 6-hourly set."""
    from climseg.data.timeseries import generate_timeseries

    folder = tmp_path / "t63"
    generate_timeseries(str(folder), 12, 3.0, 96, 192, seed=6, workers=1, progress=False)  # 1.5 days
    series = cf.read_series(str(folder))
    files = tmp_path / "cmip5"
    files.mkdir()
    three_hourly, six_hourly = cf.cmip5_set(series, str(files))
    with netCDF4.Dataset(three_hourly[0]) as ds:
        assert ds.data_model == "NETCDF3_CLASSIC" and ds["lat"].size == 96 and ds["lon"].size == 192
        assert not np.allclose(np.diff(ds["lat"][:]), np.diff(ds["lat"][:])[0], atol=1e-6)  # Gaussian
    _ok("predict", surface_network, *three_hourly, "--out", tmp_path / "masks", "--no-maps")
    tas = sorted(os.path.basename(p)[:-3] + "_mask.nc" for p in three_hourly if os.path.basename(p).startswith("tas_"))
    assert len(tas) == 2 and _listing(tmp_path / "masks") == sorted(tas + ["summary.json"])
    _ok("label", *six_hourly, "--out", tmp_path / "labels", "--method", "tc")
    assert _masks(tmp_path / "labels").shape == (6, 96, 192)
    for masks, events in (("masks", "net-events"), ("labels", "events")):
        _ok("track", tmp_path / masks, "--out", tmp_path / events)
        _ok("analyze", tmp_path / events, "--out", tmp_path / (events + "-analysis"), "--no-maps")
    with open(tmp_path / "masks" / "summary.json") as f:
        assert json.load(f)["channels"] == ["TREFHT", "UBOT", "VBOT"]


# ----------------------------------------------------------------------------- the README, word for word


def readme_analytics_commands():
    """The README's analytics commands after ``climseg generate``, comments dropped."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = re.search(r"## From masks to climate science\s+```bash\n(.*?)```", text, re.S).group(1)
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith("climseg ") and not line.startswith("climseg generate")]


def _shell(line):
    """The words of a command line as a shell gives them: globs expanded when they match."""
    words = []
    for word in shlex.split(line):
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        words += matches or [word]
    return words


@pytest.mark.parametrize("kind", ["ERA5", "CMIP6"])
def test_readme_analytics_section_unchanged(kind, generated, network, tmp_path, monkeypatch, capsys):
    """The README's commands, as written, with an ERA5 download (classic CDS: pressure-level and
    single-level files) or a CMIP6 set in ``series/`` and the network in ``runs/tiny-*``."""
    _, series = generated
    (tmp_path / "series").mkdir()
    if kind == "ERA5":
        cf.era5_classic(series, str(tmp_path / "series"))
    else:
        cf.cmip6_set(series, str(tmp_path / "series"))
    run = tmp_path / "runs" / "tiny-20261201-120000"
    run.mkdir(parents=True)
    shutil.copy(network, run / "best.pt")
    monkeypatch.chdir(tmp_path)
    commands = readme_analytics_commands()
    assert [c.split()[1] for c in commands] == ["label", "predict", "track", "analyze"]
    for line in commands:
        assert main(_shell(line)[1:]) == 0, line
    capsys.readouterr()
    summary = (tmp_path / "analysis" / "summary.json").read_text()
    assert '"steps": 16' in summary
    assert (tmp_path / "analysis" / "frequency_tc.png").is_file() and (tmp_path / "labels" / "summary.json").is_file()


# ----------------------------------------------------------------------------- scoring a network's tracks


def test_scoring_tracks_of_predicted_and_labelled_masks(generated, network, tmp_path):
    """``score_tracking`` finds the event ids of masks named ``NAME_mask.nc`` (predict, label)."""
    from climseg.analytics.scoring import score_tracking

    folder, _ = generated
    _ok("predict", network, folder, "--out", tmp_path / "masks", "--no-maps")
    _ok("track", tmp_path / "masks", "--out", tmp_path / "net-events")
    assert all(n.endswith("_mask_event_id.nc") for n in os.listdir(tmp_path / "net-events") if n.endswith("_id.nc"))
    scores = score_tracking(str(folder), str(tmp_path / "net-events"))
    assert set(scores) == {"tropical_cyclone", "atmospheric_river"}
    _ok("label", folder, "--out", tmp_path / "labels")
    _ok("track", tmp_path / "labels", "--out", tmp_path / "events", "--tc-min-size", "1px", "--ar-min-size", "1px")
    scores = score_tracking(str(folder), str(tmp_path / "events"))
    assert scores["tropical_cyclone"]["matched"] > 0 and scores["tropical_cyclone"]["recall"] > 0
    with pytest.raises(DataError, match="no event ids of climseg.cam.h2"):
        _ok("track", *sorted(glob.glob(str(tmp_path / "labels" / "*_mask.nc")))[:1], "--out", tmp_path / "half")
        score_tracking(str(folder), str(tmp_path / "half"))


# ----------------------------------------------------------------------------- file sets


def _cam5(path, steps, lat, lon, channels=CHANNELS, start=0.0):
    fields = np.random.default_rng(len(steps)).normal(1.0, 0.1, (len(steps), lat.size, lon.size, len(channels)))
    write_cam5_netcdf(
        str(path), fields.astype(np.float32), lat, lon, times=start + np.asarray(steps) * 0.125, channels=channels
    )


def test_files_grouped_into_series(tmp_path):
    """Pieces in time and sets of variables merge into one series; two members on the same times
    stay two series; every series' outputs are the files of its first channel's variable."""
    lat, lon = np.linspace(-60, 60, 9), np.arange(12) * 30.0
    _cam5(tmp_path / "day1.nc", [0, 1], lat, lon)
    _cam5(tmp_path / "day2.nc", [2, 3], lat, lon)
    _cam5(tmp_path / "member2.nc", [0, 1], lat, lon)  # the same times again: another series
    series = open_input_series([tmp_path / "day2.nc", tmp_path / "day1.nc", tmp_path / "member2.nc"])
    assert [[o.stem for o in s.outputs] for s in series] == [["day1", "day2"], ["member2"]]
    assert [o.steps for o in series[0].outputs] == [[0, 1], [2, 3]] and len(series[0].info.times) == 4
    (tmp_path / "vars").mkdir()
    _cam5(tmp_path / "vars" / "winds.nc", [0, 1], lat, lon, channels=["U850", "V850"])
    _cam5(
        tmp_path / "vars" / "rest.nc", [0, 1], lat, lon, channels=[c for c in CHANNELS if c[0] != "U" and c[0] != "V"]
    )
    _cam5(tmp_path / "vars" / "low.nc", [0, 1], lat, lon, channels=["UBOT", "VBOT"])
    (one,) = open_input_series(tmp_path / "vars")
    assert [o.stem for o in one.outputs] == ["rest"] and len(one.info.paths) == 3  # TMQ's file names the output
    _cam5(tmp_path / "late.nc", [1, 2], lat, lon, channels=["TMQ"])  # overlaps day1 and day2 in part
    with pytest.raises(DataError, match="missing variable"):
        open_input_series([tmp_path / "day1.nc", tmp_path / "day2.nc", tmp_path / "late.nc"])


@pytest.mark.parametrize("units", ["millibars", "millibar", "mbar", "mb", "hPa", "hectopascals", "Pa"])
def test_pressure_level_units(tmp_path, units):
    lat, lon = np.linspace(-60, 60, 9), np.arange(12) * 30.0
    factor = 100.0 if units == "Pa" else 1.0
    with netCDF4.Dataset(tmp_path / "u.nc", "w", format="NETCDF3_CLASSIC") as ds:
        for name, size in (("time", None), ("level", 3), ("lat", 9), ("lon", 12)):
            ds.createDimension(name, size)
        t = ds.createVariable("time", "i4", ("time",))
        t.units, t.calendar = "hours since 1900-01-01 00:00:00.0", "gregorian"
        t[:] = [1_000_000, 1_000_006]
        level = ds.createVariable("level", "i4", ("level",))
        level.units = units
        level[:] = np.array([200, 500, 850]) * factor
        ds.createVariable("lat", "f4", ("lat",))[:] = lat
        ds.createVariable("lon", "f4", ("lon",))[:] = lon
        u = ds.createVariable("u", "f4", ("time", "level", "lat", "lon"))
        u[:] = np.arange(3)[None, :, None, None] + np.zeros((2, 3, 9, 12))
    info = open_netcdf(str(tmp_path / "u.nc"), ["U850"], convention="ERA5")
    assert np.all(read_netcdf_step(info, 1) == 2.0)  # the third level, 850 hPa


def test_model_levels_are_not_pressure_levels(tmp_path):
    """MPI-ESM's 6hrLev files: ``hus(time, lev, lat, lon)`` on hybrid sigma levels (units "1") beside
    ``ps``: the field on model levels is left out, not taken for pressure levels."""
    lat, lon = cf.gaussian_latitudes(8), np.arange(16) * 22.5
    with netCDF4.Dataset(tmp_path / "6hrLev.nc", "w") as ds:
        for name, size in (("time", None), ("lev", 4), ("lat", 8), ("lon", 16)):
            ds.createDimension(name, size)
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "days since 1860-1-1", "proleptic_gregorian"
        t[:] = [0.0, 0.25]
        lev = ds.createVariable("lev", "f8", ("lev",))
        lev.units, lev.standard_name = "1", "atmosphere_hybrid_sigma_pressure_coordinate"
        lev[:] = [0.99, 0.9, 0.5, 0.2]
        ds.createVariable("lat", "f8", ("lat",))[:] = lat
        ds.createVariable("lon", "f8", ("lon",))[:] = lon
        ds.createVariable("hus", "f4", ("time", "lev", "lat", "lon"))[:] = np.full((2, 4, 8, 16), 0.01)
        ds.createVariable("ps", "f4", ("time", "lat", "lon"))[:] = np.full((2, 8, 16), 98000.0)
    info = open_netcdf(str(tmp_path / "6hrLev.nc"), ["PS"], convention="CMIP6")
    assert "hus" not in info.segments and np.all(read_netcdf_step(info, 0) == 98000.0)


# ----------------------------------------------------------------------------- input checks


def _mask_file(path, masks, lat, lon, hours, dtype="u1"):
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", len(lat))
        ds.createDimension("lon", len(lon))
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "hours since 2000-01-01", "standard"
        t[:] = hours
        ds.createVariable("lat", "f8", ("lat",))[:] = lat
        ds.createVariable("lon", "f8", ("lon",))[:] = lon
        ds.createVariable("mask", dtype, ("time", "lat", "lon"))[:] = masks


def assert_one_line_exit_2(capsys, argv, *fragments):
    """Asserts that climseg run with ``argv`` exits 2 with one error line holding every fragment."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("climseg: error: ") and "Traceback" not in err[0], err
    for f in fragments:
        assert f in err[0], (f, err[0])


def test_masks_hold_whole_classes(tmp_path, capsys):
    lat, lon = np.linspace(-60, 60, 9), np.arange(12) * 30.0
    masks = np.zeros((2, 9, 12), np.float32)
    masks[1, 4, 5] = 1.5
    _mask_file(tmp_path / "half.nc", masks, lat, lon, [0.0, 3.0], "f4")
    assert_one_line_exit_2(capsys, ["track", tmp_path / "half.nc", "--out", tmp_path / "o"], "half.nc", "mask", "1.5")
    masks[1, 4, 5] = 2.0  # whole numbers stored as floats are classes
    _mask_file(tmp_path / "whole.nc", masks, lat, lon, [0.0, 3.0], "f4")
    with MaskReader(open_mask_series([str(tmp_path / "whole.nc")])) as reader:
        assert reader.read(1)[4, 5] == 2 and reader.read(1).dtype == np.uint8


def test_times_strictly_increase_for_every_command(network, tmp_path, capsys):
    lat, lon = np.linspace(-60, 60, 9), np.arange(12) * 30.0
    _cam5(tmp_path / "repeat.nc", [0, 1, 1], lat, lon)
    _cam5(tmp_path / "back.nc", [2, 1, 0], lat, lon)
    for name, at in (("repeat.nc", "step 2"), ("back.nc", "step 1")):
        for argv in (["label", tmp_path / name], ["predict", network, tmp_path / name]):
            assert_one_line_exit_2(capsys, [*argv, "--out", tmp_path / "o"], name, "does not increase at " + at)
    _cam5(tmp_path / "a.nc", [0, 1], lat, lon)
    _cam5(tmp_path / "b.nc", [1, 2], lat, lon, channels=["PSL"])  # PSL repeats a.nc's second step
    assert_one_line_exit_2(
        capsys, ["label", tmp_path / "a.nc", tmp_path / "b.nc", "--out", tmp_path / "o"], "repeats time"
    )
    m = np.zeros((3, 9, 12), np.uint8)
    _mask_file(tmp_path / "m1.nc", m, lat, lon, [0.0, 3.0, 3.0])
    assert_one_line_exit_2(capsys, ["track", tmp_path / "m1.nc", "--out", tmp_path / "o"], "m1.nc", "does not increase")
    _mask_file(tmp_path / "m2.nc", m, lat, lon, [0.0, 3.0, 6.0])
    _mask_file(tmp_path / "m3.nc", m, lat, lon, [6.0, 9.0, 12.0])
    assert_one_line_exit_2(capsys, ["track", tmp_path / "m3.nc", tmp_path / "m2.nc", "--out", tmp_path / "o"], "repeat")
    _mask_file(tmp_path / "m4.nc", m, lat, lon, [9.0, 12.0, 15.0])
    _ok("track", tmp_path / "m4.nc", tmp_path / "m2.nc", "--out", tmp_path / "ok")  # any order: put in time order
    assert open_mask_series([str(tmp_path / "m4.nc"), str(tmp_path / "m2.nc")]).hours.tolist() == [
        0.0,
        3.0,
        6.0,
        9.0,
        12.0,
        15.0,
    ]


@pytest.mark.parametrize(
    "lat,lon,message",
    [
        (np.linspace(0, 200, 9), np.arange(12) * 30.0, "latitudes run from 0 to 200"),
        (np.linspace(-60, 60, 9), np.arange(12) * 64.7, "longitudes span 711.7 degrees"),
        (np.linspace(-60, 60, 9)[[0, 2, 1, 3, 4, 5, 6, 7, 8]], np.arange(12) * 30.0, "latitudes are not monotonic"),
        (np.linspace(-60, 60, 9), np.arange(12)[::-1] * 30.0, "longitudes decrease (from 330 to 0)"),
        (np.linspace(-60, 60, 9), np.arange(12)[[0, 2, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11]] * 30.0, "not monotonic"),
    ],
)
def test_coordinates_in_range(network, tmp_path, capsys, lat, lon, message):
    _cam5(tmp_path / "grid.nc", [0, 1], lat, lon)
    _mask_file(tmp_path / "mask.nc", np.zeros((2, 9, 12), np.uint8), lat, lon, [0.0, 3.0])
    assert_one_line_exit_2(capsys, ["label", tmp_path / "grid.nc", "--out", tmp_path / "o"], "grid.nc", message)
    assert_one_line_exit_2(capsys, ["predict", network, tmp_path / "grid.nc", "--out", tmp_path / "o"], message)
    assert_one_line_exit_2(capsys, ["track", tmp_path / "mask.nc", "--out", tmp_path / "o"], "mask.nc", message)


def test_a_header_declaring_far_more_than_the_file_is_refused_before_reading(network, tmp_path, capsys):
    """A 0.5 MB file declaring a 20000 x 40000 grid (3.2 GB a field): refused from its header,
    with little memory, by every command."""
    with netCDF4.Dataset(tmp_path / "hollow.nc", "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 20000)
        ds.createDimension("lon", 40000)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "hours since 2000-01-01"
        t[:] = [0.0]
        ds.createVariable("lat", "f8", ("lat",))[:] = np.linspace(-90, 90, 20000)
        ds.createVariable("lon", "f8", ("lon",))[:] = np.arange(40000) * 0.009
        for c in CHANNELS:
            ds.createVariable(c, "f4", ("time", "lat", "lon"), zlib=True)
        ds.createVariable("mask", "u1", ("time", "lat", "lon"), zlib=True)
    assert os.path.getsize(tmp_path / "hollow.nc") < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="20000 x 40000 grid"):
            open_netcdf(str(tmp_path / "hollow.nc"))
        with pytest.raises(DataError, match="20000 x 40000 grid"):
            open_mask_series([str(tmp_path / "hollow.nc")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, peak  # a field would be 3.2 GB
    for argv in (["label"], ["track"], ["predict", network]):
        assert_one_line_exit_2(capsys, [*argv, tmp_path / "hollow.nc", "--out", tmp_path / "o"], "header declares")


# ----------------------------------------------------------------------------- longitudes


def test_longitude_conventions():
    assert np.array_equal(sphere.monotonic_longitudes([-180.0, -90.0, 0.0, 90.0]), [-180.0, -90.0, 0.0, 90.0])
    assert np.array_equal(sphere.monotonic_longitudes([0.0, 90.0, 180.0, 270.0]), [0.0, 90.0, 180.0, 270.0])
    assert np.array_equal(sphere.monotonic_longitudes([90.0, 180.0, -90.0, 0.0]), [90.0, 180.0, 270.0, 360.0])
    assert np.array_equal(sphere.monotonic_longitudes([180.0, 270.0, 0.0, 90.0]), [-180.0, -90.0, 0.0, 90.0])
    assert np.array_equal(sphere.monotonic_longitudes([360.0, 450.0, 540.0]), [0.0, 90.0, 180.0])
    assert np.allclose(sphere.wrap_longitudes([359.5, 0.5, 180.0], [-180.0, 0.0, 179.0]), [-0.5, 0.5, -180.0])
    assert np.allclose(sphere.wrap_longitudes([-0.5, 360.5], [0.0, 359.0]), [359.5, 0.5])
    assert sphere.coordinate_problem([-90.0, 90.0], [0.0, 180.0, 360.0]) is None
    assert "span 450 degrees" in sphere.coordinate_problem([0.0], [0.0, 150.0, 300.0, 450.0])
    assert [longitude_label(x) for x in (-180, -60, 0, 60, 180, 300, 660)] == [
        "180°",
        "60°W",
        "0°",
        "60°E",
        "180°",
        "60°W",
        "60°W",
    ]
    assert [latitude_label(y) for y in (-30, 0, 45.5)] == ["30°S", "0°", "45.5°N"]
