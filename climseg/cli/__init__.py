"""The ``climseg`` command: ``train``, ``predict``, ``generate``, ``stage``, ``label``, ``track``,
``analyze``, ``convert``, ``bench``, ``info``.

A command line flows: ``main`` (:mod:`climseg.cli.entry`) builds the parser from one module per
command, each with ``add_parser(subparsers)`` and ``run(args)``; ``run`` translates the
arguments into one call of the library (which checks them, so that the Python API gets the
same one-line errors) and prints what the user reads.

A user error (bad file, bad shape, bad option, an output path that cannot be written, a full
disk) prints one line, ``climseg: error: ...``, and exits with status 2; so does a bad command
line (no usage dump: ``--help`` shows it). An interrupted training run (Ctrl-C, SIGTERM)
finishes its step, writes a checkpoint and exits with status 130; a second signal aborts at
once (the checkpoint on disk stays the last complete one). Every other command ends on SIGINT or
SIGTERM at once, its temporary files removed, with status 130 (SIGINT) or 143 (SIGTERM)
(:mod:`climseg.cli.signals`).
"""

from climseg.cli.entry import main

__all__ = ["main"]
