"""``climseg stage SRC DST``: a dataset copied to node-local storage, in parallel under MPI
(:func:`climseg.data.staging.stage`, which checks the options)."""

from climseg.cli.options import add_progress_option


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "stage",
        help="copy a dataset to node-local storage (in parallel under MPI)",
        description="Copy SRC (a dataset folder) to DST, reading every source file once "
        "in all: under mpirun each rank reads its part and sends it over MPI to the nodes "
        "that need it. Files are verified (size, CRC-32); a rerun skips what is already "
        "staged and unchanged (the source's size and modification time, the copy's size "
        "and modification time), and copies again what changed. DST may contain {node} "
        "for per-node paths.",
    )
    parser.add_argument(
        "src", metavar="SRC", help="dataset folder (train/, validation/, stats.h5) or a folder of samples"
    )
    parser.add_argument("dst", metavar="DST", help="node-local destination, e.g. /dev/shm/deepcam or /local/{node}")
    parser.add_argument(
        "--shard-by",
        default="node",
        metavar="{node,rank}",
        help="give each node or each rank its own share of the training files (default: node)",
    )
    parser.add_argument(
        "--replicate",
        type=int,
        default=1,
        metavar="R",
        help="copies of each training file on distinct nodes (default: 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="copy threads without MPI (default: the cores, at most 8)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-read every staged copy against its recorded CRC-32 and copy again what differs",
    )
    add_progress_option(parser)
    parser.set_defaults(run=run)
    return parser


def run(args):
    from climseg.data.staging import stage

    stage(
        args.src,
        args.dst,
        args.shard_by,
        args.replicate,
        args.threads,
        progress=not args.no_progress,
        verify=args.verify,
    )
    return 0
