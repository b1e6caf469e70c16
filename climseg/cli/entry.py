"""The ``climseg`` entry point: the parser built from the command modules, the dispatch, and
the exit statuses.

``main(argv)`` parses the command line (each command module adds its own subparser and
``run``), installs the SIGTERM handler (:mod:`climseg.cli.signals`), runs the command and maps
what it raises to an exit status:

=====================================================  ==========================================
a :class:`~climseg.errors.UserError`, or an error of   one line ``climseg: error: ...``, status 2
writing that is the user's to fix (full disk, ...)
a bad command line                                     one line, status 2 (``--help`` shows usage)
Ctrl-C / SIGTERM                                       ``climseg: interrupted`` 130 / ``terminated`` 143
output piped into a command that closed early          status 0
any other exception                                    a traceback, status 1
=====================================================  ==========================================

In a multi-process job (mpirun, srun, torchrun) the error line names the rank, and a failing rank
takes the whole job down instead of leaving the others waiting. Deprecation notices of climseg
(``FutureWarning``) print as one line, ``climseg: warning: ...``.
"""

import argparse
import errno
import os
import sys
import warnings

from climseg.cli import analyze, bench, convert, generate, info, label, predict, stage, track, train
from climseg.cli.signals import Terminated, install_terminate_handler, restore_handlers
from climseg.errors import UserError

#: The command modules, in the order ``climseg --help`` lists them.
COMMANDS = (train, predict, generate, stage, label, track, analyze, convert, bench, info)

#: Errors of writing that are the user's to fix (disk, mount, permissions), not a bug.
WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.EFBIG,
}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (no usage dump) and exit status 2.

    ``add_options``: a function that adds further arguments when the parser is first used (to
    parse or to print help), so that building every command's parser stays light."""

    def __init__(self, *args, add_options=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_options = add_options

    def complete(self):
        if self.add_options is not None:
            add, self.add_options = self.add_options, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self.complete()
        return super().parse_known_args(args, namespace)

    def format_help(self):
        self.complete()
        return super().format_help()

    def format_usage(self):
        self.complete()
        return super().format_usage()

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    """The ``climseg`` parser: one subparser per module of :data:`COMMANDS`."""
    from climseg import __version__

    parser = Parser(
        prog="climseg",
        description="DeepLabv3+ segmentation of tropical cyclones and atmospheric "
        "rivers in climate data, and the events, tracks and climatologies of its masks.",
    )
    parser.add_argument("--version", action="version", version=f"climseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subparsers.required = True
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv=None):
    """Run ``climseg`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    args.argv = list(sys.argv[1:] if argv is None else argv)
    previous = install_terminate_handler()
    show_warning = warnings.showwarning
    warnings.showwarning = _one_line_warnings(show_warning)
    try:
        return args.run(args)
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
        warnings.showwarning = show_warning
        restore_handlers(previous)


def _one_line_warnings(show_warning):
    """climseg's own ``FutureWarning`` (a renamed option) as ``climseg: warning: ...``; others as Python shows them."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FutureWarning) and os.path.abspath(filename).startswith(package + os.sep):
            print(f"climseg: warning: {message}", file=sys.stderr if file is None else file)
        else:
            show_warning(message, category, filename, lineno, file, line)

    return show


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
