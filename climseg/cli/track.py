"""``climseg track MASK... --out DIR``: cyclones and rivers followed through time in class masks
(:func:`climseg.analytics.track.track`; :class:`~climseg.analytics.track.TrackOptions` and
:func:`~climseg.analytics.track.parse_size` check the options)."""

from climseg.cli.options import add_progress_option


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "track",
        help="track cyclones and rivers through time in class masks",
        description="Connected components per class and step (8-connected, joined across "
        "the date line on global grids), stitched through time by overlap. Writes "
        "NAME_event_id.nc per input, events.csv, tracks.csv (and .parquet with pyarrow), "
        "occupancy.nc and track.json into --out.",
    )
    parser.add_argument(
        "masks",
        nargs="+",
        metavar="MASK",
        help="netCDF class masks with a time axis (files, glob patterns or folders; put in time order): "
        "climseg predict's NAME_mask.nc, data files with LABELS, or any CF class mask (--variable)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--variable", default=None, metavar="NAME", help="mask variable (default: mask, else LABELS)")
    parser.add_argument(
        "--like",
        default=None,
        choices=("climatenet",),
        help="preset: climatenet = ClimateNet's "
        "track_events, its linking rules and values: 250-pixel thresholds, look-ahead 1, at least 5 steps "
        "(default: none)",
    )
    parser.add_argument(
        "--rules",
        default=None,
        choices=("climseg", "climatenet"),
        help="linking rules: climseg (every overlap links; joined across the date line only) or climatenet "
        "(ClimateNet's: the first overlap in row-major order links; the grid wraps both ways) "
        "(default: climseg, climatenet with --like climatenet)",
    )
    parser.add_argument(
        "--tc-min-size",
        default=None,
        metavar="SIZE",
        help="smallest cyclone kept, e.g. 250px or 5000km2 (default: 5000km2)",
    )
    parser.add_argument(
        "--ar-min-size",
        default=None,
        metavar="SIZE",
        help="smallest river kept, e.g. 250px or 50000km2 (default: 50000km2)",
    )
    parser.add_argument(
        "--look-ahead", type=int, default=None, metavar="N", help="steps ahead an overlap links objects (default: 1)"
    )
    parser.add_argument(
        "--min-steps", type=int, default=None, metavar="N", help="fewest steps an event must be seen on (default: 2)"
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes over chunks of time (default: 1)"
    )
    add_progress_option(parser)
    parser.set_defaults(run=run)
    return parser


def run(args):
    from climseg.analytics.track import track
    from climseg.analytics.track_options import TrackOptions, climatenet_options, parse_size

    options = climatenet_options() if args.like == "climatenet" else TrackOptions()
    if args.rules is not None:
        options.rules = args.rules
    if args.tc_min_size is not None:
        options.min_size[1] = parse_size(args.tc_min_size, "--tc-min-size")
    if args.ar_min_size is not None:
        options.min_size[2] = parse_size(args.ar_min_size, "--ar-min-size")
    if args.look_ahead is not None:
        options.look_ahead = args.look_ahead
    if args.min_steps is not None:
        options.min_steps = args.min_steps
    track(args.masks, args.out, options, variable=args.variable, workers=args.workers, progress=not args.no_progress)
    return 0
