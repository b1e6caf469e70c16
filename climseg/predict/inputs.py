"""The inputs of ``climseg predict``: which files, their grids and time steps, one step's fields.

:func:`open_inputs` is the one call that turns the paths given on the command line into
:class:`InputFile` objects, every one checked before anything is written (readable, the
network's channels present, at least one time step, a grid). The pipeline's reader stage
(:mod:`climseg.predict.pipeline`) only calls :meth:`InputFile.read`, so a different grouping of
files into inputs (a set of files merged on time and grid) drops in here alone.

Inputs are DeepCAM HDF5 samples (``climate/data``, H x W x 16, one step; their grid is assumed
global, regular, rows south to north) or netCDF files in any variable-name convention
(:mod:`climseg.data.netcdf`, :mod:`climseg.data.variables`), any number of time steps.
"""

import os

import h5py
import torch.nn.functional as F

from climseg.constants import CHANNELS, NUM_CLASSES
from climseg.data.deepcam import LABELS_KEY, check_labels, check_sample_file, grid, read_sample
from climseg.data.netcdf import is_netcdf, open_netcdf, read_netcdf_step
from climseg.errors import DataError, UserError


class InputFile:
    """One input of ``climseg predict``, checked when made: its kind (``netcdf`` or ``hdf5``),
    grid, time steps, and :meth:`read` of each step. ``channels`` are the ones the network
    reads; TMQ is read too, for the map, when there."""

    def __init__(self, path, channels, convention="auto", variables=None):
        self.path, self.channels = path, list(channels)
        self.stem = os.path.splitext(os.path.basename(path))[0]
        if os.path.isdir(path):
            raise DataError(f"{path}: is a folder; give the .h5 or .nc files in it")
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        if is_netcdf(path):
            self.kind = "netcdf"
            wanted = self.channels + ([] if "TMQ" in self.channels else ["TMQ"])
            self.info = open_netcdf(
                path,
                wanted,
                optional=() if "TMQ" in self.channels else ("TMQ",),
                convention=convention,
                variables=variables,
            )
            self.lat, self.lon, self.assumed_grid = self.info.lat, self.info.lon, False
            self.periodic = self.info.periodic
            self.times = self.info.times
            self.shape = (len(self.lat), len(self.lon))
            self.has_labels = False
        else:
            self.kind = "hdf5"
            self.shape, self.has_labels = check_sample_file(path)
            self.lat, self.lon = grid(*self.shape)
            self.assumed_grid = True
            self.periodic = True
            self.times = [""]
        if not self.times:
            raise DataError(f"{path}: its time axis has length 0 (no time steps to segment)")
        if min(self.shape) < 1:
            raise DataError(f"{path}: empty grid {self.shape[0]}x{self.shape[1]}")

    @property
    def mask_name(self):
        """The name of this input's mask file in the output folder (:mod:`climseg.data.masks`)."""
        return f"{self.stem}_mask.nc" if self.kind == "netcdf" else f"{self.stem}_mask.h5"

    def map_name(self, index):
        """The name of time step ``index``'s PNG map."""
        return f"{self.stem}.png" if len(self.times) == 1 else f"{self.stem}_t{index:04d}.png"

    def read(self, index):
        """``(fields[H, W, C] float32 of the network's channels, map background[H, W]
        and its name, labels or None)`` of time step ``index``."""
        if self.kind == "netcdf":
            names = list(self.info.variables)
            data = read_netcdf_step(self.info, index, names)
            fields = data[..., [names.index(c) for c in self.channels]]
            back = "TMQ" if "TMQ" in names else self.channels[0]
            return fields, data[..., names.index(back)], back, None
        data, _ = read_sample(self.path, labels=False)
        fields = data[..., [CHANNELS.index(c) for c in self.channels]]
        labels = None
        if self.has_labels:
            with h5py.File(self.path, "r") as f:
                raw = f[LABELS_KEY][...]
            if raw.shape == self.shape:
                labels = check_labels(self.path, raw, NUM_CLASSES)
        return fields, data[..., CHANNELS.index("TMQ")], "TMQ", labels


def open_inputs(paths, channels, convention="auto", variables=None, rank=0, world=1):
    """This rank's share of the inputs named by ``paths``: ``[(position, InputFile)]``, every
    world-size-th input from ``rank`` on (round robin, in the order given), each checked
    (DataError naming the file on any problem). Two inputs whose outputs would have the same
    name are refused first (UserError). ``channels``: the network's; ``convention`` and
    ``variables``: the netCDF variable names (:mod:`climseg.data.variables`)."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise UserError("no input files given")
    stems = {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in stems:
            raise UserError(f"{p}: has the same name as {stems[stem]}; their outputs would collide")
        stems[stem] = p
    return [(i, InputFile(paths[i], channels, convention, variables)) for i in range(rank, len(paths), world)]


def pad_to_multiple(x, multiple, periodic=True):
    """Pad (N, C, H, W) up to multiples of ``multiple``: longitude wraps on a global grid (else
    repeats its edge columns), latitude repeats its edge rows. Returns the padded tensor and
    the (top, left) offset of the original grid in it."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, 0, 0), mode="circular" if periodic else "replicate")
    if ph:
        x = F.pad(x, (0, 0, ph // 2, ph - ph // 2), mode="replicate")
    return x, (ph // 2, pw // 2)
