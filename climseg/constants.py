"""Names shared by every part of climseg: the 16 CAM5 channels and the 3 classes."""

# The standard channel order of the DeepCAM data (climate/data[..., i]).
CHANNELS = (
    "TMQ",
    "U850",
    "V850",
    "UBOT",
    "VBOT",
    "QREFHT",
    "PS",
    "PSL",
    "T200",
    "T500",
    "PRECT",
    "TS",
    "TREFHT",
    "Z1000",
    "Z200",
    "ZBOT",
)

# Units of each channel as CAM5 writes them.
CHANNEL_UNITS = {
    "TMQ": "kg m-2",  # total precipitable water
    "U850": "m s-1",  # zonal wind at 850 hPa
    "V850": "m s-1",  # meridional wind at 850 hPa
    "UBOT": "m s-1",  # zonal wind at the lowest model level
    "VBOT": "m s-1",  # meridional wind at the lowest model level
    "QREFHT": "kg kg-1",  # reference-height specific humidity
    "PS": "Pa",  # surface pressure
    "PSL": "Pa",  # sea-level pressure
    "T200": "K",  # temperature at 200 hPa
    "T500": "K",  # temperature at 500 hPa
    "PRECT": "m s-1",  # total precipitation rate
    "TS": "K",  # surface temperature
    "TREFHT": "K",  # reference-height temperature
    "Z1000": "m",  # geopotential height at 1000 hPa
    "Z200": "m",  # geopotential height at 200 hPa
    "ZBOT": "m",  # height of the lowest model level
}

CLASS_NAMES = ("background", "tropical_cyclone", "atmospheric_river")
NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND, TROPICAL_CYCLONE, ATMOSPHERIC_RIVER = 0, 1, 2
