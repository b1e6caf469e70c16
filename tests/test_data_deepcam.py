"""Reading the MLPerf DeepCAM layout: files written here with plain h5py, exactly
as the reference data is laid out, then read back through DeepCAMDataset."""

import os

import h5py
import numpy as np
import pytest
import torch

from climseg.constants import CHANNELS
from climseg.data import DeepCAMDataset, channel_indices, read_sample, read_stats
from climseg.errors import DataError, UserError

H, W = 16, 32


def write_deepcam_file(path, data, labels, label_dtype=np.int32):
    with h5py.File(path, "w") as f:
        f.create_dataset("climate/data", data=data.astype(np.float32))
        f.create_dataset("climate/labels_0", data=labels.astype(label_dtype))


def write_stats_file(path, data_stack, with_moments=True):
    flat = data_stack.reshape(-1, data_stack.shape[-1]).astype(np.float64)
    with h5py.File(path, "w") as f:
        f.create_dataset("climate/minval", data=flat.min(0).astype(np.float32))
        f.create_dataset("climate/maxval", data=flat.max(0).astype(np.float32))
        if with_moments:
            f.create_dataset("climate/mean", data=flat.mean(0).astype(np.float32))
            f.create_dataset("climate/sqmean", data=(flat**2).mean(0).astype(np.float32))


@pytest.fixture
def deepcam_folder(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for i in range(3):
        data = rng.normal(size=(H, W, 16)) * np.arange(1, 17) + 100 * np.arange(16)
        labels = rng.integers(0, 3, size=(H, W))
        write_deepcam_file(tmp_path / f"data-2106-01-0{i + 1}-00-1.h5", data, labels)
        samples.append((data.astype(np.float32), labels))
    write_stats_file(tmp_path / "stats.h5", np.stack([s[0] for s in samples]))
    return tmp_path, samples


def test_reads_exact_layout_with_minmax(deepcam_folder):
    root, samples = deepcam_folder
    ds = DeepCAMDataset(str(root))
    assert len(ds) == 3 and ds.shape == (H, W)
    stats = read_stats(str(root / "stats.h5"))
    for i, (raw, labels) in enumerate(samples):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (16, H, W)
        assert y.dtype == torch.int64 and y.shape == (H, W)
        expected = (raw - stats.minval.astype(np.float32)) / (stats.maxval - stats.minval).astype(np.float32)
        np.testing.assert_allclose(x.numpy(), expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(y.numpy(), labels)
    lo = torch.stack([ds[i][0] for i in range(3)]).amin(dim=(0, 2, 3))
    hi = torch.stack([ds[i][0] for i in range(3)]).amax(dim=(0, 2, 3))
    assert torch.allclose(lo, torch.zeros(16), atol=1e-5) and torch.allclose(hi, torch.ones(16), atol=1e-5)


def test_zscore_and_channel_selection(deepcam_folder):
    root, samples = deepcam_folder
    ds = DeepCAMDataset(str(root), channels=["TMQ", "psl", "ZBOT"], normalization="zscore")
    assert ds.channels == ["TMQ", "PSL", "ZBOT"]
    stack = np.stack([s[0] for s in samples]).reshape(-1, 16).astype(np.float64)
    idx = [0, 7, 15]
    mean, std = stack.mean(0)[idx], stack.std(0)[idx]
    x, _ = ds[1]
    expected = (samples[1][0][..., idx] - mean) / std
    np.testing.assert_allclose(x.numpy(), expected.transpose(2, 0, 1), rtol=1e-3, atol=1e-3)


def test_stats_found_in_parent_and_labels_as_float(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    data = np.random.default_rng(1).normal(size=(H, W, 16))
    labels = np.zeros((H, W))
    labels[2:5, 3:9] = 2
    write_deepcam_file(train / "a.h5", data, labels, label_dtype=np.float32)
    write_stats_file(tmp_path / "stats.h5", data[None])
    ds = DeepCAMDataset(str(train))
    assert ds.stats.path == str(tmp_path / "stats.h5")
    assert int((ds[0][1] == 2).sum()) == 18


def test_channel_indices():
    assert channel_indices(None) == list(range(16))
    assert channel_indices("TMQ,U850 v850") == [0, 1, 2]
    assert channel_indices([15, "ts"]) == [15, 11]
    with pytest.raises(UserError, match="unknown channel 'FOO'"):
        channel_indices(["FOO"])
    with pytest.raises(UserError, match="twice"):
        channel_indices(["TMQ", "tmq"])


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("not_hdf5", "not a readable HDF5 file"),
        ("no_data", "missing dataset climate/data"),
        ("no_labels", "missing dataset climate/labels_0"),
        ("channels", r"has shape \(16, 32, 5\); expected \(height, width, 16\)"),
        ("nan", "NaN/Inf value"),
        ("labels_range", r"outside 0..2 \(found \[7\]\)"),
        ("labels_shape", "climate/labels_0 has shape"),
        ("labels_fraction", "not class indices"),
    ],
)
def test_bad_files_name_file_and_problem(tmp_path, case, message):
    path = tmp_path / "bad.h5"
    data = np.ones((H, W, 16), np.float32)
    labels = np.zeros((H, W), np.int32)
    if case == "not_hdf5":
        path.write_text("hello")
    elif case == "no_data":
        with h5py.File(path, "w") as f:
            f.create_dataset("climate/labels_0", data=labels)
    elif case == "no_labels":
        with h5py.File(path, "w") as f:
            f.create_dataset("climate/data", data=data)
    elif case == "channels":
        write_deepcam_file(path, data[..., :5], labels)
    elif case == "nan":
        data[3, 4, 7] = np.nan
        write_deepcam_file(path, data, labels)
    elif case == "labels_range":
        labels[0, 0] = 7
        write_deepcam_file(path, data, labels)
    elif case == "labels_shape":
        write_deepcam_file(path, data, labels[:-1])
    elif case == "labels_fraction":
        write_deepcam_file(path, data, labels.astype(np.float32) + 0.5, label_dtype=np.float32)
    with pytest.raises(DataError, match=message) as info:
        read_sample(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_nan_names_channel(tmp_path):
    data = np.ones((H, W, 16), np.float32)
    data[0, 0, CHANNELS.index("PSL")] = np.inf
    write_deepcam_file(tmp_path / "x.h5", data, np.zeros((H, W)))
    with pytest.raises(DataError, match="channel\\(s\\) PSL"):
        read_sample(str(tmp_path / "x.h5"))


def test_dataset_errors(tmp_path, deepcam_folder):
    with pytest.raises(DataError, match="no such folder"):
        DeepCAMDataset(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .h5 sample files"):
        DeepCAMDataset(str(empty))
    lone = tmp_path / "lone" / "deeper"
    lone.mkdir(parents=True)
    write_deepcam_file(lone / "a.h5", np.ones((H, W, 16)), np.zeros((H, W)))
    with pytest.raises(DataError, match="no stats.h5"):
        DeepCAMDataset(str(lone))
    root, _ = deepcam_folder
    write_deepcam_file(root / "data-2106-01-09-00-1.h5", np.ones((H * 2, W, 16)), np.zeros((H * 2, W)))
    ds = DeepCAMDataset(str(root))
    with pytest.raises(DataError, match="is 32x32 but the first sample is 16x32"):
        ds[3]


def test_degenerate_stats(tmp_path):
    write_deepcam_file(tmp_path / "a.h5", np.ones((H, W, 16)), np.zeros((H, W)))
    write_stats_file(tmp_path / "stats.h5", np.ones((1, H, W, 16)), with_moments=False)
    with pytest.raises(DataError, match="maxval is not above minval"):
        DeepCAMDataset(str(tmp_path))
    data = np.random.default_rng(0).normal(size=(1, H, W, 16))
    write_stats_file(tmp_path / "stats.h5", data, with_moments=False)
    with pytest.raises(DataError, match="zscore normalization needs climate/mean"):
        DeepCAMDataset(str(tmp_path), normalization="zscore")
    os.remove(tmp_path / "stats.h5")
    (tmp_path / "stats.h5").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="stats.h5: not a readable HDF5 file"):
        DeepCAMDataset(str(tmp_path))
