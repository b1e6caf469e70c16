"""The options of ``climseg track`` (:func:`climseg.analytics.track.track`): the smallest object kept
per class (pixels or km^2), how many steps ahead an overlap may link two objects, the fewest steps an
event must be seen on; :data:`CLIMATENET`, the values of ClimateNet's ``track_events``; and
:func:`parse_size`, the command line's spelling of a size (``250px``, ``5e4km2``).
"""

import dataclasses
import re

from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.errors import ConfigError

CLIMATENET = dict(min_steps=5, look_ahead=1, min_size={1: (250.0, "px"), 2: (250.0, "px")})


@dataclasses.dataclass
class TrackOptions:
    """Tracking parameters: minimum size per class (``(value, "px" | "km2")``), steps
    ahead an overlap may link (``look_ahead``), fewest steps an event must be seen on."""

    min_size: dict = dataclasses.field(default_factory=lambda: {1: (5000.0, "km2"), 2: (50000.0, "km2")})
    look_ahead: int = 1
    min_steps: int = 2

    def check(self):
        if self.look_ahead < 1:
            raise ConfigError(f"--look-ahead {self.look_ahead}: must be at least 1")
        if self.min_steps < 1:
            raise ConfigError(f"--min-steps {self.min_steps}: must be at least 1")
        for c, (value, unit) in self.min_size.items():
            if not 0 <= value < float("inf") or unit not in ("px", "km2"):  # NaN fails too
                raise ConfigError(f"minimum size of {CLASS_NAMES[c]}: {value} {unit} is not a size")
        return self


def parse_size(text, option="--min-size"):
    """``250px``, ``250`` (pixels) or ``5e4km2`` -> ``(value, unit)``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(px|pixels?|km2|km\^2)?\s*", str(text))
    if not m:
        raise ConfigError(f"{option} {text}: expected a size such as 250px or 50000km2")
    unit = "km2" if (m.group(2) or "px").startswith("km") else "px"
    return float(m.group(1)), unit


def size_thresholds(options):
    """Per-class ``(minimum pixels, minimum km^2)`` of ``options`` (0 where that unit is not used)."""
    out = {}
    for c in range(1, NUM_CLASSES):
        value, unit = options.min_size.get(c, (0.0, "px"))
        out[c] = (value, 0.0) if unit == "px" else (0.0, value)
    return out
