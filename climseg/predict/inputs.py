"""The inputs of ``climseg predict``: which files, their grids and time steps, one step's fields.

:func:`open_inputs` is the one call that turns the paths given on the command line into
:class:`InputFile` objects, every one checked before anything is written (readable, the
network's channels present, at least one time step, a grid). The pipeline's reader stage
(:mod:`climseg.predict.pipeline`) only calls :meth:`InputFile.read`.

Inputs are DeepCAM HDF5 samples (``climate/data``, H x W x 16, one step; their grid is assumed
global, regular, rows south to north) or netCDF files in any variable-name convention
(:mod:`climseg.data.netcdf`, :mod:`climseg.data.variables`), any number of time steps, given as
files, glob patterns or folders. The netCDF files are merged into series on time and grid as
``climseg label`` merges them (:func:`climseg.data.inputs.open_input_series`: a CMIP set of
one-variable files, ERA5's pressure-level and single-level files), and every file of a series'
time axis is one input ``NAME`` with its own mask file.
"""

import os

import h5py
import torch.nn.functional as F

from climseg.constants import CHANNELS, NUM_CLASSES
from climseg.data.deepcam import LABELS_KEY, check_labels, check_sample_file, grid, read_sample
from climseg.data.inputs import open_input_series
from climseg.data.netcdf import read_netcdf_step
from climseg.data.netcdf_file import SUFFIXES, expand_inputs, is_netcdf
from climseg.errors import DataError, UserError

HDF5_SUFFIXES = (".h5", ".hdf5")  # the DeepCAM samples a folder of inputs may hold


class InputFile:
    """One input of ``climseg predict``, checked when made: its kind (``netcdf`` or ``hdf5``),
    grid, time steps, and :meth:`read` of each step. A netCDF input is one output of a merged
    series (:func:`climseg.data.inputs.open_input_series`: the steps of one file of its time
    axis, whose name, grid, latitude order and time axis the mask copies); ``InputFile(path,
    ...)`` of a netCDF path is that file alone. ``channels`` are the ones the network reads; TMQ
    is read too, for the map, when there."""

    def __init__(self, path, channels, convention="auto", variables=None):
        self.path, self.channels = path, list(channels)
        self.stem = os.path.splitext(os.path.basename(path))[0]
        if os.path.isdir(path):
            raise DataError(f"{path}: is a folder; give the .h5 or .nc files in it")
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file")
        if is_netcdf(path):
            series = open_input_series([path], *_wanted(self.channels), convention, variables)[0]
            self._netcdf(series.info, series.outputs[0])
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

    @classmethod
    def series_output(cls, series, output, channels):
        """The input of one output (:class:`~climseg.data.inputs.SeriesOutput`) of a merged
        :class:`~climseg.data.inputs.InputSeries`."""
        self = cls.__new__(cls)
        self.path, self.channels, self.stem = output.source, list(channels), output.stem
        self._netcdf(series.info, output)
        return self

    def _netcdf(self, info, output):
        self.kind, self.info, self.output = "netcdf", info, output
        self.lat, self.lon, self.assumed_grid = info.lat, info.lon, False
        self.periodic = info.periodic
        self.times = [info.times[t] for t in output.steps]
        self.shape = (len(self.lat), len(self.lon))
        self.has_labels = False

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
            data = read_netcdf_step(self.info, self.output.steps[index], names)
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


def _wanted(channels):
    """``(channels, optional)`` read from netCDF: the network's, and TMQ for the map when there."""
    return channels + ([] if "TMQ" in channels else ["TMQ"]), (() if "TMQ" in channels else ("TMQ",))


def open_inputs(paths, channels, convention="auto", variables=None, rank=0, world=1):
    """This rank's share of the inputs named by ``paths`` (files, glob patterns, folders):
    ``[(position, InputFile)]``, every world-size-th input from ``rank`` on (round robin, in the
    order given), each DeepCAM sample alone and the netCDF files merged into series, one input per
    file of each series' time axis (:func:`climseg.data.inputs.open_input_series`). Every input is
    checked (DataError naming the file on any problem), and two inputs whose outputs would have
    the same name are refused (UserError), before anything is written. ``channels``: the
    network's; ``convention`` and ``variables``: the netCDF variable names
    (:mod:`climseg.data.variables`)."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise UserError("no input files given")
    paths = expand_inputs(paths, SUFFIXES + HDF5_SUFFIXES)
    position = {os.path.abspath(p): k for k, p in enumerate(paths)}
    sources = [InputFile(p, channels, convention, variables) for p in paths if not is_netcdf(p)]
    netcdf = [p for p in paths if is_netcdf(p)]
    if netcdf:
        for series in open_input_series(netcdf, *_wanted(list(channels)), convention, variables):
            sources += [InputFile.series_output(series, out, channels) for out in series.outputs]
    sources.sort(key=lambda s: position[os.path.abspath(s.path)])
    for s in sources:
        if not s.times:
            raise DataError(f"{s.path}: its time axis has length 0 (no time steps to segment)")
    stems = {}
    for s in sources:
        if s.stem in stems:
            raise UserError(f"{s.path}: has the same name as {stems[s.stem]}; their outputs would collide")
        stems[s.stem] = s.path
    return [(i, s) for i, s in enumerate(sources) if i % world == rank]


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
