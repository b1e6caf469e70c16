"""The climseg cache folder: where climseg keeps what it makes once and reuses (the default synthetic
dataset, :mod:`climseg.data.cache`; the land mask, :mod:`climseg.data.land`; the benchmarks' masks).

``$CLIMSEG_CACHE`` names it; without it, ``$XDG_CACHE_HOME/climseg``, else ``~/.cache/climseg``.
"""

import os

CACHE_ENV = "CLIMSEG_CACHE"


def cache_dir():
    """``$CLIMSEG_CACHE``, else ``$XDG_CACHE_HOME/climseg``, else ``~/.cache/climseg``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "climseg")
