"""``climseg convert --from FORMAT SOURCE OUT`` / ``--to FORMAT CHECKPOINT OUT``: other projects'
checkpoints to and from climseg's (:func:`climseg.data.checkpoints.convert_checkpoint`, which
checks the formats and options)."""


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="import or export checkpoints in other projects' layouts",
        description="climseg convert --from FORMAT SOURCE OUT imports another project's "
        "weights as a climseg checkpoint OUT (that predict, train --init-weights and train "
        "--resume read); --to FORMAT CHECKPOINT OUT writes a climseg checkpoint in that "
        "layout. Formats: climatenet (ClimateNet's weights.pth with the config.json "
        "beside it; import), mlperf-deepcam (the MLPerf HPC DeepCAM reference's "
        "checkpoint or bare state_dict; import and export).",
    )
    parser.add_argument(
        "source", metavar="SOURCE", help="weights file to import (--from) or climseg checkpoint to export (--to)"
    )
    parser.add_argument("out", metavar="OUT", help="file to write")
    parser.add_argument(
        "--from",
        dest="from_format",
        default=None,
        metavar="FORMAT",
        help="format of SOURCE: climatenet or mlperf-deepcam (default: none; give --from or --to)",
    )
    parser.add_argument(
        "--to",
        dest="to_format",
        default=None,
        metavar="FORMAT",
        help="format of OUT: mlperf-deepcam (default: none; give --from or --to)",
    )
    parser.add_argument(
        "--climatenet-config",
        default=None,
        metavar="FILE",
        help="--from climatenet: ClimateNet's config.json (default: the one beside the weights)",
    )
    parser.add_argument(
        "--stats",
        default=None,
        metavar="FILE",
        help="the dataset's stats.h5: the input "
        "normalisation, which the MLPerf reference's checkpoint does not hold (no default: needed "
        "with --from mlperf-deepcam)",
    )
    parser.add_argument(
        "--normalization",
        default=None,
        metavar="{minmax,zscore}",
        help="--from mlperf-deepcam: the input normalisation (default: minmax, the MLPerf reference's)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args):
    from climseg.data.checkpoints import convert_checkpoint

    report = convert_checkpoint(
        args.source,
        args.out,
        args.from_format,
        args.to_format,
        config=args.climatenet_config,
        stats=args.stats,
        normalization=args.normalization,
    )
    print(f"climseg: {report}")
    return 0
