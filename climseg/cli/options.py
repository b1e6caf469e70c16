"""Options that several commands share, written once: how netCDF variable names map to the
channels (``predict``, ``label``), ``--no-progress``, and the value of ``--batch-size``."""

import argparse


def add_variable_options(parser):
    """``--convention`` and ``--variables``: how netCDF variable names map to the channels
    (checked by :func:`climseg.data.variables.conventions_for`)."""
    parser.add_argument(
        "--convention",
        default="auto",
        metavar="{auto,CAM5,ERA5,CMIP6}",
        help="netCDF variable names, in any case (default: auto, the first that has every channel)",
    )
    parser.add_argument(
        "--variables",
        default=None,
        metavar="FILE",
        help="YAML/JSON mapping of channel -> variable "
        "(name, level, units) for any other naming; may extend a preset with 'convention: ERA5' "
        "(default: none)",
    )


def add_progress_option(parser):
    """``--no-progress``: the command's progress bar off (bars appear on terminals only)."""
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def batch_size_arg(text):
    """``--batch-size``'s value: ``"auto"`` or a whole number (its range is checked with the other options)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto or a whole number") from None
