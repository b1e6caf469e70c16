"""The options of ``climseg track`` (:func:`climseg.analytics.track.track`): the smallest object kept
per class (pixels or km^2), how many steps ahead an overlap may link two objects, the fewest steps an
event must be seen on, and the linking rules (:data:`RULES`); :data:`CLIMATENET` and
:func:`climatenet_options`, the values and rules of ClimateNet's ``track_events``; and
:func:`parse_size`, the command line's spelling of a size (``250px``, ``5e4km2``).

The two sets of linking rules (docs/analytics.md, "Linking rules"):

* ``"climseg"`` (the default): objects on a global grid are joined across the date line, never
  across the poles; every overlap within ``look_ahead`` steps links two objects, so the objects
  of an event are all those connected by overlaps (a merger or a split stays one event).
* ``"climatenet"``: ClimateNet's ``track_events`` (:mod:`climseg.analytics.track_climatenet`): the
  grid wraps in both directions (across the date line on any grid, and from the first row to the
  last); an object smaller than 2 pixels is always dropped; an object takes the event of the
  first object it overlaps, the earliest step first and within a step the first overlapping cell
  in the file's row-major order, so that where two events merge one of them ends; objects
  numbered 100 or above in a step's row-major order never continue an event.
"""

import dataclasses
import re

from climseg.constants import CLASS_NAMES, NUM_CLASSES
from climseg.errors import ConfigError

RULES = ("climseg", "climatenet")
CLIMATENET = dict(min_steps=5, look_ahead=1, min_size={1: (250.0, "px"), 2: (250.0, "px")}, rules="climatenet")


@dataclasses.dataclass
class TrackOptions:
    """Tracking parameters: minimum size per class (``(value, "px" | "km2")``), steps
    ahead an overlap may link (``look_ahead``), fewest steps an event must be seen on,
    and the linking ``rules`` (one of :data:`RULES`; see the module docstring)."""

    min_size: dict = dataclasses.field(default_factory=lambda: {1: (5000.0, "km2"), 2: (50000.0, "km2")})
    look_ahead: int = 1
    min_steps: int = 2
    rules: str = "climseg"

    def check(self):
        if self.look_ahead < 1:
            raise ConfigError(f"--look-ahead {self.look_ahead}: must be at least 1")
        if self.min_steps < 1:
            raise ConfigError(f"--min-steps {self.min_steps}: must be at least 1")
        for c, (value, unit) in self.min_size.items():
            if not 0 <= value < float("inf") or unit not in ("px", "km2"):  # NaN fails too
                raise ConfigError(f"minimum size of {CLASS_NAMES[c]}: {value} {unit} is not a size")
        if self.rules not in RULES:
            raise ConfigError(f"--rules {self.rules}: expected one of {', '.join(RULES)}")
        return self


def climatenet_options():
    """The :class:`TrackOptions` of ClimateNet's ``track_events`` with its default arguments: its
    rules, 250-pixel thresholds for both classes, look-ahead 1, at least 5 steps."""
    return TrackOptions(
        min_size=dict(CLIMATENET["min_size"]),
        look_ahead=CLIMATENET["look_ahead"],
        min_steps=CLIMATENET["min_steps"],
        rules=CLIMATENET["rules"],
    )


def parse_size(text, option="--min-size"):
    """``250px``, ``250`` (pixels) or ``5e4km2`` -> ``(value, unit)``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(px|pixels?|km2|km\^2)?\s*", str(text))
    if not m:
        raise ConfigError(f"{option} {text}: expected a size such as 250px or 50000km2")
    unit = "km2" if (m.group(2) or "px").startswith("km") else "px"
    return float(m.group(1)), unit


def size_thresholds(options):
    """Per-class ``(minimum pixels, minimum km^2)`` of ``options`` (0 where that unit is not used); the
    ClimateNet rules never keep an object of fewer than 2 pixels (:data:`RULES`)."""
    out = {}
    least = 2.0 if options.rules == "climatenet" else 0.0
    for c in range(1, NUM_CLASSES):
        value, unit = options.min_size.get(c, (0.0, "px"))
        out[c] = (max(value, least), 0.0) if unit == "px" else (least, value)
    return out
