"""Files written the way their producers write them, made here from a generated CAM5-like
series (nothing can be downloaded in the tests): the same fields under the names, units,
coordinates, packing, calendars and file layout of

* classic-CDS ERA5 (:func:`era5_classic`): netCDF-3 (64-bit offset), every field packed as
  int16 with ``scale_factor``/``add_offset`` and a ``_FillValue``/``missing_value`` of -32767,
  ``time`` as int32 hours since 1900, ``level`` (int32, ``units = "millibars"``), latitudes from
  north to south as float32, one pressure-level and one single-level file;
* new-CDS ERA5 (:func:`era5_new`): netCDF-4, ``valid_time`` (int64 seconds since 1970,
  proleptic Gregorian), ``pressure_level`` in hPa, the scalar ``number`` and the string
  ``expver(valid_time)``, NaN as ``_FillValue``, single-level fields split into the
  ``stepType-instant`` and ``stepType-accum`` files the new CDS delivers;
* CMIP6 (:func:`cmip6_set`): one variable per file named by the CMOR template, ``time_bnds``,
  ``lat_bnds``, ``lon_bnds``, ``plev`` in Pa, the scalar ``height`` of near-surface fields,
  ``_FillValue`` 1e20, a noleap calendar, some variables split over two files;
* CMIP5 MPI-ESM-LR (:func:`cmip5_set`): netCDF-3 classic, ``tas``/``uas``/``vas`` every 3 hours
  (``3hr`` table) and ``psl``/``ua``/``va``/``ta`` every 6 hours on 850, 500 and 250 hPa
  (``6hrPlev`` table), one variable per file split by day, ``days since 1850-1-1`` in the
  proleptic Gregorian calendar, on a T63 Gaussian grid (96 x 192) when the series has that size.

Each writer can put the longitudes on -180..180 (``west=-180``): the columns are rolled, as the
CDS does for an ``area`` from -180. :func:`read_series` reads the generated series back.
"""

import datetime
import os

import cftime
import netCDF4
import numpy as np

from climseg.constants import CHANNELS
from climseg.data.variables import GRAVITY


def read_series(folder):
    """``dict(lat, lon, hours, fields {channel: (T, H, W)}, labels, files, steps_per_file)`` of a
    series written by ``climseg generate --timesteps``."""
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".nc"))
    fields = {c: [] for c in CHANNELS}
    labels, hours, steps = [], [], []
    for path in files:
        with netCDF4.Dataset(path) as ds:
            lat, lon = ds["lat"][:].data, ds["lon"][:].data
            hours.append(ds["time"][:].data)
            steps.append(ds.dimensions["time"].size)
            for c in CHANNELS:
                fields[c].append(ds[c][:].data)
            labels.append(ds["LABELS"][:].data)
    return dict(
        lat=lat,
        lon=lon,
        hours=np.concatenate(hours),
        fields={c: np.concatenate(v) for c, v in fields.items()},
        labels=np.concatenate(labels),
        files=files,
        steps_per_file=steps,
    )


def rolled(series, west):
    """``(lon, roll)``: the longitudes from ``west`` (0 or -180) and the columns to roll by."""
    lon = series["lon"]
    if west == 0:
        return lon, 0
    k = int(np.searchsorted(lon, 180.0))
    return np.concatenate([lon[k:] - 360.0, lon[:k]]), -k


def dewpoint_from_specific_humidity(q, p):
    """Dew point (K) whose Bolton (1980) vapour pressure gives ``q`` at ``p`` (inverse of
    :func:`climseg.data.variables.specific_humidity_from_dewpoint`)."""
    q, p = q.astype(np.float64), p.astype(np.float64)
    e = q * p / (0.622 + 0.378 * q)
    x = np.log(e / 611.2)
    return 243.5 * x / (17.67 - x) + 273.15


def _put_coordinate(ds, name, dim, values, dtype="f8", **attrs):
    v = ds.createVariable(name, dtype, (dim,) if dim else ())
    v.setncatts(attrs)
    v[...] = values
    return v


def _pack(ds, name, dims, values, **attrs):
    """An int16 variable packed as the classic CDS packs it: ``scale_factor``, ``add_offset``,
    -32767 as ``_FillValue`` and ``missing_value``."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    scale = (hi - lo) / 65532.0 if hi > lo else 1.0
    offset = 0.5 * (hi + lo)
    v = ds.createVariable(name, "i2", dims, fill_value=np.int16(-32767))
    v.scale_factor, v.add_offset = scale, offset
    v.missing_value = np.int16(-32767)
    v.setncatts(attrs)
    v.set_auto_maskandscale(False)
    packed = np.round((values.astype(np.float64) - offset) / scale)
    v[:] = np.where(np.isnan(packed), -32767, packed).astype(np.int16)
    return v


def _era5_fields(series, roll):
    """ERA5 variables (name -> (T, H, W) or {hPa: (T, H, W)}, units) from the CAM5 channels,
    latitudes from north to south."""
    f = {c: np.roll(v, roll, axis=-1)[:, ::-1] for c, v in series["fields"].items()}
    interval = float(np.median(np.diff(series["hours"]))) * 3600.0 if len(series["hours"]) > 1 else 3600.0
    surface = dict(
        msl=(f["PSL"], "Pa"),
        sp=(f["PS"], "Pa"),
        tcwv=(f["TMQ"], "kg m**-2"),
        u10=(f["UBOT"], "m s**-1"),
        v10=(f["VBOT"], "m s**-1"),
        t2m=(f["TREFHT"], "K"),
        skt=(f["TS"], "K"),
        d2m=(dewpoint_from_specific_humidity(f["QREFHT"], f["PS"]), "K"),
    )
    accumulated = dict(tp=(f["PRECT"] * interval, "m"))  # metres of water over the step
    zeros = np.zeros_like(f["PSL"])
    levels = dict(
        u=({850.0: f["U850"]}, "m s**-1"),
        v=({850.0: f["V850"]}, "m s**-1"),
        t=({200.0: f["T200"], 500.0: f["T500"], 850.0: f["T500"] + 20.0, 1000.0: f["TREFHT"]}, "K"),
        z=({1000.0: f["Z1000"] * GRAVITY, 200.0: f["Z200"] * GRAVITY}, "m**2 s**-2"),
    )
    for name, (by_level, units) in levels.items():
        levels[name] = ({p: by_level.get(p, zeros) for p in (1000.0, 850.0, 500.0, 200.0)}, units)
    return surface, accumulated, levels


def _era5_dates(series, start=(2020, 9, 1)):
    base = cftime.DatetimeProlepticGregorian(*start)
    return [base + datetime.timedelta(hours=float(h - series["hours"][0])) for h in series["hours"]]


def _expver(values, steps):
    """``values`` (T, ...) as ERA5 and ERA5T members (T, 2, ...): the first ``steps`` steps in ERA5
    (expver 1), the rest in ERA5T (expver 5), the fill value where a member has no data."""
    out = np.full((values.shape[0], 2) + values.shape[1:], np.nan)
    out[:steps, 0] = values[:steps]
    out[steps:, 1] = values[steps:]
    return out


def era5_classic(series, folder, west=0.0, stem="era5_2020-09", expver=False):
    """Classic-CDS ERA5 files ``STEM_pl.nc`` and ``STEM_sfc.nc`` in ``folder`` (see the module docs);
    with ``expver`` the download reaches the near-real-time months: every field has an ``expver``
    axis (1: ERA5 for the first half of the steps, 5: ERA5T for the rest, missing elsewhere)."""
    lon, roll = rolled(series, west)
    lat = series["lat"][::-1]
    surface, accumulated, levels = _era5_fields(series, roll)
    hours = cftime.date2num(_era5_dates(series), "hours since 1900-01-01 00:00:00.0", "gregorian")
    level_values = [200, 500, 850, 1000]
    paths = []
    for kind in ("pl", "sfc"):
        path = os.path.join(folder, f"{stem}_{kind}.nc")
        with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as ds:
            ds.Conventions = "CF-1.6"
            ds.history = "2020-10-03 12:00:00 GMT by grib_to_netcdf-2.16.0: /opt/ecmwf/eccodes/bin/grib_to_netcdf"
            ds.createDimension("longitude", lon.size)
            ds.createDimension("latitude", lat.size)
            if kind == "pl":
                ds.createDimension("level", len(level_values))
            if expver:
                ds.createDimension("expver", 2)
                _put_coordinate(ds, "expver", "expver", [1, 5], "i4", long_name="expver")
            ds.createDimension("time", None)
            _put_coordinate(ds, "longitude", "longitude", lon, "f4", units="degrees_east", long_name="longitude")
            _put_coordinate(ds, "latitude", "latitude", lat, "f4", units="degrees_north", long_name="latitude")
            if kind == "pl":
                _put_coordinate(ds, "level", "level", level_values, "i4", units="millibars", long_name="pressure_level")
            _put_coordinate(
                ds,
                "time",
                "time",
                np.round(hours).astype(np.int32),
                "i4",
                units="hours since 1900-01-01 00:00:00.0",
                long_name="time",
                calendar="gregorian",
            )
            lead = ("time", "expver") if expver else ("time",)
            split = len(hours) // 2
            if kind == "pl":
                for name, (by_level, units) in levels.items():
                    stack = np.stack([by_level[float(p)] for p in level_values], axis=1)
                    stack = _expver(stack, split) if expver else stack
                    _pack(ds, name, lead + ("level", "latitude", "longitude"), stack, units=units, long_name=name)
            else:
                for name, (values, units) in {**surface, **accumulated}.items():
                    values = _expver(values, split) if expver else values
                    _pack(ds, name, lead + ("latitude", "longitude"), values, units=units, long_name=name)
        paths.append(path)
    return paths


def era5_new(series, folder, west=-180.0):
    """New-CDS ERA5 files in ``folder``: ``pressure_levels.nc``,
    ``data_stream-oper_stepType-instant.nc`` and ``data_stream-oper_stepType-accum.nc``."""
    lon, roll = rolled(series, west)
    lat = series["lat"][::-1]
    surface, accumulated, levels = _era5_fields(series, roll)
    seconds = cftime.date2num(_era5_dates(series), "seconds since 1970-01-01", "proleptic_gregorian")
    level_values = [1000.0, 850.0, 500.0, 200.0]
    files = {
        "pressure_levels.nc": {n: v for n, v in levels.items()},
        "data_stream-oper_stepType-instant.nc": surface,
        "data_stream-oper_stepType-accum.nc": accumulated,
    }
    paths = []
    for name, content in files.items():
        path = os.path.join(folder, name)
        with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
            ds.GRIB_centre = "ecmf"
            ds.Conventions = "CF-1.7"
            ds.institution = "European Centre for Medium-Range Weather Forecasts"
            ds.createDimension("valid_time", len(seconds))
            ds.createDimension("latitude", lat.size)
            ds.createDimension("longitude", lon.size)
            _put_coordinate(ds, "number", None, 0, "i8", long_name="ensemble member numerical id", units="1")
            _put_coordinate(
                ds,
                "valid_time",
                "valid_time",
                np.round(seconds).astype(np.int64),
                "i8",
                long_name="time",
                standard_name="time",
                units="seconds since 1970-01-01",
                calendar="proleptic_gregorian",
            )
            _put_coordinate(
                ds, "latitude", "latitude", lat, units="degrees_north", standard_name="latitude", long_name="latitude"
            )
            _put_coordinate(
                ds,
                "longitude",
                "longitude",
                lon,
                units="degrees_east",
                standard_name="longitude",
                long_name="longitude",
            )
            expver = ds.createVariable("expver", str, ("valid_time",))
            expver.long_name = "Experiment version"
            for k in range(len(seconds)):
                expver[k] = "0001"
            dims = ("valid_time", "latitude", "longitude")
            if name == "pressure_levels.nc":
                ds.createDimension("pressure_level", len(level_values))
                _put_coordinate(
                    ds,
                    "pressure_level",
                    "pressure_level",
                    level_values,
                    units="hPa",
                    long_name="pressure",
                    standard_name="air_pressure",
                    positive="down",
                )
                dims = ("valid_time", "pressure_level", "latitude", "longitude")
            for var, (values, units) in content.items():
                if isinstance(values, dict):
                    values = np.stack([values[p] for p in level_values], axis=1)
                v = ds.createVariable(var, "f4", dims, zlib=True, complevel=1, fill_value=np.float32(np.nan))
                v.units, v.long_name, v.GRIB_units = units, var, units
                v.coordinates = "number expver"
                v[:] = values
        paths.append(path)
    return paths


def _cmor_stamp(date):
    return f"{date.year:04d}{date.month:02d}{date.day:02d}{date.hour:02d}{date.minute:02d}"


def _cmip_file(path, fmt, lat, lon, dates, time_units, calendar, plev=None, height=None):
    ds = netCDF4.Dataset(path, "w", format=fmt)
    ds.Conventions = "CF-1.7 CMIP-6.2" if fmt.startswith("NETCDF4") else "CF-1.4"
    ds.createDimension("time", None)
    if plev is not None:
        ds.createDimension("plev", len(plev))
    ds.createDimension("lat", lat.size)
    ds.createDimension("lon", lon.size)
    ds.createDimension("bnds", 2)
    t = cftime.date2num(dates, time_units, calendar)
    _put_coordinate(
        ds, "time", "time", t, bounds="time_bnds", units=time_units, calendar=calendar, axis="T", standard_name="time"
    )
    step = float(t[1] - t[0]) if len(t) > 1 else 0.125
    ds.createVariable("time_bnds", "f8", ("time", "bnds"))[:] = np.stack([t - step / 2, t + step / 2], -1)
    if plev is not None:
        _put_coordinate(ds, "plev", "plev", plev, units="Pa", axis="Z", positive="down", standard_name="air_pressure")
    _put_coordinate(ds, "lat", "lat", lat, bounds="lat_bnds", units="degrees_north", axis="Y", standard_name="latitude")
    _put_coordinate(ds, "lon", "lon", lon, bounds="lon_bnds", units="degrees_east", axis="X", standard_name="longitude")
    lat_edges = np.concatenate([[-90.0], 0.5 * (lat[1:] + lat[:-1]), [90.0]])
    ds.createVariable("lat_bnds", "f8", ("lat", "bnds"))[:] = np.stack([lat_edges[:-1], lat_edges[1:]], -1)
    dlon = float(lon[1] - lon[0])
    ds.createVariable("lon_bnds", "f8", ("lon", "bnds"))[:] = np.stack([lon - dlon / 2, lon + dlon / 2], -1)
    if height is not None:
        _put_coordinate(ds, "height", None, height, units="m", axis="Z", positive="up", standard_name="height")
    return ds


def _cmip_variable(ds, name, values, units, level=False, height=False, fmt="NETCDF4_CLASSIC"):
    dims = ("time", "plev", "lat", "lon") if level else ("time", "lat", "lon")
    kwargs = dict(zlib=True, complevel=1) if fmt.startswith("NETCDF4") else {}
    v = ds.createVariable(name, "f4", dims, fill_value=np.float32(1e20), **kwargs)
    v.missing_value = np.float32(1e20)
    v.units = units
    if height:
        v.coordinates = "height"
    v[:] = values


CMIP6_PLEV = np.array([100000.0, 85000.0, 50000.0, 20000.0])


def cmip6_set(series, folder, model="CESM2", experiment="ssp585", member="r1i1p1f1"):
    """A CMIP6 set in ``folder``: one variable per file, the CMOR file-name template,
    ``prw``, ``tas`` and ``ua`` split in time over two files. Returns the paths."""
    f = series["fields"]
    base = cftime.DatetimeNoLeap(2100, 1, 1)
    dates = [base + datetime.timedelta(hours=float(h - series["hours"][0])) for h in series["hours"]]
    plain = dict(
        prw=("TMQ", "kg m-2", 1.0, None),
        uas=("UBOT", "m s-1", 1.0, 10.0),
        vas=("VBOT", "m s-1", 1.0, 10.0),
        huss=("QREFHT", "1", 1.0, 2.0),
        ps=("PS", "Pa", 1.0, None),
        psl=("PSL", "Pa", 1.0, None),
        pr=("PRECT", "kg m-2 s-1", 1000.0, None),
        ts=("TS", "K", 1.0, None),
        tas=("TREFHT", "K", 1.0, 2.0),
    )
    zeros = np.zeros_like(f["PSL"])
    levelled = dict(
        ua=({85000.0: f["U850"]}, "m s-1"),
        va=({85000.0: f["V850"]}, "m s-1"),
        ta=({20000.0: f["T200"], 50000.0: f["T500"], 85000.0: f["T500"] + 20.0, 100000.0: f["TREFHT"]}, "K"),
        zg=({100000.0: f["Z1000"], 20000.0: f["Z200"]}, "m"),
    )
    n = len(dates)
    split = {"prw", "tas", "ua"}
    paths = []

    def write(name, data, units, level, height):
        pieces = [range(0, n // 2), range(n // 2, n)] if name in split and n > 1 else [range(n)]
        for piece in pieces:
            d = [dates[i] for i in piece]
            stem = f"{name}_6hrPlevPt_{model}_{experiment}_{member}_gn_{_cmor_stamp(d[0])}-{_cmor_stamp(d[-1])}"
            path = os.path.join(folder, stem + ".nc")
            with _cmip_file(
                path,
                "NETCDF4_CLASSIC",
                series["lat"],
                series["lon"],
                d,
                "days since 1850-01-01",
                "noleap",
                CMIP6_PLEV if level else None,
                height,
            ) as ds:
                ds.source_id, ds.experiment_id, ds.variant_label, ds.table_id = model, experiment, member, "6hrPlevPt"
                _cmip_variable(ds, name, data[list(piece)], units, level, height is not None)
            paths.append(path)

    for name, (channel, units, factor, height) in plain.items():
        write(name, f[channel] * factor, units, False, height)
    for name, (by_level, units) in levelled.items():
        write(name, np.stack([by_level.get(p, zeros) for p in CMIP6_PLEV], axis=1), units, True, None)
    return paths


def gaussian_latitudes(n):
    """The ``n`` Gaussian latitudes (degrees, south to north) of a spectral model's grid (T63: 96)."""
    x, _ = np.polynomial.legendre.leggauss(n)
    return np.rad2deg(np.arcsin(x))


CMIP5_PLEV = np.array([85000.0, 50000.0, 25000.0])


def cmip5_set(series, folder, model="MPI-ESM-LR", experiment="historical", member="r1i1p1"):
    """MPI-ESM-LR's CMIP5 files in ``folder`` (see the module docs), on the series' grid with
    Gaussian latitudes: ``(3-hourly tas/uas/vas paths, 6-hourly psl/ua/va/ta paths)``."""
    f = series["fields"]
    lat = gaussian_latitudes(series["lat"].size)
    base = cftime.DatetimeProlepticGregorian(2005, 6, 1)
    dates = [base + datetime.timedelta(hours=float(h - series["hours"][0])) for h in series["hours"]]
    days = sorted({(d.year, d.month, d.day) for d in dates})
    six_hourly = [i for i, d in enumerate(dates) if d.hour % 6 == 0]
    groups = {
        "3hr": dict(
            tas=(f["TREFHT"], "K", 2.0, None),
            uas=(f["UBOT"], "m s-1", 10.0, None),
            vas=(f["VBOT"], "m s-1", 10.0, None),
        ),
        "6hrPlev": dict(
            psl=(f["PSL"], "Pa", None, None),
            ua=(f["U850"], "m s-1", None, {85000.0: f["U850"]}),
            va=(f["V850"], "m s-1", None, {85000.0: f["V850"]}),
            ta=(f["T500"], "K", None, {50000.0: f["T500"], 25000.0: f["T200"] + 8.0, 85000.0: f["T500"] + 20.0}),
        ),
    }
    out = {"3hr": [], "6hrPlev": []}
    for table, variables in groups.items():
        steps = list(range(len(dates))) if table == "3hr" else six_hourly
        for day in days:
            piece = [i for i in steps if (dates[i].year, dates[i].month, dates[i].day) == day]
            if not piece:
                continue
            d = [dates[i] for i in piece]
            for name, (values, units, height, by_level) in variables.items():
                stem = f"{name}_{table}_{model}_{experiment}_{member}_{_cmor_stamp(d[0])}-{_cmor_stamp(d[-1])}"
                path = os.path.join(folder, stem + ".nc")
                plev = CMIP5_PLEV if by_level is not None else None
                with _cmip_file(
                    path,
                    "NETCDF3_CLASSIC",
                    lat,
                    series["lon"],
                    d,
                    "days since 1850-1-1 00:00:00",
                    "proleptic_gregorian",
                    plev,
                    height,
                ) as ds:
                    ds.model_id, ds.experiment_id, ds.project_id, ds.table_id = model, experiment, "CMIP5", table
                    if by_level is not None:
                        zeros = np.zeros_like(values)
                        data = np.stack([by_level.get(p, zeros) for p in CMIP5_PLEV], axis=1)[piece]
                    else:
                        data = values[piece]
                    _cmip_variable(ds, name, data, units, by_level is not None, height is not None, "NETCDF3_CLASSIC")
                out[table].append(path)
    return out["3hr"], out["6hrPlev"]
