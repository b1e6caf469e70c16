"""Renamed arguments: the old name works for one more release, with a ``DeprecationWarning``.

LARC's epsilon (the term in the denominator of the local learning rate) is ``trust_eps`` in
:class:`climseg.optim.LARC` and :class:`climseg.optim.FusedLARCAdam` alike; ``eps`` stays Adam's
and LAMB's denominator epsilon everywhere. Before 0.2, LARC called it ``eps`` and
FusedLARCAdam ``eps_larc``.
"""

import warnings

#: The default of a renamed argument: tells "not given" apart from every value a caller may pass.
UNSET = object()


def renamed(owner, old, new, old_value, new_value, default):
    """The value to use for ``new``, given what the caller passed under either name."""
    if old_value is UNSET:
        return new_value
    if new_value is not UNSET and new_value != default:
        raise TypeError(f"{owner}: give {new!r} only (the old name {old!r} was given too)")
    warnings.warn(
        f"{owner}: the argument {old!r} is now called {new!r}; the old name goes in the next release",
        DeprecationWarning,
        stacklevel=3,
    )
    return old_value
