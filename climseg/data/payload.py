"""Where the payloads of a sample file lie, for readers that read by offset.

``climseg._C.load_batch`` (the C++ reader of :class:`~climseg.data.loader.FastLoader` and
:class:`~climseg.data.climatenet_loader.NetCDFLoader`) reads a contiguous, little-endian dataset
straight from its file at a byte offset; h5py finds those offsets once per file. This module holds
the type codes that reader understands (:data:`LABEL_CODES`) and :class:`PayloadLayout`, the
offsets, codes and shape of a DeepCAM sample (``climate/data``, ``climate/labels_0``). Chunked,
compressed or big-endian payloads have offset -1: the loaders read them with h5py instead.
"""

import h5py
import numpy as np

from climseg.constants import CHANNELS
from climseg.data.deepcam import DATA_KEY, LABELS_KEY

#: integer (and float) label dtypes -> the label type code of ``climseg._C.load_batch``
LABEL_CODES = {
    np.dtype(t): i
    for i, t in enumerate(
        ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
    )
}


class PayloadLayout:
    """Where a DeepCAM sample's payloads live in its file (byte offsets, or -1 where they cannot be read by
    offset), their type codes for ``climseg._C.load_batch``, the grid shape, and ``error``: why the file
    cannot be used (None when it can). Found once per file with h5py."""

    __slots__ = ("data_offset", "label_offset", "data_code", "label_code", "shape", "error")

    def __init__(self, path, want_labels):
        self.error = None
        self.data_offset = self.label_offset = -1
        self.data_code, self.label_code, self.shape = 0, 0, None
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            self.error = f"not a readable HDF5 file ({str(exc).splitlines()[0]})"
            return
        with f:
            if DATA_KEY not in f:
                self.error = f"missing dataset {DATA_KEY}"
                return
            d = f[DATA_KEY]
            if d.ndim != 3 or d.shape[2] != len(CHANNELS):
                self.error = f"{DATA_KEY} has shape {tuple(d.shape)}; expected (height, width, {len(CHANNELS)})"
                return
            if d.dtype not in (np.dtype("<f4"), np.dtype("<f8"), np.dtype(">f4"), np.dtype(">f8")):
                self.error = f"{DATA_KEY} has dtype {d.dtype}; expected floating point"
                return
            self.shape = tuple(d.shape[:2])
            self.data_code = 1 if d.dtype.itemsize == 8 else 0
            if d.dtype.byteorder in ("<", "=", "|") and d.chunks is None and d.compression is None:
                offset = d.id.get_offset()
                self.data_offset = -1 if offset is None else int(offset)
            if want_labels:
                if LABELS_KEY not in f:
                    self.error = f"missing dataset {LABELS_KEY}"
                    return
                lab = f[LABELS_KEY]
                if tuple(lab.shape) != self.shape:
                    self.error = f"{LABELS_KEY} has shape {tuple(lab.shape)}; expected {self.shape}"
                    return
                native = lab.dtype.newbyteorder("=")
                if native not in LABEL_CODES:
                    self.error = f"{LABELS_KEY} has dtype {lab.dtype}; expected integers"
                    return
                self.label_code = LABEL_CODES[native]
                if lab.dtype.byteorder in ("<", "=", "|") and lab.chunks is None and lab.compression is None:
                    offset = lab.id.get_offset()
                    self.label_offset = -1 if offset is None else int(offset)
