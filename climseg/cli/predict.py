"""``climseg predict CHECKPOINT INPUT... --out DIR``: class masks, maps and summary.json of climate
files from a trained checkpoint (:func:`climseg.predict.predict`)."""

from climseg.cli.options import add_progress_option, add_variable_options


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "predict",
        help="segment climate files with a trained checkpoint",
        description="Write class masks, one PNG map per time step and summary.json. "
        "Under mpirun/srun/torchrun each rank segments a share of the inputs and rank 0 "
        "writes the merged summary.json.",
    )
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="checkpoint file (or run folder holding last.pt), "
        "or climatenet:WEIGHTS.pth (ClimateNet weights with config.json beside them)",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="DeepCAM HDF5 samples or netCDF files in any convention: files, glob patterns or folders, "
        "merged into series on time and grid as climseg label merges them (one mask per file of a series' time axis)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda,cuda:N}",
        help="where the network runs (default: auto, the first GPU, else the CPU)",
    )
    parser.add_argument("--no-maps", action="store_true", help="no PNG maps (masks and summary.json only)")
    add_progress_option(parser)
    add_variable_options(parser)
    parser.set_defaults(run=run)
    return parser


def run(args):
    from climseg.predict import predict

    predict(
        args.checkpoint,
        args.inputs,
        args.out,
        device=args.device,
        maps=not args.no_maps,
        progress=not args.no_progress,
        convention=args.convention,
        variables=args.variables,
    )
    return 0
