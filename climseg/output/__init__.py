"""Safe output: every file climseg writes, the checks made before writing, and the processes that
write. Each command follows one discipline (docs/reliability.md):

1. :func:`check_output_location` before the expensive work: a path that is a file, lies under a
   file, or in a folder that cannot be written is refused with one line;
2. the folder's :class:`RunLock` for the whole run (one writer at a time; readers take it shared);
3. the whole set of files written as one :class:`OutputBatch` (all or nothing, the earlier run
   of the command replaced as a whole, what killed runs left removed or finished);
4. temporaries removed on any error or signal, in the command and in its :func:`worker_pool`.

The modules: :mod:`climseg.output.files` (single atomic files and folders with the user's umask,
one-line write errors, the output check), :mod:`climseg.output.lock` (the run lock),
:mod:`climseg.output.batch` (batches, manifests, stale scratch) and
:mod:`climseg.output.workers` (worker processes that stop with the command, the ``--workers``
bound). Everything public is imported here: ``from climseg.output import atomic_path``.
"""

from climseg.output.batch import OutputBatch, check_complete, remove_stale_scratch
from climseg.output.files import (
    append_line,
    atomic_directory,
    atomic_path,
    check_output_location,
    current_umask,
    deferred_signals,
    makedirs,
    output_error,
    write_json,
)
from climseg.output.lock import LOCK_NAME, RunLock
from climseg.output.workers import check_workers, max_workers, worker_pool

__all__ = [
    "LOCK_NAME",
    "OutputBatch",
    "RunLock",
    "append_line",
    "atomic_directory",
    "atomic_path",
    "check_complete",
    "check_output_location",
    "check_workers",
    "current_umask",
    "deferred_signals",
    "makedirs",
    "max_workers",
    "output_error",
    "remove_stale_scratch",
    "worker_pool",
    "write_json",
]
