"""``climseg label INPUT... --out DIR``: heuristic cyclone and river masks from the physical fields
(:func:`climseg.analytics.label.label`; :class:`~climseg.analytics.label.LabelOptions` checks the
thresholds)."""

from climseg.cli.options import add_progress_option, add_variable_options

#: (LabelOptions field, type, metavar, help): the thresholds; their sources are in docs/labelling.md.
THRESHOLDS = [
    ("tc_vorticity", float, "VALUE", "850 hPa cyclonic vorticity, s-1 (default: 3.5e-5)"),
    ("tc_warm_core", float, "VALUE", "upper-level warm anomaly, K (default: 0.8)"),
    ("tc_pressure_rise", float, "VALUE", "PSL rise within --tc-environment-km, Pa (default: 400)"),
    ("tc_wind", float, "VALUE", "low-level wind, m s-1 (default: 17)"),
    ("tc_core_km", float, "KM", "vorticity and warm-core search radius, km (default: 222, 2 deg)"),
    (
        "tc_environment_km",
        float,
        "KM",
        ("closed-depression and warm-core surroundings radius, km (default: 556, 5 deg)"),
    ),
    ("tc_mask_km", float, "KM", "largest extent of a storm mask, km (default: 500)"),
    ("tc_max_lat", float, "DEG", "storm centres equatorward of this latitude (default: 45)"),
    ("tc_min_hours", float, "HOURS", "shortest storm track kept, hours (default: 24)"),
    ("ar_field", str, "{auto,ivt,proxy,tmq}", "the river field; proxy: TMQ x |V850| (default: auto)"),
    ("ar_threshold", float, "VALUE", "absolute river threshold (default: 250 kg m-1 s-1; TMQ: 20 kg m-2)"),
    ("ar_percentile", float, "PERCENT", "also require this local percentile, e.g. 85 (default: off)"),
    (
        "ar_climatology",
        str,
        "{series,zonal}",
        (
            "series: the percentile at each cell over the series; zonal: over "
            "each step's latitude circle (default: series)"
        ),
    ),
    ("ar_min_length_km", float, "KM", "shortest river, km (default: 2000)"),
    ("ar_min_aspect", float, "RATIO", "smallest length/width (default: 2)"),
    ("ar_max_width_km", float, "KM", "widest river, km (default: 1000)"),
    ("ar_min_poleward", float, "VALUE", "object-mean poleward transport, kg m-1 s-1 (default: 50)"),
]


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "label",
        help="heuristic cyclone and river masks from the physical fields (TECA-like)",
        description="Label tropical cyclones (1) and atmospheric rivers (2) in CF netCDF "
        "files (any variable convention; the files are merged into one series on time and "
        "grid) or DeepCAM HDF5 samples, by the physical criteria of docs/labelling.md. "
        "Writes NAME_mask.nc (or .h5) per file of the series' time axis, in the format of "
        "climseg predict, and summary.json.",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="netCDF files, glob patterns or folders (one series), or DeepCAM HDF5 samples",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--method", default="tc+ar", metavar="{tc+ar,tc,ar}", help="classes to label (default: tc+ar)")
    for field, type_, metavar, text in THRESHOLDS:
        parser.add_argument(
            "--" + field.replace("_", "-"), dest=field, type=type_, default=None, metavar=metavar, help=text
        )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes, one file at a time each (default: 1)"
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="DIR",
        help="also write the steps and their labels as a "
        "DeepCAM training set (train/, validation/, stats.h5) for climseg train --data DIR "
        "(default: none)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.125,
        metavar="F",
        help="--dataset: share of the steps, the last ones, held out for validation (default: 0.125)",
    )
    add_progress_option(parser)
    add_variable_options(parser)
    parser.set_defaults(run=run)
    return parser


def run(args):
    from climseg.analytics.label import LabelOptions, label

    thresholds = {field: getattr(args, field) for field, _, _, _ in THRESHOLDS if getattr(args, field) is not None}
    options = LabelOptions(method=args.method, **thresholds)
    label(
        args.inputs,
        args.out,
        options,
        convention=args.convention,
        variables=args.variables,
        workers=args.workers,
        progress=not args.no_progress,
        dataset=args.dataset,
        validation_fraction=args.validation_fraction,
    )
    return 0
