"""``climseg analyze EVENTS --out DIR``: statistics and climatology maps of tracked events
(:func:`climseg.analytics.analyze.analyze`)."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "analyze",
        help="statistics and climatology maps of tracked events",
        description="Frequency and genesis-density maps (netCDF and PNG with coastlines), "
        "histograms of lifetime, travel distance and speed, events per month, "
        "summary.json.",
    )
    parser.add_argument("events", metavar="EVENTS", help="a climseg track output folder (or its events.csv)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--no-maps", action="store_true", help="numbers only (climatology.nc, summary.json)")
    parser.set_defaults(run=run)
    return parser


def run(args):
    from climseg.analytics.analyze import analyze

    analyze(args.events, args.out, maps=not args.no_maps)
    return 0
