"""Event statistics and climatology maps: a ``climseg track`` output folder in, the
pictures and numbers a climate scientist puts in a paper out.

Data flow (``climseg analyze EVENTS --out DIR``): :func:`climseg.data.events.read_events`
checks the folder's ``track.json`` (format and version) and reads ``events.csv`` and
``tracks.csv``; ``occupancy.nc`` (:func:`climseg.data.events.read_occupancy`) gives how many
steps each cell spent inside an event of each class. From these, per class (tropical cyclones, atmospheric rivers):

* **frequency**: fraction of the time steps with the class at each cell (tracked
  events only, i.e. after the size and lifetime filters);
* **genesis density**: first positions of the events counted on a 5-degree grid, per
  year and per 10^6 km^2 of the grid cell's area (on the sphere);
* histograms of lifetime (hours), travel distance (km) and mean speed (m/s);
* events per month and per year (by genesis time).

Written: ``climatology.nc`` (CF netCDF: ``frequency(class, lat, lon)``,
``genesis_density(class, glat, glon)``), ``frequency_tc.png``, ``frequency_ar.png``,
``genesis_tc.png``, ``genesis_ar.png`` (maps with coastlines), ``histograms.png``,
``events_per_month.png`` and ``summary.json``. Longitudes stay in the convention of the masks
they came from: a grid from -180 gives maps, ``climatology.nc`` and genesis cells from -180 to
180, a grid from 0 from 0 to 360 (monotonic CF coordinates either way).

Coastlines come from the land mask that the ``global-land-mask`` package ships (GLOBE
1-km data, no download), reduced once to a 0.5-degree grid and kept in the climseg
cache folder (:mod:`climseg.data.land`).
"""

import contextlib
import json
import os

import numpy as np

from climseg import sphere
from climseg.constants import CLASS_NAMES
from climseg.data.events import read_events, read_occupancy
from climseg.data.land import land_mask
from climseg.output import OutputBatch, RunLock, atomic_path, check_complete, check_output_location, write_json
from climseg.plotting import finish_map

SHORT = {"tropical_cyclone": "tc", "atmospheric_river": "ar"}
TITLE = {"tropical_cyclone": "tropical cyclones", "atmospheric_river": "atmospheric rivers"}
COLOR = {"tropical_cyclone": "#d62728", "atmospheric_river": "#9467bd"}
GENESIS_BIN_DEG = 5.0


def _float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


_COAST = {}


def coastlines():
    """Coastlines as a list of (N, 2) arrays of (lon, lat) degrees, lon from -180 to 180:
    the 0.5 contour of :func:`land_mask` (traced once per process with contourpy)."""
    if "lines" not in _COAST:
        import contourpy

        lat, lon, land = land_mask()
        _COAST["lines"] = contourpy.contour_generator(lon, lat, land.astype(np.float32)).lines(0.5)
    return _COAST["lines"]


def _draw_coastlines(ax, lon_range):
    from matplotlib.collections import LineCollection

    lo0 = lon_range[0]
    segments = []
    for line in coastlines():
        for shift in (-360.0, 0.0, 360.0):  # the copies that fall on the map's longitude range
            x = line[:, 0] + shift
            if x.max() >= lo0 and x.min() <= lon_range[1]:
                segments.append(np.column_stack([x, line[:, 1]]))
    ax.add_collection(LineCollection(segments, colors="0.15", linewidths=0.6))


def _regular(bounds):
    d = np.diff(bounds)
    return bool(np.allclose(d, d[0], rtol=1e-6, atol=1e-9))


def _map(path, lat, lon, field, title, label, cmap="viridis", note=None):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    lon = np.asarray(lon, np.float64)
    lat_b = sphere.cell_bounds(lat, -90.0, 90.0)
    lon_b = sphere.cell_bounds(lon)
    fig, ax = plt.subplots(figsize=(10.0, 5.4))
    shown = np.ma.masked_equal(field, 0.0)
    if _regular(lat_b) and _regular(lon_b):  # an image: fast at any size
        mesh = ax.imshow(
            shown,
            origin="lower",
            extent=[lon_b[0], lon_b[-1], lat_b[0], lat_b[-1]],
            cmap=cmap,
            vmin=0.0,
            aspect="auto",
            interpolation="nearest",
        )
    else:
        mesh = ax.pcolormesh(lon_b, lat_b, shown, cmap=cmap, shading="flat", vmin=0.0)
    fig.colorbar(mesh, ax=ax, label=label, fraction=0.035, pad=0.02)
    _draw_coastlines(ax, (lon_b[0], lon_b[-1]))
    ax.set_xlim(lon_b[0], lon_b[-1])
    ax.set_ylim(max(-90.0, lat_b[0]), min(90.0, lat_b[-1]))
    finish_map(fig, ax, (lon_b[0], lon_b[-1], lat_b[0], lat_b[-1]), title, note, path)


def _histograms(path, events, classes):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    quantities = (
        ("lifetime_hours", "lifetime (hours)"),
        ("distance_km", "travel distance (km)"),
        ("mean_speed_m_s", "mean speed (m s$^{-1}$)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 3.8))
    for ax, (key, label) in zip(axes, quantities):
        values = {c: np.array([_float(e[key]) for e in events if e["class"] == c]) for c in classes}
        finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] + [np.zeros(1)])
        bins = np.linspace(0.0, max(float(finite.max()), 1e-9) * 1.02, 21)
        for c in classes:
            v = values[c][np.isfinite(values[c])]
            ax.hist(v, bins=bins, histtype="step", linewidth=1.6, color=COLOR[c], label=f"{TITLE[c]} ({v.size})")
        ax.set_xlabel(label)
        ax.set_ylabel("events")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.suptitle("tracked events", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _months(first, last):
    y, m = int(first[:4]), int(first[5:7])
    y1, m1 = int(last[:4]), int(last[5:7])
    out = []
    while (y, m) <= (y1, m1):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _per_month_plot(path, months, counts, classes):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, min(14.0, 0.35 * len(months) + 3)), 3.6))
    x = np.arange(len(months))
    width = 0.4
    for k, c in enumerate(classes):
        ax.bar(x + (k - 0.5) * width, [counts[c][m] for m in months], width, color=COLOR[c], label=TITLE[c])
    step = max(1, len(months) // 12)
    ax.set_xticks(x[::step])
    ax.set_xticklabels(months[::step], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("month of genesis")
    ax.set_ylabel("events per month")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _stats(values):
    v = np.array([x for x in values if np.isfinite(x)])
    if v.size == 0:
        return dict(count=0, mean=None, median=None, p90=None, max=None)
    return dict(
        count=int(v.size),
        mean=float(v.mean()),
        median=float(np.median(v)),
        p90=float(np.percentile(v, 90)),
        max=float(v.max()),
    )


def analyze(events_folder, out, maps=True, log=print):
    """Statistics and maps of a ``climseg track`` output folder; returns the summary dict. The
    output location is checked first; the events folder is read whole and checked
    (:func:`~climseg.data.events.read_events`) while no writer may change it, and the files are
    written as one batch that replaces an earlier ``analyze`` run in ``out`` as a whole."""
    check_output_location(out, "folder")
    events_folder = os.fspath(events_folder)
    folder = events_folder if os.path.isdir(events_folder) else os.path.dirname(os.path.abspath(events_folder))
    inputs = [os.path.join(folder, n) for n in ("track.json", "events.csv", "tracks.csv", "occupancy.nc")]
    batch = OutputBatch(out, command="analyze", inputs=inputs, earlier=_earlier_run)
    with contextlib.ExitStack() as stack:
        if os.path.abspath(folder) != batch.folder:  # in the output folder itself, the batch's lock holds it
            stack.enter_context(RunLock(folder, shared=True))
        stack.enter_context(batch)
        check_complete(folder, "events folder")
        meta, events, _ = read_events(folder)
        lat, lon, occupancy, total = read_occupancy(folder, meta)
        batch.check(["climatology.nc", "summary.json"] + (list(MAP_FILES) if maps else []))
        summary = _analyze(meta, events, lat, lon, occupancy, total, folder, batch, maps)
    tc, ar = summary["classes"]["tropical_cyclone"], summary["classes"]["atmospheric_river"]
    what = "maps, histograms, climatology.nc and summary.json" if maps else "climatology.nc and summary.json"
    log(
        f"climseg: {tc['events']} tropical cyclones, {ar['events']} atmospheric rivers over {total} steps; "
        f"{what} written to {out}"
    )
    return summary


MAP_FILES = (
    "frequency_tc.png",
    "genesis_tc.png",
    "frequency_ar.png",
    "genesis_ar.png",
    "histograms.png",
    "events_per_month.png",
)


def _earlier_run(folder):
    """The files of an ``analyze`` run written into ``folder`` before runs kept a manifest (its summary.json)."""
    with open(os.path.join(folder, "summary.json")) as f:
        summary = json.load(f)
    if "events_folder" not in summary:
        return []  # another command's summary
    return [n for n in summary.get("files", []) if isinstance(n, str)]


def _analyze(meta, events, lat, lon, occupancy, total, folder, batch, maps):
    """The statistics and maps of a checked events folder, written into ``batch``; the summary dict."""
    lon = sphere.monotonic_longitudes(lon)  # as the masks had them: from -180 or from 0
    classes = [c for c in CLASS_NAMES[1:]]
    frequency = occupancy / max(total, 1)
    interval = meta.get("interval_hours") or 0.0
    years = total * interval / (365.0 * 24.0) if interval else 0.0

    glat_b = np.arange(-90.0, 90.0 + 1e-9, GENESIS_BIN_DEG)
    west, east = sphere.longitude_range(lon)  # genesis cells in the grid's convention too
    glon_b = np.arange(west, east + 1e-9, GENESIS_BIN_DEG)
    glat, glon = 0.5 * (glat_b[1:] + glat_b[:-1]), 0.5 * (glon_b[1:] + glon_b[:-1])
    bin_area = sphere.cell_areas(glat, glon) / 1e6  # 10^6 km^2
    genesis = np.zeros((len(CLASS_NAMES), glat.size, glon.size))
    for k, c in enumerate(CLASS_NAMES):
        if k == 0:
            continue
        sel = [e for e in events if e["class"] == c]
        la = np.array([_float(e["genesis_lat"]) for e in sel])
        lo = sphere.wrap_longitudes(np.array([_float(e["genesis_lon"]) for e in sel]), lon)
        counts, _, _ = np.histogram2d(la, lo, bins=[glat_b, glon_b])
        genesis[k] = counts / bin_area / (years if years > 0 else 1.0)
    density_units = "events per year per 10^6 km2" if years > 0 else "events per 10^6 km2"

    _write_climatology(batch.path("climatology.nc"), lat, lon, frequency, glat, glon, genesis, density_units, meta)
    months = _months(meta["first_time"], meta["last_time"])
    per_month = {c: {m: 0 for m in months} for c in classes}
    for e in events:
        m = e["first_time"][:7]
        if m in per_month[e["class"]]:
            per_month[e["class"]][m] += 1
    per_year = {c: {} for c in classes}
    for c in classes:
        for m, n in per_month[c].items():
            per_year[c][m[:4]] = per_year[c].get(m[:4], 0) + n
    files = ["climatology.nc", "summary.json"]
    if maps:
        span = f"{meta['first_time']} to {meta['last_time']}, {total} steps"
        for k, c in enumerate(CLASS_NAMES):
            if k == 0:
                continue
            name = f"frequency_{SHORT[c]}.png"
            _map(
                batch.path(name),
                lat,
                lon,
                frequency[k],
                f"Frequency of {TITLE[c]} ({span})",
                "fraction of time steps",
                cmap="YlOrRd",
            )
            files.append(name)
            name = f"genesis_{SHORT[c]}.png"
            _map(
                batch.path(name),
                glat,
                glon,
                genesis[k],
                f"Genesis density of {TITLE[c]} ({span})",
                density_units.replace("10^6 km2", "10$^6$ km$^2$"),
                cmap="PuBu",
                note=f"{GENESIS_BIN_DEG:g}-degree bins",
            )
            files.append(name)
        _histograms(batch.path("histograms.png"), events, classes)
        _per_month_plot(batch.path("events_per_month.png"), months, per_month, classes)
        files += ["histograms.png", "events_per_month.png"]
    summary = dict(
        events_folder=os.path.abspath(folder),
        first_time=meta["first_time"],
        last_time=meta["last_time"],
        steps=total,
        interval_hours=interval,
        years=years,
        files=files,
        classes={},
    )
    for k, c in enumerate(CLASS_NAMES):
        if k == 0:
            continue
        sel = [e for e in events if e["class"] == c]
        summary["classes"][c] = dict(
            events=len(sel),
            events_per_year=(len(sel) / years) if years > 0 else None,
            lifetime_hours=_stats([_float(e["lifetime_hours"]) for e in sel]),
            distance_km=_stats([_float(e["distance_km"]) for e in sel]),
            mean_speed_m_s=_stats([_float(e["mean_speed_m_s"]) for e in sel]),
            peak_area_km2=_stats([_float(e["peak_area_km2"]) for e in sel]),
            max_frequency=float(frequency[k].max()),
            mean_frequency=float(np.average(frequency[k], weights=sphere.cell_areas(lat, lon))),
            per_month=per_month[c],
            per_year=per_year[c],
        )
    write_json(batch.path("summary.json"), summary)
    return summary


def _write_climatology(path, lat, lon, frequency, glat, glon, genesis, density_units, meta):
    import netCDF4

    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.Conventions = "CF-1.8"
        ds.source = f"climseg analyze of events {meta['first_time']} to {meta['last_time']}"
        ds.createDimension("class", len(CLASS_NAMES))
        for dim, values, std, units in (
            ("lat", lat, "latitude", "degrees_north"),
            ("lon", lon, "longitude", "degrees_east"),
            ("glat", glat, "latitude", "degrees_north"),
            ("glon", glon, "longitude", "degrees_east"),
        ):
            ds.createDimension(dim, values.size)
            v = ds.createVariable(dim, "f8", (dim,))
            v.standard_name, v.units = std, units
            v[:] = values
        c = ds.createVariable("class", "i1", ("class",))
        c.flag_values = np.arange(len(CLASS_NAMES), dtype=np.int8)
        c.flag_meanings = " ".join(CLASS_NAMES)
        c[:] = np.arange(len(CLASS_NAMES))
        f = ds.createVariable("frequency", "f4", ("class", "lat", "lon"), zlib=True)
        f.long_name = "fraction of time steps inside a tracked event of the class"
        f.units = "1"
        f[:] = frequency
        g = ds.createVariable("genesis_density", "f4", ("class", "glat", "glon"), zlib=True)
        g.long_name = f"genesis density ({GENESIS_BIN_DEG:g}-degree bins)"
        g.units = density_units
        g[:] = genesis


def read_summary(path):
    """The ``summary.json`` of an analysis folder."""
    with open(os.path.join(path, "summary.json")) as f:
        return json.load(f)
