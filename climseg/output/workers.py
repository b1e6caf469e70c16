"""Worker processes that stop when the command stops, and the bound on how many a command starts.

:func:`worker_pool` runs a function over items in worker processes (``concurrent.futures``) and
yields a ``map``. When the command stops for any reason (an error, Ctrl-C, SIGTERM), the pool's
workers are ended and waited for *before* the command removes its temporaries, so no worker
goes on writing into a folder that is being cleaned up. The workers ignore SIGINT (Ctrl-C in a
terminal reaches every process of the group; the command alone decides), die at once on SIGTERM,
and are killed by the kernel when their command dies, even by ``kill -9`` (Linux's
``PR_SET_PDEATHSIG``). A worker that dies on its own (the system's out-of-memory killer) ends the
command with one line instead of a traceback.

:func:`check_workers`: ``--workers`` is a whole number from 1 to :data:`PER_CORE` per core of the
machine (at least 8), so that ``--workers 1000`` is refused instead of forking a thousand processes.
"""

import contextlib
import os
import signal

from climseg.errors import ConfigError, UserError

#: the most worker processes per core a command accepts (the bound is at least 8 on any machine)
PER_CORE = 4


def cores():
    """The cores this process may run on (its CPU affinity where the system says, else all)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_workers():
    """The most worker processes a command starts on this machine: :data:`PER_CORE` per core, at least 8."""
    return max(8, PER_CORE * cores())


def check_workers(workers, option="--workers"):
    """``workers`` itself when it is a whole number from 1 to :func:`max_workers`, else a one-line ConfigError."""
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise ConfigError(f"{option} {workers!r}: expected a whole number")
    if workers < 1:
        raise ConfigError(f"{option} {workers}: must be at least 1")
    limit = max_workers()
    if workers > limit:
        raise ConfigError(f"{option} {workers}: at most {limit} on this machine ({PER_CORE} per core, {cores()} cores)")
    return workers


@contextlib.contextmanager
def worker_pool(workers, jobs=None):
    """Yield a ``map(function, items)``: in ``min(workers, jobs)`` worker processes, or in this
    process when that is one. The results come in the order of the items; a worker's exception is
    raised here. Leaving the block by an exception or a signal ends the workers first."""
    count = workers if jobs is None else min(workers, jobs)
    if count <= 1:
        yield map
        return
    import concurrent.futures
    import multiprocessing

    before = set(multiprocessing.active_children())
    pool = concurrent.futures.ProcessPoolExecutor(count, initializer=_start_worker, initargs=(os.getpid(),))
    try:
        yield lambda function, items: _results(pool.map(function, items))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        _end(set(multiprocessing.active_children()) - before)
        raise
    pool.shutdown(wait=True)


def _results(results):
    from concurrent.futures.process import BrokenProcessPool

    try:
        yield from results
    except BrokenProcessPool:
        raise UserError(
            "a worker process ended unexpectedly (killed, e.g. by the system for lack of memory); "
            "rerun with fewer --workers"
        ) from None


def _end(processes):
    for p in processes:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in processes:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join()


def _start_worker(parent):
    """In each worker: Ctrl-C ignored, SIGTERM ends it at once, and it dies with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent still ends its workers when it can
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
