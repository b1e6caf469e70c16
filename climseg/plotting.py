"""Maps for people: the TMQ field with cyclone and river outlines on a lat-lon grid, and the
common end of every latitude-longitude map (ticks labelled 60°W, 0°, 60°E... and 30°S, 0°,
30°N, whatever range the grid's longitudes are given in: from -180, from 0, or beyond 360)."""

import numpy as np

from climseg.output import atomic_path

TC_COLOR, AR_COLOR = "#d62728", "#ff00ff"


def plot_map(path, background, mask, lat, lon, title, background_label="TMQ (kg m$^{-2}$)", note=None):
    """Write a PNG: ``background`` (H, W) shaded, class-1 (TC) and class-2 (AR)
    regions of ``mask`` outlined, latitude/longitude axes and a legend.
    Rows run south to north (``lat`` ascending)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    h, w = mask.shape
    dlon = (lon[-1] - lon[0]) / (w - 1) if w > 1 else 0.0
    dlat = (lat[-1] - lat[0]) / (h - 1) if h > 1 else 0.0
    dlon, dlat = dlon or dlat or 1.0, dlat or dlon or 1.0  # one column or row: a square cell
    extent = [lon[0] - dlon / 2, lon[-1] + dlon / 2, lat[0] - dlat / 2, lat[-1] + dlat / 2]
    width_in = 11.0
    aspect = (extent[3] - extent[2]) / max(extent[1] - extent[0], 1e-9)
    fig, ax = plt.subplots(figsize=(width_in, min(16.0, max(3.0, width_in * aspect * 0.9 + 1.2))))
    im = ax.imshow(background, origin="lower", extent=extent, cmap="YlGnBu", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=background_label, fraction=0.035, pad=0.02)
    for value, color in ((1, TC_COLOR), (2, AR_COLOR)):
        if np.any(mask == value) and min(h, w) > 1:  # a contour needs two rows and two columns
            ax.contour(lon, lat, (mask == value).astype(np.float32), levels=[0.5], colors=[color], linewidths=1.3)
    handles = [
        Line2D([], [], color=TC_COLOR, lw=2, label="tropical cyclone"),
        Line2D([], [], color=AR_COLOR, lw=2, label="atmospheric river"),
    ]
    ax.legend(handles=handles, loc="lower left", fontsize=9, framealpha=0.85)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    finish_map(fig, ax, extent, title, note, path)


def _degrees(value):
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def longitude_label(lon):
    """``60°W``, ``0°``, ``120°E``, ``180°`` for a longitude in degrees east given in any range
    (-60, 300 and 660 are all 60°W)."""
    wrapped = (float(lon) + 180.0) % 360.0 - 180.0  # in [-180, 180)
    if abs(wrapped) < 1e-9 or abs(abs(wrapped) - 180.0) < 1e-9:
        return f"{_degrees(abs(wrapped))}°"
    return f"{_degrees(abs(wrapped))}°{'E' if wrapped > 0 else 'W'}"


def latitude_label(lat):
    """``30°S``, ``0°``, ``60°N`` for a latitude in degrees north."""
    if abs(lat) < 1e-9:
        return "0°"
    return f"{_degrees(abs(lat))}°{'N' if lat > 0 else 'S'}"


def finish_map(fig, ax, extent, title, note, path):
    """The common end of every latitude-longitude map: degree ticks every 30 (latitude) and 60
    (longitude) on wide maps, labelled east/west and north/south (:func:`longitude_label`,
    :func:`latitude_label`), the axis names, the title, an optional note in the corner, and the PNG written
    atomically to ``path``; closes the figure. ``extent``: (west, east, south, north)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    if extent[3] - extent[2] > 90:
        ax.set_yticks(np.arange(-90, 91, 30))
    if extent[1] - extent[0] > 180:
        ax.set_xticks(np.arange(60 * np.ceil(extent[0] / 60), extent[1] + 1e-6, 60))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: longitude_label(x)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: latitude_label(y)))
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title, fontsize=11)
    if note:
        ax.text(0.995, 0.01, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.3")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
