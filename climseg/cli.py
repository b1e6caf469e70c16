"""The ``climseg`` command: ``train``, ``predict``, ``generate``, ``stage``, ``label``, ``track``, ``analyze``,
``convert``, ``bench``, ``info``.

A user error (bad file, bad shape, bad option, an output path that cannot be
written, a full disk) prints one line, ``climseg: error: ...``, and exits with
status 2; so does a bad command line (no usage dump: ``--help`` shows it). An
interrupted training run (Ctrl-C, SIGTERM) finishes its step, writes a
checkpoint and exits with status 130; a second signal aborts at once (the
checkpoint on disk stays the last complete one). Every other command ends on
SIGINT or SIGTERM at once, its temporary files removed, with status 130
(SIGINT) or 143 (SIGTERM).
"""
import argparse
import errno
import os
import shlex
import signal
import sys

from climseg.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (no usage dump) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and atomic writer cleans up."""

TRAIN_OPTIONS = [
    # (flag, field, type, help)
    ("--data", "data", str, "dataset folder with train/, validation/ and stats.h5 (DeepCAM layout), or train/ and "
     "validation/ or test/ of netCDF files with LABELS (ClimateNet layout, optional config.json); "
     "default: a small synthetic dataset, generated once into the cache"),
    ("--config", "config", str, "model configuration: kurth2018, deepcam, tiny or cgnet (default tiny); "
     "a .yaml/.yml/.json file here is read as --config-file"),
    ("--config-file", None, str, "YAML or JSON file of further options (keys as the long options below)"),
    ("--epochs", "epochs", int, "number of epochs (default 6)"),
    ("--batch-size", "batch_size", int, "samples per optimizer step (default 8)"),
    ("--precision", "precision", str, "auto, fp32, bf16 or fp16 (default auto: bf16 or fp16 on CUDA, fp32 on CPU)"),
    ("--device", "device", str, "auto, cpu, cuda or cuda:N (default auto)"),
    ("--out", "out", str, "run folder for checkpoints and metrics.jsonl (default runs/<config>-<date>-<time>)"),
    ("--resume", "resume", str, "checkpoint (or run folder) to continue exactly where it stopped"),
    ("--optimizer", "optimizer", str, "adam, adamw, lamb or larc-adam (LARC on Adam, as SC18; default adamw)"),
    ("--lr", "lr", float, "peak learning rate (default 2e-3)"),
    ("--weight-decay", "weight_decay", float, "weight decay (default 1e-4)"),
    ("--lr-schedule", "lr_schedule", str, "cosine, multistep or constant, after warmup (default cosine)"),
    ("--warmup-steps", "warmup_steps", int, "linear warmup steps (default 30)"),
    ("--milestones", "milestones", str, "multistep: comma-separated steps where the rate is multiplied by --lr-decay"),
    ("--lr-decay", "lr_decay", float, "multistep decay factor (default 0.1)"),
    ("--clip-grad-norm", "clip_grad_norm", float, "clip the gradient norm to this value (default 0: off)"),
    ("--loss-weights", "loss_weights", str, "class weights: kurth2018 (f^-1/2), deepcam (f^-1/8) or uniform (default deepcam)"),
    ("--loss", "loss", str, "ce (weighted cross-entropy), jaccard (ClimateNet's soft IoU loss) or ce+jaccard "
     "(their sum); default ce"),
    ("--init-weights", "init_weights", str, "FORMAT:PATH of starting weights, e.g. climatenet:weights.pth "
     "(with --config cgnet)"),
    ("--class-frequencies", "class_frequencies", str, "frequencies the weights come from: dataset (stats.h5) or deepcam"),
    ("--gradient-lag", "gradient_lag", int, "1: apply each step's averaged gradient one step later, overlapping its "
     "allreduce with the next step (default 0)"),
    ("--allreduce", "allreduce", str, "auto, hierarchical or flat gradient allreduce across processes "
     "(default auto: hierarchical on several nodes)"),
    ("--compression", "compression", str, "none, bf16 or fp16 gradients on the wire, summed in fp32 (default none)"),
    ("--bucket-mb", "bucket_mb", float, "gradient bucket size in MiB (default 25)"),
    ("--channels", "channels", str, "comma-separated channel names (default: all 16)"),
    ("--normalization", "normalization", str, "minmax or zscore (default minmax)"),
    ("--norm", "norm", str, "batch or none: the network's normalisation layers (default batch)"),
    ("--loader", "loader", str, "fast (FastLoader: C++ reader threads) or torch (DataLoader over DeepCAMDataset); "
     "default fast"),
    ("--workers", "workers", int, "reader threads of the fast loader (default: the cores) or DataLoader processes "
     "of the torch loader (default 0 on CPU, up to 8 on CUDA)"),
    ("--on-bad-sample", "on_bad_sample", str, "error (stop, naming the file) or skip (leave it out, log it, count it); "
     "default error"),
    ("--batchnorm-group-size", "batchnorm_group_size", int, "ranks sharing batch-norm statistics: groups of G "
     "consecutive ranks (default 1: each rank its own; ranks per node: within nodes; world size: all)"),
    ("--bn-stats-sync", "bn_stats_sync", str, "epoch (average the running statistics over ranks at each epoch's end, "
     "before validation and checkpoints; default) or none (rank 0's)"),
    ("--accumulate", "accumulate", int, "micro-batches of --batch-size whose gradients make one step (default 1)"),
    ("--adam-eps", "adam_eps", float, "epsilon of Adam, AdamW, LAMB and LARC-Adam (default: theirs, 1e-8 and LAMB 1e-6)"),
    ("--recipe", "recipe", str, "hyperparameter set beneath the other options: mlperf-deepcam or sc18-kurth2018"),
    ("--target-iou", "target_iou", float, "stop when the validation DeepCAM IoU reaches this; time to target in "
     "metrics.jsonl and the MLPerf log (default 0: off)"),
    ("--mlperf-log", "mlperf_log", str, "write an MLPerf HPC :::MLLOG log to this file (rank 0)"),
    ("--mlperf-org", "mlperf_org", str, "MLPerf submission_org (default climseg)"),
    ("--mlperf-platform", "mlperf_platform", str, "MLPerf submission_platform (default: the device name)"),
    ("--mlperf-division", "mlperf_division", str, "MLPerf submission_division: open or closed (default open)"),
    ("--mlperf-status", "mlperf_status", str, "MLPerf submission_status: cloud, onprem, preview or research "
     "(default research)"),
    ("--seed", "seed", int, "random seed for weights and data order (default 0)"),
    ("--checkpoint-every", "checkpoint_every", int, "also write last.pt every N steps (default 0: each epoch)"),
    ("--max-steps", "max_steps", int, "stop with a checkpoint at this global step (default 0: no limit)"),
    ("--validate-every", "validate_every", int, "epochs between validations (default 1)"),
]
FLAGS = [
    ("--deterministic", "deterministic", True, "use deterministic algorithms only"),
    ("--no-channels-last", "channels_last", False, "keep tensors in NCHW instead of channels-last"),
    ("--no-progress", "progress", False, "no progress bars"),
]


def build_parser():
    parser = _Parser(prog="climseg", description="DeepLabv3+ segmentation of tropical cyclones "
                                     "and atmospheric rivers in climate data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="train a network (no arguments: the tiny network on synthetic data)",
                       description="Train DeepLabv3+. Options override a --config-file, which overrides the "
                       "options stored in a --resume checkpoint, which override the defaults.")
    for flag, field, typ, text in TRAIN_OPTIONS:
        p.add_argument(flag, dest=field or flag[2:].replace("-", "_"), type=typ, default=None, help=text)
    for flag, field, value, text in FLAGS:
        p.add_argument(flag, dest=field, action="store_const", const=value, default=None, help=text)

    p = sub.add_parser("predict", help="segment climate files with a trained checkpoint",
                       description="Write class masks, one PNG map per time step and summary.json. Under "
                       "mpirun/srun/torchrun each rank segments a share of the inputs and rank 0 writes the merged "
                       "summary.json.")
    p.add_argument("checkpoint", help="checkpoint file (or run folder holding last.pt), or climatenet:WEIGHTS.pth "
                   "(ClimateNet weights with config.json beside them)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DeepCAM HDF5 samples or CAM5-style netCDF files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--no-maps", action="store_true", help="skip the PNG maps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _variable_options(p)

    p = sub.add_parser("generate", help="write a synthetic CAM5-like dataset (DeepCAM layout) or time series (netCDF)",
                       description="Write OUT/train/*.h5, OUT/validation/*.h5 and OUT/stats.h5; with --timesteps, "
                       "a time series of CAM5-like history files instead (one netCDF file per model day, "
                       "with LABELS, TRUE_EVENT_ID, true_events.csv and true_tracks.csv).")
    p.add_argument("out", help="output folder (must not exist, or be empty)")
    p.add_argument("--samples", type=int, default=16, help="total number of samples (default 16)")
    p.add_argument("--height", type=int, default=768, help="grid rows, a multiple of 16 (default 768)")
    p.add_argument("--width", type=int, default=1152, help="grid columns, a multiple of 16 (default 1152)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--validation-fraction", type=float, default=0.125, help="share of samples held out (default 0.125)")
    p.add_argument("--cyclones", type=float, default=None, help="mean number of tropical cyclones per sample (default 3)")
    p.add_argument("--rivers", type=float, default=None, help="mean number of atmospheric rivers per sample (default 4)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: cores, at most 8)")
    p.add_argument("--timesteps", type=int, default=None, help="write a time series of this many steps instead "
                   "of independent samples")
    p.add_argument("--interval", default="3h", help="time series: time between steps, e.g. 3h, 6h, 90min (default 3h)")
    p.add_argument("--format", default=None, choices=("hdf5", "netcdf"), help="hdf5 (samples; default) or netcdf "
                   "(time series; default with --timesteps)")
    p.add_argument("--case", default="climseg", help="time series: case name in the file names (default climseg)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("track", help="track cyclones and rivers through time in class masks",
                       description="Connected components per class and step (8-connected, joined across the date "
                       "line on global grids), stitched through time by overlap. Writes NAME_event_id.nc per input, "
                       "events.csv, tracks.csv (and .parquet with pyarrow), occupancy.nc and track.json into --out.")
    p.add_argument("masks", nargs="+", metavar="MASK", help="netCDF class masks with a time axis, in time order: "
                   "climseg predict's NAME_mask.nc, data files with LABELS, or any CF class mask (--variable)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--variable", default=None, help="mask variable (default: mask, else LABELS)")
    p.add_argument("--like", default=None, choices=("climatenet",), help="preset: climatenet = ClimateNet's "
                   "track_events values (250-pixel thresholds, look-ahead 1, at least 5 steps)")
    p.add_argument("--tc-min-size", default=None, help="smallest cyclone kept, e.g. 250px or 5000km2 (default 5000km2)")
    p.add_argument("--ar-min-size", default=None, help="smallest river kept, e.g. 250px or 50000km2 (default 50000km2)")
    p.add_argument("--look-ahead", type=int, default=None, help="steps ahead an overlap links objects (default 1)")
    p.add_argument("--min-steps", type=int, default=None, help="fewest steps an event must be seen on (default 2)")
    p.add_argument("--workers", type=int, default=1, help="processes over chunks of time (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("label", help="heuristic cyclone and river masks from the physical fields (TECA-like)",
                       description="Label tropical cyclones (1) and atmospheric rivers (2) in CF netCDF files (any "
                       "variable convention; the files are merged into one series on time and grid) or DeepCAM "
                       "HDF5 samples, by the physical criteria of docs/labelling.md. Writes NAME_mask.nc (or .h5) "
                       "per file of the series' time axis, in the format of climseg predict, and summary.json.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="netCDF files, glob patterns or folders (one series), "
                   "or DeepCAM HDF5 samples")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", default="tc+ar", choices=("tc+ar", "tc", "ar"), help="classes to label (default tc+ar)")
    for flag, field, typ, text in LABEL_OPTIONS:
        p.add_argument(flag, dest=field, type=typ, default=None, help=text)
    p.add_argument("--workers", type=int, default=1, help="processes, one file at a time each (default 1)")
    p.add_argument("--dataset", default=None, metavar="DIR", help="also write the steps and their labels as a "
                   "DeepCAM training set (train/, validation/, stats.h5) for climseg train --data DIR")
    p.add_argument("--validation-fraction", type=float, default=0.125, help="--dataset: share of the steps, the "
                   "last ones, held out for validation (default 0.125)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _variable_options(p)

    p = sub.add_parser("analyze", help="statistics and climatology maps of tracked events",
                       description="Frequency and genesis-density maps (netCDF and PNG with coastlines), histograms "
                       "of lifetime, travel distance and speed, events per month, summary.json.")
    p.add_argument("events", help="a climseg track output folder (or its events.csv)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-maps", action="store_true", help="numbers only (climatology.nc, summary.json)")

    p = sub.add_parser("stage", help="copy a dataset to node-local storage (in parallel under MPI)",
                       description="Copy SRC (a dataset folder) to DST, reading every source file once in all: "
                       "under mpirun each rank reads its part and sends it over MPI to the nodes that need it. "
                       "Files are verified (size, CRC-32); a rerun skips what is already staged and unchanged (the "
                       "source's size and modification time, the copy's size and modification time), and copies "
                       "again what changed. DST may contain {node} for per-node paths.")
    p.add_argument("src", help="dataset folder (train/, validation/, stats.h5) or a folder of samples")
    p.add_argument("dst", help="node-local destination, e.g. /dev/shm/deepcam or /local/{node}")
    p.add_argument("--shard-by", default="node", choices=("node", "rank"),
                   help="give each node (default) or each rank its own share of the training files")
    p.add_argument("--replicate", type=int, default=1, help="copies of each training file on distinct nodes (default 1)")
    p.add_argument("--threads", type=int, default=None, help="copy threads without MPI (default: cores, at most 8)")
    p.add_argument("--verify", action="store_true", help="re-read every staged copy against its recorded CRC-32 and "
                   "copy again what differs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("bench", help="benchmarks with one output format (JSON + markdown)",
                       description="Run a benchmark: step (training step; on CUDA ours against the same model on "
                       "plain PyTorch), atrous (Triton convolutions against cuDNN; GPU), cuda-kernels (the CUDA kernels "
                       "against copy bandwidth and unfused PyTorch; GPU), allreduce "
                       "(flat against hierarchical), io (FastLoader against a reference-style reader), scaling (the "
                       "weak-scaling model; model output), static (every GPU kernel compiled for sm_80/sm_90 and its machine code "
                       "checked; no GPU needed), track (event tracking and analysis of a year of masks), or all. Options after "
                       "the name that are not listed here "
                       "go to the benchmark itself (see python -m climseg.bench.<name> --help).")
    p.add_argument("what", choices=BENCHES + ("all",))
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (step)")
    p.add_argument("--config", default=None, help="network configuration(s), comma-separated (step; default tiny on "
                   "CPU, kurth2018,deepcam on CUDA)")
    p.add_argument("--preset", default="summit-kurth2018", help="scaling preset (summit-kurth2018, h100-kurth2018)")
    p.add_argument("--json", default=None, help="result file (a folder for all); default benchmarks/results/ in a "
                   "source tree, else ./climseg-bench-results/")

    p = sub.add_parser("convert", help="import or export checkpoints in other projects' layouts",
                       description="climseg convert --from FORMAT SOURCE OUT imports another project's weights as a "
                       "climseg checkpoint OUT (that predict, train --init-weights and train --resume read); "
                       "--to FORMAT CHECKPOINT OUT writes a climseg checkpoint in that layout. Formats: climatenet "
                       "(ClimateNet's weights.pth with the config.json beside it; import), mlperf-deepcam (the MLPerf "
                       "HPC DeepCAM reference's checkpoint or bare state_dict; import and export).")
    p.add_argument("source", help="weights file to import (--from) or climseg checkpoint to export (--to)")
    p.add_argument("out", help="file to write")
    p.add_argument("--from", dest="from_format", default=None, help="format of SOURCE: climatenet or mlperf-deepcam")
    p.add_argument("--to", dest="to_format", default=None, help="format of OUT: mlperf-deepcam")
    p.add_argument("--climatenet-config", default=None, help="ClimateNet config.json (default: beside the weights)")
    p.add_argument("--stats", default=None, help="--from mlperf-deepcam: the dataset's stats.h5 (the input "
                   "normalisation, which the reference's checkpoint does not hold)")
    p.add_argument("--normalization", default=None, help="--from mlperf-deepcam: minmax (the MLPerf "
                   "reference's; default) or zscore")

    sub.add_parser("info", help="versions, devices, and which backend each op uses")

    return parser


LABEL_OPTIONS = [
    # (flag, LabelOptions field, type, help); defaults and sources in docs/labelling.md
    ("--tc-vorticity", "tc_vorticity", float, "850 hPa cyclonic vorticity, s-1 (default 3.5e-5)"),
    ("--tc-warm-core", "tc_warm_core", float, "upper-level warm anomaly, K (default 0.8)"),
    ("--tc-pressure-rise", "tc_pressure_rise", float, "PSL rise within --tc-environment-km, Pa (default 400)"),
    ("--tc-wind", "tc_wind", float, "low-level wind, m s-1 (default 17)"),
    ("--tc-core-km", "tc_core_km", float, "vorticity and warm-core search radius, km (default 222: 2 deg)"),
    ("--tc-environment-km", "tc_environment_km", float, "closed-depression and warm-core surroundings radius, km "
     "(default 556: 5 deg)"),
    ("--tc-mask-km", "tc_mask_km", float, "largest extent of a storm mask, km (default 500)"),
    ("--tc-max-lat", "tc_max_lat", float, "storm centres equatorward of this latitude (default 45)"),
    ("--tc-min-hours", "tc_min_hours", float, "shortest storm track kept, hours (default 24)"),
    ("--ar-field", "ar_field", str, "auto, ivt, proxy (TMQ x |V850|) or tmq (default auto)"),
    ("--ar-threshold", "ar_threshold", float, "absolute river threshold (default 250 kg m-1 s-1; TMQ: 20 kg m-2)"),
    ("--ar-percentile", "ar_percentile", float, "also require this local percentile, e.g. 85 (default off)"),
    ("--ar-climatology", "ar_climatology", str, "percentile over the series at each cell (series) or over each "
     "step's latitude circle (zonal); default series"),
    ("--ar-min-length-km", "ar_min_length_km", float, "shortest river, km (default 2000)"),
    ("--ar-min-aspect", "ar_min_aspect", float, "smallest length/width (default 2)"),
    ("--ar-max-width-km", "ar_max_width_km", float, "widest river, km (default 1000)"),
    ("--ar-min-poleward", "ar_min_poleward", float, "object-mean poleward transport, kg m-1 s-1 (default 50)"),
]


def _variable_options(p):
    """--convention and --variables: how netCDF variable names map to the channels."""
    p.add_argument("--convention", default="auto", choices=("auto", "CAM5", "ERA5", "CMIP6", "cam5", "era5", "cmip6"),
                   help="netCDF variable names: CAM5, ERA5 or CMIP6 (default auto: the first that has every channel)")
    p.add_argument("--variables", default=None, metavar="FILE", help="YAML/JSON mapping of channel -> variable "
                   "(name, level, units) for any other naming; may extend a preset with 'convention: ERA5'")


BENCHES = ("step", "atrous", "cuda-kernels", "allreduce", "io", "scaling", "static", "track", "label")


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    args.argv = list(sys.argv[1:] if argv is None else argv)
    previous = _install_terminate_handler()
    try:
        commands = {"train": cmd_train, "predict": cmd_predict, "generate": cmd_generate, "stage": cmd_stage,
                    "bench": cmd_bench, "info": cmd_info, "track": cmd_track, "analyze": cmd_analyze,
                    "label": cmd_label, "convert": cmd_convert}
        return commands[args.command](args)
    except UserError as exc:
        print(f"climseg: error: {_rank_prefix()}{exc}", file=sys.stderr)
        _end_job_if_distributed(2)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"climseg: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        sys.stderr.close()
        return 0
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        # a write that did not go through climseg.output (a library writing on its own): still one line
        from climseg.output import output_error

        print(f"climseg: error: {_rank_prefix()}{output_error(exc.filename or '?', exc)}", file=sys.stderr)
        _end_job_if_distributed(2)
        return 2
    except Exception:
        # in a multi-process job one failing rank must take the others down, not leave them waiting
        if _distributed_job():
            import traceback

            traceback.print_exc()
            _end_job_if_distributed(1)
        raise
    finally:
        _restore_handlers(previous)


# errors of writing that are the user's to fix (disk, mount, permissions), not a bug
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                errno.EEXIST, errno.EFBIG}


def _install_terminate_handler():
    """SIGTERM raises :class:`Terminated` in the main thread (a command's own handlers may replace it)."""
    def handler(signum, frame):
        raise Terminated()

    try:
        return {signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}
    except ValueError:   # not the main thread (main() called from a thread)
        return {}


def _restore_handlers(previous):
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _distributed_job():
    from climseg.distributed.launch import detect_launcher

    return detect_launcher().world_size > 1


def _rank_prefix():
    from climseg.distributed.launch import detect_launcher, topology

    if not _distributed_job():
        return ""
    topo = topology()
    return f"rank {topo.rank if topo is not None else detect_launcher().rank}: "


def _end_job_if_distributed(code):
    """Abort the whole job (MPI_Abort, or exit at once so the launcher stops the rest)."""
    if _distributed_job():
        from climseg.distributed.launch import abort

        abort(code)


def cmd_train(args):
    from climseg.train import TrainingStopped, prepare

    options = {field: getattr(args, field) for _, field, _, _ in TRAIN_OPTIONS if field}
    options.update({field: getattr(args, field) for _, field, _, _ in FLAGS})
    config_file = args.config_file
    if options.get("config") and (options["config"].endswith((".yaml", ".yml", ".json")) or os.path.isfile(options["config"])):
        if config_file:
            raise UserError("give the configuration file once, with --config-file")
        config_file, options["config"] = options["config"], None
    trainer = prepare(options, config_file)
    previous = _install_stop_handlers(trainer)
    try:
        summary = trainer.fit()
    except TrainingStopped as stop:
        print(f"climseg: stopped; continue with: climseg train --resume {stop.checkpoint}", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if summary.get("stopped"):
        print(f"climseg: continue with: climseg train --resume {summary['checkpoint']}")
        return 0
    _print_iou_table(summary, trainer)
    return 0


def _install_stop_handlers(trainer):
    """First SIGINT/SIGTERM: finish the step, checkpoint, stop. A second one: stop at once."""
    previous = {}

    def handler(signum, frame):
        if trainer.stop_requested:    # the second signal, SIGINT or SIGTERM: abort now
            signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        print("\nclimseg: stopping after this step (again to abort)...", file=sys.stderr)
        trainer.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def _print_iou_table(summary, trainer):
    val = summary.get("validation") or {}
    shape = trainer.val_set.shape

    def fmt(x):
        return "  n/a" if x is None or x != x else f"{x:.3f}"

    print(f"\nValidation on {len(trainer.val_set)} held-out samples ({shape[0]}x{shape[1]}), dataset-level IoU:")
    print(f"  background          {fmt(val.get('iou_background'))}")
    print(f"  tropical cyclone    {fmt(val.get('iou_tc'))}")
    print(f"  atmospheric river   {fmt(val.get('iou_ar'))}")
    print(f"  mean                {fmt(val.get('mean_iou'))}    (DeepCAM score {fmt(val.get('deepcam_iou'))})")
    minutes = summary["seconds"] / 60.0
    print(f"Trained in {minutes:.1f} min. Checkpoint: {summary['checkpoint']}; metrics: "
          f"{os.path.join(summary['out'], 'metrics.jsonl')}")
    print(f"Next: climseg predict {summary['checkpoint']} <files .h5/.nc> --out <folder>")


def cmd_predict(args):
    from climseg.predict import predict

    predict(args.checkpoint, args.inputs, args.out, device=args.device, maps=not args.no_maps,
            progress=not args.no_progress, convention=args.convention, variables=args.variables)
    return 0


def cmd_generate(args):
    from climseg.data.synthetic import generate_dataset

    if args.timesteps is not None or args.format == "netcdf":
        return _generate_timeseries(args)

    features = _features(args)
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    s = generate_dataset(args.out, args.samples, args.height, args.width, args.seed, args.validation_fraction,
                         workers=args.workers, progress=not args.no_progress, features=features)
    f = s["class_frequencies"]
    print(f"climseg: wrote {s['train']} training and {s['validation']} validation samples of "
          f"{s['height']}x{s['width']} to {args.out} ({s['cyclones']} cyclones, {s['rivers']} rivers; pixels: "
          f"background {100 * f['background']:.2f}%, TC {100 * f['tropical_cyclone']:.2f}%, "
          f"AR {100 * f['atmospheric_river']:.2f}%)")
    return 0


def _features(args):
    import dataclasses

    from climseg.data.synthetic import Features

    overrides = {}
    if args.cyclones is not None:
        overrides["cyclones_mean"] = args.cyclones
    if args.rivers is not None:
        overrides["rivers_mean"] = args.rivers
    for name, value in overrides.items():
        if value < 0:
            raise UserError(f"--{name.split('_')[0]} must not be negative")
    return dataclasses.replace(Features(), **overrides)


def _generate_timeseries(args):
    from climseg.data.timeseries import generate_timeseries, parse_interval

    if args.timesteps is None:
        raise UserError("--format netcdf writes a time series: give --timesteps")
    if args.format == "hdf5":
        raise UserError("--timesteps writes netCDF history files; --format hdf5 is for independent samples")
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    s = generate_timeseries(args.out, args.timesteps, parse_interval(args.interval), args.height, args.width,
                            args.seed, workers=args.workers, progress=not args.no_progress, features=_features(args),
                            case=args.case)
    print(f"climseg: wrote {s['timesteps']} steps every {s['interval_hours']:g} h of {s['height']}x{s['width']} in "
          f"{len(s['files'])} daily files to {args.out} ({s['cyclones']} cyclones, {s['rivers']} rivers; truth in "
          f"true_events.csv, true_tracks.csv)")
    return 0


def cmd_track(args):
    from climseg.analytics.track import CLIMATENET, TrackOptions, parse_size, track

    options = TrackOptions()
    if args.like == "climatenet":
        options = TrackOptions(min_size=dict(CLIMATENET["min_size"]), look_ahead=CLIMATENET["look_ahead"],
                               min_steps=CLIMATENET["min_steps"])
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


def cmd_label(args):
    from climseg.analytics.label import LabelOptions, label

    options = LabelOptions(method=args.method)
    for _, field, _, _ in LABEL_OPTIONS:
        if getattr(args, field) is not None:
            setattr(options, field, getattr(args, field))
    label(args.inputs, args.out, options, convention=args.convention, variables=args.variables,
          workers=args.workers, progress=not args.no_progress, dataset=args.dataset,
          validation_fraction=args.validation_fraction)
    return 0


def cmd_analyze(args):
    from climseg.analytics.analyze import analyze

    analyze(args.events, args.out, maps=not args.no_maps)
    return 0


def cmd_stage(args):
    from climseg.data.staging import stage

    if args.replicate < 1:
        raise UserError(f"--replicate must be at least 1, got {args.replicate}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    stage(args.src, args.dst, args.shard_by, args.replicate, args.threads, progress=not args.no_progress,
          verify=args.verify)
    return 0


def cmd_bench(args):
    import importlib

    import torch

    gpu_only = () if torch.cuda.is_available() else ("cuda-kernels",)   # all: the GPU-only one where it can run
    names = [b for b in BENCHES if b not in gpu_only] if args.what == "all" else [args.what]
    status = 0
    for name in names:
        out = args.json
        if args.what == "all" and out is not None:
            os.makedirs(out, exist_ok=True)
            out = os.path.join(out, f"{name}.json")
        argv = [a for a in args.extra if a != "--"]
        if name == "step":
            gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
            argv = ["--device", args.device, "--configs", args.config or ("kurth2018,deepcam" if gpu else "tiny")] + argv
        elif name == "scaling":
            argv = ["--preset", args.preset] + argv
        elif name == "allreduce" and not any(a.startswith("--procs") for a in argv):
            argv = ["--procs", "4", "--local-size", "2"] + argv      # two simulated nodes of two ranks
        if out is not None:
            argv += ["--json", out]
        os.environ["CLIMSEG_BENCH_COMMAND"] = "climseg " + " ".join(shlex.quote(a) for a in args.argv)
        try:
            status = importlib.import_module(f"climseg.bench.{name.replace('-', '_')}").main(argv) or status
        finally:
            os.environ.pop("CLIMSEG_BENCH_COMMAND", None)
    return status


def cmd_convert(args):
    from climseg.data.checkpoints import convert_checkpoint

    print(f"climseg: {convert_checkpoint(args.source, args.out, args.from_format, args.to_format, config=args.climatenet_config, stats=args.stats, normalization=args.normalization)}")
    return 0


def cmd_info(args):
    from climseg.info import info_lines

    for line in info_lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
