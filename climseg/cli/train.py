"""``climseg train``: the options generated from :class:`climseg.train.config.TrainConfig`, the
run (:func:`climseg.train.prepare`, then ``fit``) under training's signal handlers, and the IoU
table at the end.

Each TrainConfig field becomes ``--field-name`` with the help, choices and argument name of its
metadata and its default read from the dataclass; a boolean becomes the flag that turns its
default over (``--deterministic``, ``--no-channels-last``). Every option defaults to None here,
so that only what the user typed overrides a ``--config-file`` and a resumed checkpoint's
options (:func:`climseg.train.config.merge` checks the values). ``--config NAME`` and
``--config FILE.yaml`` are the old spellings of ``--network`` and ``--config-file``.
"""

import dataclasses
import os
import sys
import typing
import warnings

from climseg.errors import UserError

DESCRIPTION = (
    "Train DeepLabv3+ (or CGNet). Options override a --config-file, which overrides the options stored "
    "in a --resume checkpoint, which override the defaults (and a --recipe beneath them all). With no "
    "options: the tiny network on a small synthetic dataset, generated once into the cache."
)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "train",
        help="train a network (no arguments: the tiny network on synthetic data)",
        description=DESCRIPTION,
        add_options=add_options,
    )
    parser.set_defaults(run=run)
    return parser


def add_options(parser):
    """The options of every TrainConfig field, in sections, after --config-file (and the deprecated --config)."""
    from climseg.train.config import TrainConfig

    files = parser.add_argument_group("options from a file")
    files.add_argument(
        "--config-file",
        default=None,
        metavar="FILE",
        help="YAML or JSON file of further options "
        "(keys as the long options below, with dashes or underscores) (default: none)",
    )
    files.add_argument(
        "--config",
        dest="old_config",
        default=None,
        metavar="NAME|FILE",
        help="deprecated: --config NAME is now --network NAME, --config FILE.yaml is --config-file FILE.yaml",
    )
    defaults = TrainConfig()
    group = parser
    for field in dataclasses.fields(TrainConfig):
        if field.metadata["section"]:
            group = parser.add_argument_group(field.metadata["section"])
        add_option(group, field, getattr(defaults, field.name))


def add_option(group, field, default):
    """``--field-name`` for one TrainConfig field; its default shown in the help."""
    meta = field.metadata
    if isinstance(default, bool):
        flag = ("--no-" if default else "--") + field.name.replace("_", "-")
        group.add_argument(
            flag, dest=field.name, action="store_const", const=not default, default=None, help=meta["help"]
        )
        return
    metavar = meta["metavar"] or ("{" + ",".join(meta["choices"]) + "}" if meta["choices"] else None)
    group.add_argument(
        "--" + field.name.replace("_", "-"),
        dest=field.name,
        type=option_type(field),
        default=None,
        metavar=metavar,
        help=f"{meta['help']} (default: {shown_default(field, default)})",
    )


def option_type(field):
    """How argparse reads the option's argument: the field's int or float (optional or not) as such,
    anything else as the string typed (lists are split by :func:`climseg.train.config.merge`)."""
    kind = field.type
    if typing.get_origin(kind) is typing.Union:
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return kind if kind in (int, float) else str


def shown_default(field, default):
    """The default as ``--help`` shows it: the field's value, or what None (or nothing) means."""
    if default is None or default == []:
        return field.metadata["default_text"] or "none"
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def run(args):
    from climseg.cli.signals import install_stop_handlers, restore_handlers
    from climseg.train import TrainingStopped, prepare
    from climseg.train.config import TrainConfig

    options = {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainConfig)}
    config_file = args.config_file
    if args.old_config is not None:
        options["network"], config_file = old_config(args.old_config, options["network"], config_file)
    trainer = prepare(options, config_file)
    previous = install_stop_handlers(trainer)
    try:
        summary = trainer.fit()
    except TrainingStopped as stop:
        print(f"climseg: stopped; continue with: climseg train --resume {stop.checkpoint}", file=sys.stderr)
        return 130
    finally:
        restore_handlers(previous)
    if summary.get("stopped"):
        print(f"climseg: continue with: climseg train --resume {summary['checkpoint']}")
        return 0
    print_iou_table(summary, trainer)
    return 0


def old_config(value, network, config_file):
    """``(network, config_file)`` from the deprecated ``--config``: a .yaml/.yml/.json path (or any
    existing file) is the configuration file, anything else the network's name; with a warning."""
    if value.endswith((".yaml", ".yml", ".json")) or os.path.isfile(value):
        if config_file:
            raise UserError("give the configuration file once, with --config-file")
        warnings.warn(
            f"--config {value} is now --config-file {value}; the old spelling goes in a later release",
            FutureWarning,
            stacklevel=2,
        )
        return network, value
    if network is not None:
        raise UserError("give the network once, with --network")
    warnings.warn("--config is now --network; the old name goes in a later release", FutureWarning, stacklevel=2)
    return value, config_file


def print_iou_table(summary, trainer):
    """The validation IoU per class, the time taken, and what to run next."""
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
    print(
        f"Trained in {minutes:.1f} min. Checkpoint: {summary['checkpoint']}; metrics: "
        f"{os.path.join(summary['out'], 'metrics.jsonl')}"
    )
    print(f"Next: climseg predict {summary['checkpoint']} <files .h5/.nc> --out <folder>")
