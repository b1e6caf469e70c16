"""``climseg generate OUT``: a synthetic CAM5-like dataset in the DeepCAM layout
(:func:`climseg.data.generate.generate_dataset`), or with ``--timesteps`` a time series of
netCDF history files (:func:`climseg.data.timeseries.generate_timeseries`). The library checks
the sizes and counts; this module picks the generator from ``--format`` and ``--timesteps``."""

from climseg.cli.options import add_progress_option
from climseg.errors import UserError


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "generate",
        help="write a synthetic CAM5-like dataset (DeepCAM layout) or time series (netCDF)",
        description="Write OUT/train/*.h5, OUT/validation/*.h5 and OUT/stats.h5; with "
        "--timesteps, a time series of CAM5-like history files instead (one netCDF file "
        "per model day, with LABELS, TRUE_EVENT_ID, true_events.csv and true_tracks.csv).",
    )
    parser.add_argument("out", metavar="OUT", help="output folder (must not exist, or be empty)")
    parser.add_argument("--samples", type=int, default=16, metavar="N", help="total number of samples (default: 16)")
    parser.add_argument(
        "--height", type=int, default=768, metavar="H", help="grid rows, a multiple of 16 (default: 768)"
    )
    parser.add_argument(
        "--width", type=int, default=1152, metavar="W", help="grid columns, a multiple of 16 (default: 1152)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.125,
        metavar="F",
        help="share of samples held out (default: 0.125)",
    )
    parser.add_argument(
        "--cyclones",
        type=float,
        default=None,
        metavar="MEAN",
        help="mean number of tropical cyclones per sample (default: 3)",
    )
    parser.add_argument(
        "--rivers",
        type=float,
        default=None,
        metavar="MEAN",
        help="mean number of atmospheric rivers per sample (default: 4)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="processes (default: the cores, at most 8)"
    )
    parser.add_argument(
        "--timesteps",
        type=int,
        default=None,
        metavar="N",
        help="write a time series of this many steps instead of independent samples (default: none)",
    )
    parser.add_argument(
        "--interval",
        default="3h",
        metavar="DURATION",
        help="time series: time between steps, e.g. 3h, 6h, 90min (default: 3h)",
    )
    parser.add_argument(
        "--format",
        default=None,
        choices=("hdf5", "netcdf"),
        help="hdf5: samples; netcdf: a time series (default: hdf5, or netcdf with --timesteps)",
    )
    parser.add_argument(
        "--case", default="climseg", metavar="NAME", help="time series: case name in the file names (default: climseg)"
    )
    parser.add_argument(
        "--compress",
        action="store_true",
        help="write the fields gzip-compressed: about a third smaller, slower to read (default: off)",
    )
    add_progress_option(parser)
    parser.set_defaults(run=run)
    return parser


def run(args):
    if args.timesteps is not None or args.format == "netcdf":
        return _timeseries(args)
    from climseg.data.generate import generate_dataset

    s = generate_dataset(
        args.out,
        args.samples,
        args.height,
        args.width,
        args.seed,
        args.validation_fraction,
        workers=args.workers,
        progress=not args.no_progress,
        features=_features(args),
        compress=args.compress,
    )
    f = s["class_frequencies"]
    print(
        f"climseg: wrote {s['train']} training and {s['validation']} validation samples of "
        f"{s['height']}x{s['width']} to {args.out} ({s['cyclones']} cyclones, {s['rivers']} rivers; pixels: "
        f"background {100 * f['background']:.2f}%, TC {100 * f['tropical_cyclone']:.2f}%, "
        f"AR {100 * f['atmospheric_river']:.2f}%)"
    )
    return 0


def _features(args):
    """The generator's Features with --cyclones and --rivers where given."""
    import dataclasses

    from climseg.data.synthetic import Features

    given = dict(cyclones_mean=args.cyclones, rivers_mean=args.rivers)
    return dataclasses.replace(Features(), **{k: v for k, v in given.items() if v is not None})


def _timeseries(args):
    from climseg.data.timeseries import generate_timeseries, parse_interval

    if args.timesteps is None:
        raise UserError("--format netcdf writes a time series: give --timesteps")
    if args.format == "hdf5":
        raise UserError("--timesteps writes netCDF history files; --format hdf5 is for independent samples")
    s = generate_timeseries(
        args.out,
        args.timesteps,
        parse_interval(args.interval),
        args.height,
        args.width,
        args.seed,
        workers=args.workers,
        progress=not args.no_progress,
        features=_features(args),
        case=args.case,
        compress=args.compress,
    )
    print(
        f"climseg: wrote {s['timesteps']} steps every {s['interval_hours']:g} h of {s['height']}x{s['width']} in "
        f"{len(s['files'])} daily files to {args.out} ({s['cyclones']} cyclones, {s['rivers']} rivers; truth in "
        f"true_events.csv, true_tracks.csv)"
    )
    return 0
