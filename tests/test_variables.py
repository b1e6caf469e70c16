"""Variable-name conventions: CAM5, ERA5 and CMIP6 files built here with each
convention's names, units, coordinates and calendars read into the 16 channels in
CAM5 units; sets of files merged on time; a mapping file; bad inputs named in one line."""

import json

import netCDF4
import numpy as np
import pytest

from climseg.constants import CHANNELS
from climseg.data.netcdf import open_netcdf, read_netcdf_step, write_cam5_netcdf
from climseg.data.variables import GRAVITY, canonical_units, lowest_level_height, specific_humidity_from_dewpoint
from climseg.errors import ConfigError, DataError

H, W, T = 13, 21, 3  # odd sizes, not multiples of 16


def _truth(rng):
    """CAM5-unit fields (T, H, W) of every channel, plausible magnitudes."""
    f = {}
    base = dict(
        TMQ=30.0,
        U850=5.0,
        V850=-3.0,
        UBOT=4.0,
        VBOT=2.0,
        QREFHT=0.01,
        PS=98000.0,
        PSL=101000.0,
        T200=218.0,
        T500=255.0,
        PRECT=2e-8,
        TS=290.0,
        TREFHT=289.0,
        Z1000=100.0,
        Z200=11800.0,
        ZBOT=60.0,
    )
    for c, v in base.items():
        f[c] = (v * (1.0 + 0.05 * rng.standard_normal((T, H, W)))).astype(np.float32)
    return f


def _coord(ds, name, dim, values, **attrs):
    v = ds.createVariable(name, "f8", (dim,))
    v.setncatts(attrs)
    v[:] = values
    return v


def _era5_file(path, truth, lat, lon):
    levels = np.array([1000.0, 850.0, 500.0, 200.0])  # hPa, as the CDS writes pressure_level
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("valid_time", T)
        ds.createDimension("pressure_level", 4)
        ds.createDimension("latitude", H)
        ds.createDimension("longitude", W)
        _coord(
            ds,
            "valid_time",
            "valid_time",
            np.arange(T) * 1.0,
            units="hours since 2020-01-01",
            calendar="proleptic_gregorian",
        )
        _coord(ds, "pressure_level", "pressure_level", levels, units="hPa")
        _coord(ds, "latitude", "latitude", lat[::-1], units="degrees_north")  # north to south, as ERA5
        _coord(ds, "longitude", "longitude", lon, units="degrees_east")

        def put(name, value, units, level=False):
            dims = (
                ("valid_time", "pressure_level", "latitude", "longitude")
                if level
                else ("valid_time", "latitude", "longitude")
            )
            v = ds.createVariable(name, "f4", dims)
            v.units = units
            v[:] = value[..., ::-1, :]

        rng = np.random.default_rng(0)
        stack = lambda by_level: np.stack([by_level.get(p, rng.normal(size=(T, H, W))) for p in levels], axis=1)  # noqa: E731
        put("tcwv", truth["TMQ"], "kg m**-2")
        put("u", stack({850.0: truth["U850"]}), "m s**-1", True)
        put("v", stack({850.0: truth["V850"]}), "m s**-1", True)
        put("t", stack({200.0: truth["T200"], 500.0: truth["T500"]}), "K", True)
        put("z", stack({1000.0: truth["Z1000"] * GRAVITY, 200.0: truth["Z200"] * GRAVITY}), "m**2 s**-2", True)
        put("u10", truth["UBOT"], "m s**-1")
        put("v10", truth["VBOT"], "m s**-1")
        put("sp", truth["PS"], "Pa")
        put("msl", truth["PSL"] / 100.0, "hPa")  # hPa converts too
        put("tp", truth["PRECT"] * 3600.0, "m")  # accumulated over the hourly step
        put("skt", truth["TS"], "K")
        put("t2m", truth["TREFHT"], "K")
        put("d2m", truth["TREFHT"] - 5.0, "K")


def _cmip6_files(folder, truth, lat, lon, calendar):
    """One variable per file, CMIP names; tas split in time over two files."""
    plev = np.array([100000.0, 85000.0, 50000.0, 20000.0])  # Pa
    plain = dict(
        prw=("TMQ", "kg m-2", 1.0),
        uas=("UBOT", "m s-1", 1.0),
        vas=("VBOT", "m s-1", 1.0),
        huss=("QREFHT", "1", 1.0),
        ps=("PS", "Pa", 1.0),
        psl=("PSL", "Pa", 1.0),
        pr=("PRECT", "kg m-2 s-1", 1000.0),
        ts=("TS", "K", 1.0),
    )
    levelled = dict(
        ua={85000.0: "U850"},
        va={85000.0: "V850"},
        ta={20000.0: "T200", 50000.0: "T500"},
        zg={100000.0: "Z1000", 20000.0: "Z200"},
    )

    def new(name, steps, level=False):
        ds = netCDF4.Dataset(str(folder / f"{name}_6hrPlevPt_MODEL_historical_r1i1p1f1_gn_{steps[0]}.nc"), "w")
        ds.createDimension("time", None)
        ds.createDimension("lat", H)
        ds.createDimension("lon", W)
        ds.createDimension("bnds", 2)
        _coord(ds, "time", "time", np.asarray(steps) * 0.25, units="days since 1850-01-01", calendar=calendar)
        _coord(ds, "lat", "lat", lat, units="degrees_north")
        _coord(ds, "lon", "lon", lon, units="degrees_east")
        b = ds.createVariable("lat_bnds", "f8", ("lat", "bnds"))
        b[:] = np.stack([lat - 1, lat + 1], -1)
        if level:
            ds.createDimension("plev", 4)
            _coord(ds, "plev", "plev", plev, units="Pa")
        return ds

    for name, (channel, units, factor) in plain.items():
        with new(name, [0, 1, 2]) as ds:
            v = ds.createVariable(name, "f4", ("time", "lat", "lon"))
            v.units = units
            v[:] = truth[channel] * factor
    for part in ([2], [0, 1]):  # tas in two pieces, the later written first
        with new("tas", part) as ds:
            v = ds.createVariable("tas", "f4", ("time", "lat", "lon"))
            v.units = "K"
            v[:] = truth["TREFHT"][part]
    for name, by_level in levelled.items():
        with new(name, [0, 1, 2], level=True) as ds:
            v = ds.createVariable(name, "f4", ("time", "plev", "lat", "lon"))
            v.units = "m" if name == "zg" else "K" if name == "ta" else "m s-1"
            data = np.zeros((T, 4, H, W), np.float32)
            for p, c in by_level.items():
                data[:, list(plev).index(p)] = truth[c]
            v[:] = data


def _grid(gaussian=False):
    if gaussian:
        x, _ = np.polynomial.legendre.leggauss(H)
        lat = np.rad2deg(np.arcsin(x))
    else:
        lat = np.linspace(-80, 80, H)
    return lat, np.arange(W) * 360.0 / W


def _check(info, truth, expect, rtol=1e-5):
    for t in range(T):
        got = read_netcdf_step(info, t, list(expect))
        for k, c in enumerate(expect):
            want = expect[c][t] if isinstance(expect[c], np.ndarray) else truth[c][t]
            np.testing.assert_allclose(got[..., k], want, rtol=rtol, atol=1e-12, err_msg=c)


def test_cam5_preset(tmp_path):
    truth = _truth(np.random.default_rng())
    lat, lon = _grid()
    path = tmp_path / "cam5.nc"
    write_cam5_netcdf(str(path), np.stack([truth[c] for c in CHANNELS], -1), lat, lon)
    info = open_netcdf(str(path))
    assert info.convention == "CAM5" and info.times[1] == "2000-01-01 03:00:00"
    _check(info, truth, {c: None for c in CHANNELS})


def test_era5_preset(tmp_path):
    truth = _truth(np.random.default_rng())
    lat, lon = _grid()
    path = tmp_path / "era5.nc"
    _era5_file(str(path), truth, lat, lon)
    info = open_netcdf(str(path))
    assert info.convention == "ERA5" and info.flipped
    assert info.times[:2] == ["2020-01-01 00:00:00", "2020-01-01 01:00:00"]
    derived = dict(
        QREFHT=specific_humidity_from_dewpoint(truth["TREFHT"] - 5.0, truth["PS"]),
        ZBOT=lowest_level_height(truth["TREFHT"]),
    )
    expect = {c: derived.get(c) for c in CHANNELS}
    _check(info, truth, expect, rtol=2e-5)
    q = derived["QREFHT"]
    assert 0.002 < float(np.median(q)) < 0.03  # a plausible specific humidity


@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_cmip6_preset_set_of_files(tmp_path, calendar):
    truth = _truth(np.random.default_rng())
    lat, lon = _grid(gaussian=True)
    folder = tmp_path / "cmip"
    folder.mkdir()
    _cmip6_files(folder, truth, lat, lon, calendar)
    expect = {c: None for c in CHANNELS}
    expect["ZBOT"] = lowest_level_height(truth["TREFHT"])
    for inputs in (str(folder), str(folder / "*.nc"), sorted(str(p) for p in folder.iterdir())[::-1]):
        info = open_netcdf(inputs, convention="auto")
        assert info.convention == "CMIP6" and len(info.times) == T and len(info.paths) == 14
        assert np.allclose(info.lat, lat)
    _check(info, truth, expect)
    only = open_netcdf(str(folder / "ta_*.nc"), channels=["T200", "T500"])  # fewer channels: only those needed
    assert list(only.variables) == ["T200", "T500"]


def test_mapping_file(tmp_path):
    truth = _truth(np.random.default_rng())
    lat, lon = _grid()
    path = tmp_path / "own.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("lat", H)
        ds.createDimension("lon", W)
        _coord(ds, "lat", "lat", lat)
        _coord(ds, "lon", "lon", lon)
        for name, value, units in (
            ("iwv", truth["TMQ"][0], "mm"),
            ("precip", truth["PRECT"][0] * 8.64e7, None),
            ("sst", truth["TS"][0] - 273.15, "degC"),
        ):
            v = ds.createVariable(name, "f4", ("lat", "lon"))
            if units:
                v.units = units
            v[:] = value
    mapping = tmp_path / "vars.json"
    mapping.write_text(json.dumps({"TMQ": "iwv", "PRECT": {"name": "precip", "units": "mm day-1"}, "TS": "sst"}))
    info = open_netcdf(str(path), channels=["TMQ", "PRECT", "TS"], variables=str(mapping))
    got = read_netcdf_step(info, 0)
    for k, c in enumerate(["TMQ", "PRECT", "TS"]):
        np.testing.assert_allclose(got[..., k], truth[c][0], rtol=1e-5)
    mapping.write_text(json.dumps({"TQ": "iwv"}))
    with pytest.raises(ConfigError, match="'TQ' is not a channel"):
        open_netcdf(str(path), channels=["TMQ"], variables=str(mapping))


def test_units_spellings():
    assert canonical_units("kg m**-2") == canonical_units("kg/m2") == canonical_units("kg m^-2") == "kg m-2"
    assert canonical_units("m s**-1") == canonical_units("m/s") == "m s-1"
    assert canonical_units("m**2 s**-2") == "m2 s-2"
    assert canonical_units("kg m-2 s-1") == canonical_units("kg/m2/s") == "kg m-2 s-1"


def test_bad_inputs_one_line(tmp_path):
    truth = _truth(np.random.default_rng())
    lat, lon = _grid()
    path = tmp_path / "era5.nc"
    _era5_file(str(path), truth, lat, lon)
    with netCDF4.Dataset(path, "a") as ds:
        ds.variables["msl"].units = "furlongs"
        ds.renameVariable("tcwv", "tcw_other")
    with pytest.raises(DataError, match=r"missing variable\(s\) TMQ \(ERA5 convention; TMQ: tcwv\)") as e:
        open_netcdf(str(path), convention="ERA5")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="PSL: variable msl has units 'furlongs'"):
        open_netcdf(str(path), channels=["PSL"])
    with netCDF4.Dataset(path, "a") as ds:
        ds.variables["pressure_level"][:] = [1000.0, 925.0, 500.0, 200.0]
    with pytest.raises(DataError, match=r"U850: u has no 850 hPa level \(levels: 200, 500, 925, 1000 hPa\)"):
        open_netcdf(str(path), channels=["U850"], convention="ERA5")
    with pytest.raises(DataError, match="no files match"):
        open_netcdf(str(tmp_path / "nothing_*.nc"))


def test_predict_reads_an_era5_file(tmp_path):
    from climseg.predict import InputFile

    truth = _truth(np.random.default_rng())
    lat, lon = _grid()
    path = tmp_path / "era5.nc"
    _era5_file(str(path), truth, lat, lon)
    source = InputFile(str(path), ["U850", "V850", "PSL"], convention="ERA5")
    fields, background, name, labels = source.read(2)
    assert name == "TMQ" and labels is None and source.info.flipped
    np.testing.assert_allclose(fields[..., 2], truth["PSL"][2], rtol=1e-5)
    np.testing.assert_allclose(background, truth["TMQ"][2], rtol=1e-5)
