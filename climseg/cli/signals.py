"""Signals of the ``climseg`` command: SIGTERM raised like Ctrl-C, and training's graceful stop.

Every command: SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread,
so that every ``finally`` and atomic writer cleans up as on Ctrl-C; the entry point turns it
into exit status 143 (130 for Ctrl-C). Training: the first SIGINT or SIGTERM asks the trainer
to finish its step, write a checkpoint and stop; a second one aborts at once.
"""

import signal
import sys


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and atomic writer cleans up."""


def install_terminate_handler():
    """SIGTERM raises :class:`Terminated` in the main thread (a command's own handlers may replace it).
    Returns the handlers it replaced, for :func:`restore_handlers`."""

    def handler(signum, frame):
        raise Terminated()

    try:
        return {signal.SIGTERM: signal.signal(signal.SIGTERM, handler)}
    except ValueError:  # not the main thread (main() called from a thread)
        return {}


def install_stop_handlers(trainer):
    """First SIGINT/SIGTERM: ``trainer.request_stop()`` (finish the step, checkpoint, stop). A second
    one: raise ``KeyboardInterrupt`` or :class:`Terminated` at once. Returns the replaced handlers."""
    previous = {}

    def handler(signum, frame):
        if trainer.stop_requested:  # the second signal, SIGINT or SIGTERM: abort now
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


def restore_handlers(previous):
    """Put back the handlers an ``install_*`` function returned."""
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
