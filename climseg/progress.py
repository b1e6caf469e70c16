"""Progress bars (tqdm) on terminals only (a job log gets the one-line
summaries instead), cleared when the work they show fails so that an error
message stands alone on its line."""

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(**kwargs):
    """``tqdm(**kwargs)`` as a context manager; on an exception the bar is removed."""
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        kwargs["disable"] = True
    bar = tqdm(**kwargs)
    try:
        yield bar
    except BaseException:
        bar.leave = False
        bar.close()
        raise
    bar.close()
