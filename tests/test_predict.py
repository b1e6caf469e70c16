"""Inference on DeepCAM HDF5 and CAM5 netCDF files: masks, maps, summary."""

import json
import os

import h5py
import netCDF4
import numpy as np
import pytest

from climseg.constants import CHANNELS
from climseg.data import list_samples, read_sample
from climseg.data.netcdf import write_cam5_netcdf
from climseg.data.synthetic import generate_sample, grid
from climseg.errors import CheckpointError, DataError, UserError
from climseg.predict import predict
from climseg.train import train


@pytest.fixture(scope="module")
def checkpoint(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(dict(data=small_dataset, out=str(out), epochs=1, batch_size=2, progress=False), log=lambda *a: None)
    return str(out / "last.pt")


def quiet(*a, **k):
    pass


def test_hdf5_inputs(checkpoint, small_dataset, tmp_path):
    files = list_samples(os.path.join(small_dataset, "validation"))[:2]
    summary = predict(checkpoint, files, str(tmp_path), log=quiet, progress=False)
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        with h5py.File(tmp_path / f"{stem}_mask.h5") as m:
            mask = m["mask"][...]
            assert mask.shape == (32, 48) and mask.dtype == np.uint8 and mask.max() <= 2
            assert m["mask"].attrs["flag_meanings"] == "background tropical_cyclone atmospheric_river"
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "summary.json") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(summary))
    step = saved["inputs"][0]["time_steps"][0]
    assert set(step["fractions"]) == {"background", "tropical_cyclone", "atmospheric_river"}
    assert abs(sum(step["fractions"].values()) - 1) < 1e-4
    assert "iou_vs_labels" in step and {"cyclones", "rivers", "map"} <= set(step)
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_netcdf_with_time_descending_latitude_and_odd_size(checkpoint, tmp_path):
    h, w = 30, 45  # not multiples of the network's stride: padded and cropped
    lat, lon = grid(h, w)
    steps = np.stack([generate_sample(h, w, seed=1, index=i)[0] for i in range(3)])
    up = tmp_path / "up.nc"
    down = tmp_path / "down.nc"
    write_cam5_netcdf(str(up), steps, lat, lon)
    write_cam5_netcdf(str(down), steps[:, ::-1], lat[::-1], lon)
    out = tmp_path / "out"
    summary = predict(checkpoint, [str(up), str(down)], str(out), log=quiet, progress=False)
    with netCDF4.Dataset(out / "up_mask.nc") as a, netCDF4.Dataset(out / "down_mask.nc") as b:
        assert a["mask"].dimensions == ("time", "lat", "lon") and a["mask"].shape == (3, h, w)
        np.testing.assert_allclose(b["lat"][:], lat[::-1])
        np.testing.assert_array_equal(a["mask"][:], b["mask"][:][:, ::-1])
        assert list(a["mask"].flag_values) == [0, 1, 2]
        assert a["time"].units.startswith("days since")
    assert sorted(n for n in os.listdir(out) if n.startswith("up_t")) == [
        "up_t0000.png",
        "up_t0001.png",
        "up_t0002.png",
    ]
    times = [s["time"] for s in summary["inputs"][0]["time_steps"]]
    assert times[0].startswith("2000-01-01") and len(set(times)) == 3


def test_netcdf_matches_hdf5(checkpoint, small_dataset, tmp_path):
    path = list_samples(os.path.join(small_dataset, "validation"))[0]
    data, _ = read_sample(path)
    lat, lon = grid(*data.shape[:2])
    nc = tmp_path / "same.nc"
    write_cam5_netcdf(str(nc), data, lat, lon)
    predict(checkpoint, [path, str(nc)], str(tmp_path / "out"), maps=False, log=quiet, progress=False)
    stem = os.path.splitext(os.path.basename(path))[0]
    with h5py.File(tmp_path / "out" / f"{stem}_mask.h5") as a, netCDF4.Dataset(tmp_path / "out" / "same_mask.nc") as b:
        assert b["mask"].dimensions == ("lat", "lon")
        np.testing.assert_array_equal(a["mask"][...], b["mask"][:])


def test_netcdf_grids_of_other_shapes(checkpoint, tmp_path):
    import climseg.data.netcdf as nc_mod

    h, w = 32, 48
    lat, lon = grid(h, w)
    fields = generate_sample(h, w, seed=2, index=0)[0]
    # -180..180 longitudes stored from 0 east: unwrapped for plotting, kept as they are in the mask file
    shifted = ((lon + 180.0) % 360.0) - 180.0
    path = tmp_path / "shifted.nc"
    write_cam5_netcdf(str(path), fields, lat, shifted)
    info = nc_mod.open_netcdf(str(path))
    assert info.periodic and np.all(np.diff(info.lon) > 0)
    predict(checkpoint, [str(path)], str(tmp_path / "out"), log=quiet, progress=False)
    with netCDF4.Dataset(tmp_path / "out" / "shifted_mask.nc") as m:
        np.testing.assert_allclose(m["lon"][:], shifted)
    # a regional grid does not wrap around
    regional = tmp_path / "regional.nc"
    write_cam5_netcdf(str(regional), fields[8:24, 4:28], lat[8:24], lon[4:28])
    assert not nc_mod.open_netcdf(str(regional)).periodic
    summary = predict(checkpoint, [str(regional)], str(tmp_path / "out2"), log=quiet, progress=False)
    assert summary["inputs"][0]["time_steps"][0]["fractions"]["background"] > 0
    scrambled = tmp_path / "scrambled.nc"
    write_cam5_netcdf(str(scrambled), fields[[3, 1, 2] + list(range(4, h))], lat[[3, 1, 2] + list(range(4, h))], lon)
    with pytest.raises(DataError, match="latitudes are not monotonic"):
        predict(checkpoint, [str(scrambled)], str(tmp_path / "out3"), log=quiet, progress=False)


def test_bad_inputs(checkpoint, small_dataset, tmp_path):
    good = list_samples(os.path.join(small_dataset, "validation"))[0]
    with pytest.raises(DataError, match="nothing.h5: no such file"):
        predict(checkpoint, [good, str(tmp_path / "nothing.h5")], str(tmp_path / "o1"), log=quiet, progress=False)
    assert not (tmp_path / "o1").exists()  # checked before anything was written
    other = tmp_path / "copy"
    other.mkdir()
    twin = other / os.path.basename(good)
    twin.write_bytes(open(good, "rb").read())
    with pytest.raises(UserError, match="same name"):
        predict(checkpoint, [good, str(twin)], str(tmp_path / "o2"), log=quiet, progress=False)
    lat, lon = grid(32, 48)
    fields = np.ones((32, 48, 16), np.float32)
    partial = tmp_path / "partial.nc"
    write_cam5_netcdf(str(partial), fields[..., :3], lat, lon, channels=CHANNELS[:3])
    with pytest.raises(DataError, match="partial.nc: missing variable\\(s\\) UBOT, VBOT"):
        predict(checkpoint, [str(partial)], str(tmp_path / "o3"), log=quiet, progress=False)
    fields[4, 5, 7] = np.nan
    nan = tmp_path / "nan.nc"
    write_cam5_netcdf(str(nan), fields, lat, lon)
    with pytest.raises(DataError, match="nan.nc: variable PSL holds"):
        predict(checkpoint, [str(nan)], str(tmp_path / "o4"), log=quiet, progress=False)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        predict(str(tmp_path / "none.pt"), [good], str(tmp_path / "o5"), log=quiet, progress=False)
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(DataError, match="junk.h5: neither a readable HDF5 nor a netCDF file"):
        predict(checkpoint, [str(junk)], str(tmp_path / "o6"), log=quiet, progress=False)


def test_channel_subset_needs_only_those_variables(small_dataset, tmp_path):
    out = tmp_path / "run"
    train(
        dict(data=small_dataset, out=str(out), epochs=1, batch_size=5, channels="U850,V850,PSL", progress=False),
        log=quiet,
    )
    lat, lon = grid(32, 48)
    fields = generate_sample(32, 48, seed=3, index=0)[0][..., [1, 2, 7]]
    path = tmp_path / "winds.nc"
    write_cam5_netcdf(str(path), fields, lat, lon, channels=["U850", "V850", "PSL"])
    summary = predict(str(out / "last.pt"), [str(path)], str(tmp_path / "pred"), log=quiet, progress=False)
    assert summary["channels"] == ["U850", "V850", "PSL"]
    assert (tmp_path / "pred" / "winds.png").exists() and (tmp_path / "pred" / "winds_mask.nc").exists()
