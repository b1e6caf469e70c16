"""The labeller's thresholds: one dataclass, :class:`LabelOptions`, that the physics
(:mod:`climseg.analytics.cyclones`, :mod:`climseg.analytics.rivers`) reads and the runner
(:mod:`climseg.analytics.label`) checks and records in ``summary.json``; the defaults and
their sources are tabled in docs/labelling.md.
"""

import dataclasses
import math

from climseg.errors import ConfigError

GALE_WIND = 17.0  # m s-1, gale force (34 kt; TECA min_wind_speed)


@dataclasses.dataclass
class LabelOptions:
    """Thresholds of the labeller; the defaults and their sources are in docs/labelling.md."""

    method: str = "tc+ar"  # which classes: tc+ar, tc or ar
    # tropical cyclones
    tc_max_lat: float = 45.0  # deg; candidates equatorward of this
    tc_candidate_km: float = 300.0  # PSL minimum within this distance
    tc_vorticity: float = 3.5e-5  # s-1, 850 hPa cyclonic vorticity (Zhao et al. 2009; Knutson et al. 2007)
    tc_core_km: float = 222.0  # 2 deg: vorticity maximum and warm core near the centre
    #                                       (TECA max_core_radius)
    tc_warm_core: float = 0.8  # K, upper-level warm anomaly (TECA max_core_temperature_delta)
    tc_environment_km: float = 556.0  # 5 deg: warm-core surroundings and closed-depression radius (TECA)
    tc_pressure_rise: float = 400.0  # Pa, PSL rise within tc_environment_km (TECA max_pressure_delta)
    tc_wind: float = GALE_WIND  # m s-1, low-level wind (TECA min_wind_speed; 34 kt gale force)
    tc_wind_km: float = 300.0  # wind criterion within this distance
    tc_mask_km: float = 500.0  # largest extent of a storm's mask (our choice, not from the literature)
    tc_mask_deficit: float = 0.5  # mask also where the deficit is >= this share of the centre's
    tc_max_speed: float = 1600.0 / 86.4  # m s-1, fastest storm motion: 1600 km a day (TECA max_daily_distance)
    tc_min_hours: float = 24.0  # shortest track kept (tracks cut by the series' ends are kept)
    # atmospheric rivers
    ar_field: str = "auto"  # auto, ivt, proxy (TMQ x |V850|) or tmq
    ar_threshold: float = None  # absolute; default 250 kg m-1 s-1 (IVT, proxy) or 20 kg m-2 (TMQ)
    ar_percentile: float = None  # e.g. 85: threshold = max(absolute, local percentile of the series)
    ar_min_length_km: float = 2000.0  # Ralph et al. 2004; Guan and Waliser 2015
    ar_min_aspect: float = 2.0  # length / width (Guan and Waliser 2015)
    ar_max_width_km: float = 1000.0  # Ralph et al. 2004 (narrow: < 1000 km)
    ar_levels: tuple = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.4)  # threshold multiples tried in turn (250..600 for IVT)
    ar_min_poleward: float = 50.0  # kg m-1 s-1, object-mean poleward transport (Guan and Waliser 2015)
    ar_min_lat: float = 0.0  # deg; cells equatorward of this are not rivers
    ar_origin_lat: float = 35.0  # deg; equatorward end within the (sub)tropics
    ar_reach_lat: float = 30.0  # deg; poleward end beyond this
    ar_climatology: str = "series"  # series (each cell over the series' steps) or zonal (each step's
    #                                       latitude circle)
    ar_climatology_steps: int = 240  # steps sampled for the series climatology

    def check(self):
        """The options themselves (for chaining), or ConfigError naming the option that is out of range:
        every number finite and in its range (:data:`RANGES`), the choices among their values."""
        if self.method not in ("tc+ar", "tc", "ar"):
            raise ConfigError(f"--method {self.method}: expected tc+ar, tc or ar")
        if self.ar_field not in ("auto", "ivt", "proxy", "tmq"):
            raise ConfigError(f"--ar-field {self.ar_field}: expected auto, ivt, proxy or tmq")
        if self.ar_climatology not in ("series", "zonal"):
            raise ConfigError(f"--ar-climatology {self.ar_climatology}: expected series or zonal")
        for name, (low, high, open_ends) in RANGES.items():
            value = getattr(self, name)
            if value is None and name in ("ar_threshold", "ar_percentile"):
                continue
            _check_number(name, value, low, high, open_ends)
        if isinstance(self.ar_climatology_steps, bool) or not isinstance(self.ar_climatology_steps, int):
            raise ConfigError(f"ar_climatology_steps {self.ar_climatology_steps!r}: expected a whole number")
        levels = self.ar_levels if isinstance(self.ar_levels, (tuple, list)) else None
        if not levels:
            raise ConfigError(f"ar_levels {self.ar_levels!r}: expected threshold multiples such as (1.0, 1.5, 2.0)")
        for level in levels:
            _check_number("ar_levels", level, 0.0, 100.0, "(")
        return self


def _check_number(name, value, low, high, open_ends):
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{flag} {value!r}: expected a number")
    if not math.isfinite(value):
        raise ConfigError(f"{flag} {value}: expected a finite number")
    if value < low or ("(" in open_ends and value == low):
        raise ConfigError(f"{flag} {value:g}: must be {'above' if '(' in open_ends else 'at least'} {low:g}")
    if value > high or (")" in open_ends and value == high):
        raise ConfigError(
            f"{flag} {value:g}: must be {'below' if ')' in open_ends else 'at most'} {high:g}{UNITS.get(name, '')}"
        )


#: The largest radius the cyclone criteria accept, km: more than any storm (Typhoon Tip's gale-force
#: winds reached about 1100 km from its centre), and the bound on the filter boxes' size and time.
MAX_STORM_RADIUS_KM = 5000.0
#: Half the Earth's circumference, km: no two cells are farther apart.
HALF_CIRCUMFERENCE_KM = 20015.0
#: (lowest, highest, which ends are excluded: "(" the lowest, ")" the highest) of every number of
#: :class:`LabelOptions`; ``ar_threshold`` and ``ar_percentile`` may also be None ("not set").
RANGES = {
    "tc_max_lat": (0.0, 90.0, ""),
    "tc_candidate_km": (0.0, MAX_STORM_RADIUS_KM, "("),
    "tc_vorticity": (0.0, 1e-2, ""),
    "tc_core_km": (0.0, MAX_STORM_RADIUS_KM, "("),
    "tc_warm_core": (0.0, 100.0, ""),
    "tc_environment_km": (0.0, MAX_STORM_RADIUS_KM, "("),
    "tc_pressure_rise": (0.0, 1e5, ""),
    "tc_wind": (0.0, 200.0, ""),
    "tc_wind_km": (0.0, MAX_STORM_RADIUS_KM, "("),
    "tc_mask_km": (0.0, MAX_STORM_RADIUS_KM, "("),
    "tc_mask_deficit": (0.0, 1.0, ""),
    "tc_max_speed": (0.0, 340.0, "("),
    "tc_min_hours": (0.0, 1e6, ""),
    "ar_threshold": (0.0, 1e6, ""),
    "ar_percentile": (0.0, 100.0, "()"),
    "ar_min_length_km": (0.0, 2 * HALF_CIRCUMFERENCE_KM, ""),
    "ar_min_aspect": (0.0, 1e6, ""),
    "ar_max_width_km": (0.0, HALF_CIRCUMFERENCE_KM, "("),
    "ar_min_poleward": (0.0, 1e6, ""),
    "ar_min_lat": (0.0, 90.0, ""),
    "ar_origin_lat": (0.0, 90.0, ""),
    "ar_reach_lat": (0.0, 90.0, ""),
    "ar_climatology_steps": (1, 1_000_000, ""),
}
UNITS = {name: " km" for name in RANGES if name.endswith("_km")}


# the absolute river threshold of each river field when ar_threshold is not given
DEFAULT_THRESHOLDS = {"ivt": 250.0, "proxy": 250.0, "tmq": 20.0}  # Rutz et al. 2014; Ralph et al. 2004
