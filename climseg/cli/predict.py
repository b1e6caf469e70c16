"""``climseg predict CHECKPOINT INPUT... --out DIR``: class masks, maps and summary.json of climate
files from a trained checkpoint (:func:`climseg.predict.predict`)."""

from climseg.cli.options import add_progress_option, add_variable_options, batch_size_arg


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
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        help="the network's arithmetic (default: auto, by hardware as in climseg train: bf16 on Ampere and later, "
        "fp16 on Volta/Turing, bf16 on CPUs with native bf16, else fp32; `climseg info` says which); "
        "int8: CPUs, calibrated (--calibrate), needs torchao",
    )
    parser.add_argument(
        "--batch-size",
        type=batch_size_arg,
        default="auto",
        metavar="N",
        help="time steps per forward (default: auto: 4 on a GPU; on a CPU 1 to 4, as many as keep a batch "
        "within 2^18 grid points, since larger batches only slow a CPU down)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network (the first batch pays the compile time, reported; compiled code is cached)",
    )
    parser.add_argument(
        "--calibrate",
        nargs="+",
        metavar="FILE",
        help="int8: files whose first 8 time steps calibrate the quantization (default: the first input)",
    )
    parser.add_argument("--no-maps", action="store_true", help="no PNG maps (masks and summary.json only)")
    parser.add_argument(
        "--map-workers",
        type=int,
        metavar="N",
        help="processes that render the maps (default: half the cores, at most 4; 0: in the writer thread)",
    )
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
        precision=args.precision,
        batch_size=args.batch_size,
        compile=args.compile,
        calibrate=args.calibrate,
        map_workers=args.map_workers,
    )
    return 0
