"""Variable-name conventions: which variable of a CAM5, ERA5 or CMIP6 file (or of a
user's own mapping) becomes each of the 16 climseg channels, on which pressure level,
and how its units convert to the CAM5 units the networks were trained in.

Data flow: a *convention* maps each channel to a list of *recipes*, tried in order; a
recipe names one or more file variables (:class:`Source`: name aliases and an optional
pressure level in hPa) and, when it needs more than one or a formula, a function that
derives the channel from them. :func:`resolve` matches a convention against the variables
found in the input files (``auto``: the first convention that has every channel asked
for) and returns one :class:`Plan` per channel; :mod:`climseg.data.netcdf` reads the
variables, picks the level, and :func:`to_channel_units` converts every field by its
``units`` attribute before the recipe's function combines them.

Presets (``--convention``):

========  ==================================================================================
CAM5      the channel names themselves (``TMQ``, ``U850``... matched without regard to case)
ERA5      ``tcwv``; ``u``/``v``/``t``/``z`` on a pressure coordinate (850, 200, 500, 1000 hPa);
          ``u10``/``v10`` for the lowest-level wind; ``msl``, ``sp``, ``tp``, ``skt``, ``t2m``;
          QREFHT from ``d2m`` and ``sp`` (Bolton 1980), else ``q`` at 1000 hPa
CMIP6     ``prw``; ``ua``/``va``/``ta``/``zg`` on ``plev``; ``uas``/``vas``, ``huss``, ``ps``,
          ``psl``, ``pr``, ``ts``, ``tas``
========  ==================================================================================

ZBOT (height of CAM5's lowest model level, hybrid sigma about 0.9925) has no counterpart in
ERA5 or CMIP6 output; it is derived from the near-surface temperature by the hypsometric
equation, ``Z = R_d T / g ln(1 / 0.9925)``, as the synthetic data do.

Unit conversions (by the variable's ``units`` attribute; a missing attribute means the
channel's own CAM5 units): pressure Pa, hPa, mbar, mb, millibars; temperature K, degC; geopotential
``m2 s-2`` to height (divided by g = 9.80665 m s-2); precipitation ``kg m-2 s-1`` (divided
by 1000 kg m-3), ``mm s-1``, ``mm day-1``, and ERA5's accumulated ``m`` (``tp``: metres of
water accumulated over the interval between steps, divided by that interval in seconds,
one hour when the file has a single step); humidity ``kg kg-1``, ``g kg-1``, ``1``; column
water ``kg m-2``, ``mm``. Anything else is a :class:`~climseg.errors.DataError`.

A mapping file (``--variables FILE``, YAML or JSON) extends or replaces a preset::

    convention: ERA5          # optional base (default: none, every channel from this file)
    TMQ: tcw                  # a name
    U850: {name: ua, level: 850}
    PRECT: {name: precip, units: mm day-1}      # units when the file has none (or wrong ones)
    TS: {name: sst, scale: 1.0, offset: 273.15} # raw value * scale + offset, no unit lookup
"""

import dataclasses
import json
import os
import re

import numpy as np

from climseg.constants import CHANNEL_UNITS, CHANNELS
from climseg.errors import ConfigError, DataError

GRAVITY = 9.80665  # m s-2, WMO standard gravity (geopotential -> geopotential height)
WATER_DENSITY = 1000.0  # kg m-3 (precipitation mass flux -> rate)
R_DRY = 287.04  # J kg-1 K-1
CAM5_LOWEST_SIGMA = 0.9925  # CAM5's lowest hybrid level (about 60 m above the surface)


@dataclasses.dataclass(frozen=True)
class Source:
    """One file variable: name aliases (matched without regard to case), an optional
    pressure level (hPa), the kind of quantity (picks the unit table), and optional
    ``units`` (overrides the file's attribute) or a raw ``scale``/``offset``."""

    names: tuple
    level: float = None
    kind: str = None
    units: str = None
    scale: float = None
    offset: float = 0.0

    def describe(self):
        lev = f" at {self.level:g} hPa" if self.level is not None else ""
        return "/".join(self.names) + lev


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A channel made from ``sources`` (converted to their kinds' SI units) by ``derive``
    (None: the single source as it is)."""

    sources: tuple
    derive: object = None
    note: str = ""


@dataclasses.dataclass
class Plan:
    """How one channel is read: the recipe chosen and, per source, the matched variable name."""

    channel: str
    recipe: Recipe
    names: list


# The quantity each channel is, and the units (in canonical spelling) of that quantity.
KIND = dict(
    TMQ="column",
    U850="speed",
    V850="speed",
    UBOT="speed",
    VBOT="speed",
    QREFHT="specific",
    PS="pressure",
    PSL="pressure",
    T200="temperature",
    T500="temperature",
    PRECT="rate",
    TS="temperature",
    TREFHT="temperature",
    Z1000="height",
    Z200="height",
    ZBOT="height",
    IVT="flux",
)
# Fields beyond the 16 channels that the labeller uses when a file has them.
EXTRA_UNITS = {"IVT": "kg m-1 s-1"}  # integrated water-vapour transport (magnitude)

# Per kind: canonical units -> (scale, offset) to the CAM5 unit, value * scale + offset.
# "accumulated" marks an amount per time step (divided by the step length in seconds).
UNIT_TABLE = {
    "column": {"kg m-2": (1.0, 0.0), "mm": (1.0, 0.0)},
    "speed": {"m s-1": (1.0, 0.0), "km h-1": (1 / 3.6, 0.0), "knot": (0.514444, 0.0), "kt": (0.514444, 0.0)},
    "specific": {"kg kg-1": (1.0, 0.0), "1": (1.0, 0.0), "g kg-1": (1e-3, 0.0)},
    "pressure": {
        "pa": (1.0, 0.0),
        "hpa": (100.0, 0.0),
        "mbar": (100.0, 0.0),
        "mb": (100.0, 0.0),
        "millibar": (100.0, 0.0),
        "millibars": (100.0, 0.0),  # the classic CDS's ERA5 pressure levels
        "mbars": (100.0, 0.0),
        "hectopascal": (100.0, 0.0),
        "hectopascals": (100.0, 0.0),
        "kpa": (1000.0, 0.0),
    },
    "temperature": {
        "k": (1.0, 0.0),
        "degk": (1.0, 0.0),
        "degc": (1.0, 273.15),
        "c": (1.0, 273.15),
        "celsius": (1.0, 273.15),
        "deg c": (1.0, 273.15),
    },
    "rate": {
        "m s-1": (1.0, 0.0),
        "kg m-2 s-1": (1.0 / WATER_DENSITY, 0.0),
        "mm s-1": (1e-3, 0.0),
        "mm h-1": (1e-3 / 3600.0, 0.0),
        "mm day-1": (1e-3 / 86400.0, 0.0),
        "mm d-1": (1e-3 / 86400.0, 0.0),
        "m": ("accumulated", 1.0),
        "mm": ("accumulated", 1e-3),
        "kg m-2": ("accumulated", 1e-3),
    },
    "height": {"m": (1.0, 0.0), "gpm": (1.0, 0.0), "km": (1000.0, 0.0), "m2 s-2": (1.0 / GRAVITY, 0.0)},
    "flux": {"kg m-1 s-1": (1.0, 0.0)},
    "dewpoint": None,  # same table as temperature (filled below)
}
UNIT_TABLE["dewpoint"] = UNIT_TABLE["temperature"]
CANONICAL_UNITS = dict(
    column="kg m-2",
    speed="m s-1",
    specific="kg kg-1",
    pressure="Pa",
    temperature="K",
    rate="m s-1",
    height="m",
    dewpoint="K",
    flux="kg m-1 s-1",
)


def canonical_units(text):
    """A units string in one spelling: lower case, ``**``/``^`` dropped, ``a/b`` as ``a b-1``
    (``kg m**-2`` and ``kg/m^2`` both give ``kg m-2``)."""
    u = str(text).strip().lower().replace("**", "").replace("^", "").replace("·", " ").replace("*", " ")
    u = re.sub(r"\s+", " ", u)
    if "/" in u:
        head, *rest = u.split("/")
        parts = [head.strip()]
        for r in rest:
            for tok in r.strip().split(" "):
                m = re.fullmatch(r"([a-z]+)(-?\d*)", tok)
                if not m:
                    parts.append(tok)
                    continue
                power = int(m.group(2) or 1)
                parts.append(f"{m.group(1)}{-power}")
        u = " ".join(p for p in parts if p)
    u = re.sub(r"\b([a-z]+)1\b", r"\1", u)  # m1 -> m
    u = {
        "meters": "m",
        "metres": "m",
        "meter": "m",
        "metre": "m",
        "m of water equivalent": "m",
        "kelvin": "k",
        "pascal": "pa",
        "pascals": "pa",
        "degrees_celsius": "degc",
        "degree_celsius": "degc",
        "degrees c": "degc",
        "deg_c": "degc",
    }.get(u, u)
    return u.strip()


def to_channel_units(values, units, kind, step_seconds=None, where=""):
    """``values`` (float32 array) converted from ``units`` to the CAM5 unit of ``kind``
    (an empty or missing ``units`` means they are already in it)."""
    if units is None or str(units).strip() == "" or kind is None:  # kind None: a field taken as it is (LABELS)
        return values
    table = UNIT_TABLE[kind]
    key = canonical_units(units)
    if key not in table:
        raise DataError(
            f"{where}has units {units!r}, which climseg cannot convert to "
            f"{CANONICAL_UNITS[kind]} (known: {', '.join(sorted(table))})"
        )
    scale, offset = table[key]
    if scale == "accumulated":
        seconds = 3600.0 if not step_seconds else step_seconds
        return values * np.float32(offset / seconds)
    if scale != 1.0:
        values = values * np.float32(scale)
    if offset:
        values = values + np.float32(offset)
    return values


# ----------------------------------------------------------------------------- derived channels


def lowest_level_height(t_near_surface):
    """ZBOT (m): height of CAM5's lowest hybrid level (sigma 0.9925) above the surface by the
    hypsometric equation from the near-surface temperature (K)."""
    return (R_DRY / GRAVITY * np.log(1.0 / CAM5_LOWEST_SIGMA) * t_near_surface).astype(np.float32)


def specific_humidity_from_dewpoint(dewpoint, pressure):
    """Specific humidity (kg kg-1) from the dew point (K) and surface pressure (Pa): vapour
    pressure by Bolton (1980), e = 611.2 exp(17.67 Td / (Td + 243.5)) with Td in degC, then
    q = 0.622 e / (p - 0.378 e)."""
    td = dewpoint.astype(np.float64) - 273.15
    e = 611.2 * np.exp(17.67 * td / (td + 243.5))
    return (0.622 * e / (pressure - 0.378 * e)).astype(np.float32)


def _one(names, level=None, kind=None):
    return Recipe((Source(tuple(names) if isinstance(names, (tuple, list)) else (names,), level, kind),))


def vapour_transport(eastward, northward):
    """|IVT| (kg m-1 s-1) from its eastward and northward components."""
    return np.hypot(eastward, northward).astype(np.float32)


def _cam5():
    table = {c: [_one(c, kind=KIND[c])] for c in CHANNELS}
    table["IVT"] = [_one("IVT", kind="flux")]
    return table


def _era5():
    k = KIND
    return dict(
        TMQ=[_one("tcwv", kind=k["TMQ"])],
        U850=[_one("u", 850, k["U850"])],
        V850=[_one("v", 850, k["V850"])],
        UBOT=[_one("u10", kind="speed")],
        VBOT=[_one("v10", kind="speed")],
        QREFHT=[
            Recipe(
                (Source(("d2m",), kind="dewpoint"), Source(("sp",), kind="pressure")),
                specific_humidity_from_dewpoint,
                "from d2m and sp (Bolton 1980)",
            ),
            _one("q", 1000, "specific"),
        ],
        PS=[_one("sp", kind="pressure")],
        PSL=[_one("msl", kind="pressure")],
        T200=[_one("t", 200, "temperature")],
        T500=[_one("t", 500, "temperature")],
        PRECT=[_one("tp", kind="rate"), _one("mtpr", kind="rate")],
        TS=[_one("skt", kind="temperature")],
        TREFHT=[_one("t2m", kind="temperature")],
        Z1000=[_one("z", 1000, "height")],
        Z200=[_one("z", 200, "height")],
        ZBOT=[Recipe((Source(("t2m",), kind="temperature"),), lowest_level_height, "from t2m (hypsometric)")],
        IVT=[
            Recipe(
                (Source(("viwve", "p71.162"), kind="flux"), Source(("viwvn", "p72.162"), kind="flux")),
                vapour_transport,
                "|(viwve, viwvn)|",
            )
        ],
    )


def _cmip6():
    return dict(
        TMQ=[_one("prw", kind="column")],
        U850=[_one("ua", 850, "speed")],
        V850=[_one("va", 850, "speed")],
        UBOT=[_one("uas", kind="speed")],
        VBOT=[_one("vas", kind="speed")],
        QREFHT=[_one("huss", kind="specific")],
        PS=[_one("ps", kind="pressure")],
        PSL=[_one("psl", kind="pressure")],
        T200=[_one("ta", 200, "temperature")],
        T500=[_one("ta", 500, "temperature")],
        PRECT=[_one("pr", kind="rate")],
        TS=[_one("ts", kind="temperature")],
        TREFHT=[_one("tas", kind="temperature")],
        Z1000=[_one("zg", 1000, "height")],
        Z200=[_one("zg", 200, "height")],
        ZBOT=[Recipe((Source(("tas",), kind="temperature"),), lowest_level_height, "from tas (hypsometric)")],
    )


CONVENTIONS = {"CAM5": _cam5, "ERA5": _era5, "CMIP6": _cmip6}


def convention_names():
    return tuple(CONVENTIONS)


def load_mapping(path):
    """A convention read from a ``--variables`` YAML or JSON file (see the module docs)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such variables file")
    try:
        with open(path) as f:
            text = f.read()
        if path.lower().endswith(".json"):
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"{path}: not a readable YAML/JSON mapping ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of channel -> variable")
    base = raw.pop("convention", None)
    if base is not None and str(base).upper() not in CONVENTIONS:
        raise ConfigError(f"{path}: convention {base!r} is not one of {', '.join(CONVENTIONS)}")
    table = CONVENTIONS[str(base).upper()]() if base is not None else {}
    upper = {c.upper(): c for c in CHANNELS + tuple(EXTRA_UNITS)}
    for key, spec in raw.items():
        channel = upper.get(str(key).upper())
        if channel is None:
            raise ConfigError(f"{path}: {key!r} is not a channel (channels: {', '.join(CHANNELS)})")
        table[channel] = [_recipe_from_spec(path, channel, spec)]
    return table


def _recipe_from_spec(path, channel, spec):
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"{path}: {channel}: expected a variable name or {{name: ..., level: ..., units: ...}}")
    unknown = set(spec) - {"name", "level", "units", "scale", "offset"}
    if unknown:
        raise ConfigError(f"{path}: {channel}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        level = None if spec.get("level") is None else float(spec["level"])
        scale = None if spec.get("scale") is None else float(spec["scale"])
        offset = float(spec.get("offset", 0.0))
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: {channel}: level, scale and offset must be numbers") from None
    units = spec.get("units")
    if units is not None and canonical_units(units) not in UNIT_TABLE[KIND[channel]]:
        raise ConfigError(
            f"{path}: {channel}: units {units!r} cannot be converted to "
            f"{CHANNEL_UNITS.get(channel) or EXTRA_UNITS[channel]}"
        )
    return Recipe((Source((str(spec["name"]),), level, KIND[channel], units, scale, offset),))


def conventions_for(convention="auto", variables=None):
    """``[(name, table)]`` to try: the mapping file's when given, else the named preset, else
    (``auto``) every preset."""
    if variables is not None:
        table = load_mapping(variables) if isinstance(variables, (str, os.PathLike)) else variables
        return [
            (os.path.basename(os.fspath(variables)) if isinstance(variables, (str, os.PathLike)) else "mapping", table)
        ]
    name = (convention or "auto").upper()
    if name == "AUTO":
        return [(n, f()) for n, f in CONVENTIONS.items()]
    if name not in CONVENTIONS:
        raise ConfigError(f"--convention {convention}: expected auto or one of {', '.join(CONVENTIONS)}")
    return [(name, CONVENTIONS[name]())]


def resolve(available, channels, optional=(), convention="auto", variables=None, where=""):
    """Match ``channels`` against ``available`` (file variable name -> set of pressure levels
    in hPa, empty for 2-D fields). Returns ``(convention name, {channel: Plan})``; channels
    in ``optional`` may be left out. DataError, one line, listing what the best-matching
    convention misses for which channel."""
    lower = {n.lower(): n for n in available}
    best = None
    for name, table in conventions_for(convention, variables):
        plans, missing = {}, []
        for c in channels:
            plan = None
            # a name no convention knows (e.g. ClimateNet's LABELS) is looked up as it is, never converted
            recipes = table.get(c) or ([] if c in KIND else [_one(c)])
            for recipe in recipes:
                names = []
                for s in recipe.sources:
                    found = next((lower[a.lower()] for a in s.names if a.lower() in lower), None)
                    if found is None or (s.level is not None and not _has_level(available[found], s.level)):
                        names = None
                        break
                    names.append(found)
                if names is not None:
                    plan = Plan(c, recipe, names)
                    break
            if plan is not None:
                plans[c] = plan
            elif c not in optional:
                missing.append((c, table.get(c, [])))
        if not missing:
            return name, plans
        if best is None or len(missing) < len(best[1]):
            best = (name, missing)
    name, missing = best
    parts = []
    for c, recipes in missing:
        if not recipes:
            parts.append(f"{c}: not in the mapping")
            continue
        parts.append(f"{c}: " + " or ".join(" + ".join(_why(s, available, lower) for s in r.sources) for r in recipes))
    raise DataError(
        f"{where}missing variable(s) {', '.join(c for c, _ in missing)} ({name} convention; {'; '.join(parts)})"
    )


def _has_level(levels, level):
    return any(abs(p - level) < 0.5 for p in levels)


def _why(source, available, lower):
    found = next((lower[a.lower()] for a in source.names if a.lower() in lower), None)
    if found is None or source.level is None:
        return source.describe()
    levels = sorted(available[found])
    have = ", ".join(f"{p:g}" for p in levels) if levels else "none"
    return f"{found} has no {source.level:g} hPa level (levels: {have} hPa)"
