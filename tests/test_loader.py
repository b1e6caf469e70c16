"""FastLoader and climseg._C against the NumPy reference, order and sharding, bad data."""

import os

import h5py
import numpy as np
import pytest
import torch

from climseg.data import generate_dataset, list_samples
from climseg.data import loader as loader_mod
from climseg.data.loader import FastLoader, reference_batch
from climseg.errors import DataError

needs_ext = pytest.mark.skipif(not loader_mod.extension_available(), reason="climseg._C not built")


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory):
    """Non-square samples whose width is no multiple of anything, 9 training files."""
    root = tmp_path_factory.mktemp("odd") / "ds"
    generate_dataset(
        str(root), samples=11, height=48, width=80, seed=3, validation_fraction=2 / 11, workers=1, progress=False
    )
    return str(root)


def bits(batch):
    """The raw bits of a (B, C, H, W) batch in NHWC order, for exact comparison."""
    x = batch.permute(0, 2, 3, 1).contiguous()
    return x.view(torch.int32) if x.dtype == torch.float32 else x.view(torch.int16)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("channels", [None, ["PSL", "TMQ", "ZBOT"]])
def test_extension_equals_numpy_bit_for_bit(odd_dataset, dtype, layout, channels):
    train = os.path.join(odd_dataset, "train")
    for batch_size, threads in ((4, 3), (1, 2), (3, 1)):
        fl = FastLoader(
            train,
            batch_size,
            dtype=dtype,
            layout=layout,
            channels=channels,
            shuffle=False,
            threads=threads,
            normalization="zscore" if channels else "minmax",
        )
        seen = 0
        for data, labels in fl:
            ref, ref_labels = reference_batch(
                fl.files[seen : seen + data.shape[0]], fl.channel_index, fl.shift, fl.scale, dtype, layout
            )
            assert data.shape == ref.shape and data.dtype == dtype
            assert data.is_contiguous(memory_format=torch.channels_last) == (layout == "nhwc")
            assert torch.equal(bits(data), bits(ref))
            assert torch.equal(labels, ref_labels)
            seen += data.shape[0]
        assert seen == 9 // batch_size * batch_size


@needs_ext
@pytest.mark.parametrize(
    "dtype,layout,channels",
    [(torch.bfloat16, "nhwc", None), (torch.float16, "nchw", ["PSL", "TMQ"]), (torch.float32, "nchw", None)],
)
def test_device_side_conversion_equals_the_host_path(odd_dataset, dtype, layout, channels, monkeypatch):
    """convert_on="device": the reader hands over raw float32 NHWC and climseg.ops.normalize_input
    (here the CUDA kernel in its CPU emulation) normalises, casts and lays out: bit for bit the host path."""
    pytest.importorskip("climseg._cuda_emulated")
    monkeypatch.setenv("CLIMSEG_BACKEND", "cuda")
    train = os.path.join(odd_dataset, "train")
    kwargs = dict(dtype=dtype, layout=layout, channels=channels, shuffle=False, normalization="zscore")
    host = FastLoader(train, 3, convert_on="host", **kwargs)
    device = FastLoader(train, 3, convert_on="device", **kwargs)
    assert device._read_dtype == torch.float32
    for (a, la), (b, lb) in zip(host, device):
        assert b.dtype == dtype and b.shape == a.shape and b.stride() == a.stride()
        assert torch.equal(bits(a), bits(b)) and torch.equal(la, lb)


@needs_ext
def test_chunked_compressed_and_other_dtypes_fall_back_to_h5py(odd_dataset, tmp_path):
    src = list_samples(os.path.join(odd_dataset, "train"))[:3]
    made = []
    for i, path in enumerate(src):
        with h5py.File(path) as f:
            data, labels = f["climate/data"][...], f["climate/labels_0"][...]
        out = tmp_path / f"s{i}.h5"
        with h5py.File(out, "w") as f:
            if i == 0:
                f.create_dataset("climate/data", data=data, chunks=(8, 16, 16), compression="gzip")
                f.create_dataset("climate/labels_0", data=labels.astype(np.uint8), compression="gzip")
            elif i == 1:
                f.create_dataset("climate/data", data=data.astype(">f4"))
                f.create_dataset("climate/labels_0", data=labels.astype(np.float32))
            else:
                f.create_dataset("climate/data", data=data.astype(np.float64))
                f.create_dataset("climate/labels_0", data=labels.astype(np.int64))
        made.append(str(out))
    stats = os.path.join(odd_dataset, "stats.h5")
    fl = FastLoader(made, 3, stats=stats, dtype=torch.float32, shuffle=False)
    data, labels = next(iter(fl))
    ref, ref_labels = reference_batch(made, fl.channel_index, fl.shift, fl.scale, torch.float32)
    assert torch.equal(bits(data), bits(ref)) and torch.equal(labels, ref_labels)


def test_reference_path_without_extension(odd_dataset, monkeypatch):
    monkeypatch.setattr(loader_mod, "_C", None)
    fl = FastLoader(os.path.join(odd_dataset, "train"), 2, dtype=torch.bfloat16, shuffle=False)
    data, labels = next(iter(fl))
    ref, ref_labels = reference_batch(fl.files[:2], fl.channel_index, fl.shift, fl.scale, torch.bfloat16)
    assert torch.equal(bits(data), bits(ref)) and torch.equal(labels, ref_labels)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_each_sample_once_per_epoch_across_ranks(odd_dataset, world):
    train = os.path.join(odd_dataset, "train")
    for drop_last in (True, False):
        orders = {}
        for epoch in (0, 1):
            seen = []
            for rank in range(world):
                fl = FastLoader(train, 1, rank=rank, world_size=world, drop_last=drop_last, seed=5, dtype=torch.float32)
                fl.set_epoch(epoch)
                paths = _paths_of(fl)
                got = [labels for _, labels in fl]
                assert len(fl) == len(paths) == len(got)
                for p, labels in zip(paths, got):  # the yielded samples are the planned files
                    assert torch.equal(labels[0], reference_batch([p], fl.channel_index, fl.shift, fl.scale)[1][0])
                seen += [fl.files.index(p) for p in paths]
            if drop_last:
                assert len(seen) == len(set(seen)) == 9 // world * world
            else:
                assert sorted(seen) == list(range(9))
            orders[epoch] = seen
        assert orders[0] != orders[1]  # shuffled anew each epoch


def _paths_of(fl):
    """The files a loader yields, in order (read from the order, not the data)."""
    return (
        [fl.files[i] for i in fl._my_indices()][: len(fl) * fl.batch_size]
        if fl.drop_last
        else [fl.files[i] for i in fl._my_indices()]
    )


def test_unshuffled_order_is_sorted_and_resume_position(odd_dataset):
    train = os.path.join(odd_dataset, "train")
    fl = FastLoader(train, 2, shuffle=False, dtype=torch.float32)
    assert fl.files == sorted(fl.files)
    all_batches = [d for d, _ in fl]
    fl.set_epoch(0, start_batch=2)
    rest = [d for d, _ in fl]
    assert len(rest) == len(all_batches) - 2
    assert all(torch.equal(a, b) for a, b in zip(all_batches[2:], rest))


def _corrupt_copy(odd_dataset, tmp_path, how):
    files = list_samples(os.path.join(odd_dataset, "train"))[:5]
    folder = tmp_path / how
    folder.mkdir()
    out = []
    for path in files:
        dst = folder / os.path.basename(path)
        dst.write_bytes(open(path, "rb").read())
        out.append(str(dst))
    bad = out[2]
    if how == "truncated":
        with open(bad, "r+b") as f:
            f.truncate(os.path.getsize(bad) - 20000)
    elif how == "nan":
        with h5py.File(bad, "r+") as f:
            f["climate/data"][3, 4, 7] = np.nan
    elif how == "labels":
        with h5py.File(bad, "r+") as f:
            f["climate/labels_0"][0, 0] = 7
    elif how == "missing_dataset":
        with h5py.File(bad, "r+") as f:
            del f["climate/labels_0"]
    elif how == "garbage":
        with open(bad, "wb") as f:
            f.write(b"not an hdf5 file at all" * 100)
    elif how == "shape":
        with h5py.File(bad, "w") as f:
            f["climate/data"] = np.zeros((16, 80, 16), np.float32)
            f["climate/labels_0"] = np.zeros((16, 80), np.int32)
    return out, bad


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "truncated"),
        ("nan", "NaN/Inf value in channel PSL"),
        ("labels", "outside 0..2 (found 7)"),
        ("missing_dataset", "missing dataset climate/labels_0"),
        ("garbage", "not a readable HDF5 file"),
        ("shape", "is 16x80 but the first sample is 48x80"),
    ],
)
def test_bad_files_by_policy(odd_dataset, tmp_path, how, message):
    files, bad = _corrupt_copy(odd_dataset, tmp_path, how)
    stats = os.path.join(odd_dataset, "stats.h5")
    with pytest.raises(DataError) as info:
        for _ in FastLoader(files, 2, stats=stats, shuffle=False, dtype=torch.float32):
            pass
    assert str(info.value).startswith(bad) and message in str(info.value)
    logged = []
    fl = FastLoader(files, 2, stats=stats, shuffle=False, dtype=torch.float32, on_bad_sample="skip", log=logged.append)
    for epoch in range(2):
        fl.set_epoch(epoch)
        batches = list(fl)
        assert [d.shape[0] for d in [b[0] for b in batches]] == [2, 2]  # refilled from the next files
    assert fl.skipped == 1 and list(fl.bad) == [bad]
    assert len(logged) == 1 and bad in logged[0]  # logged once, not once per epoch


def test_missing_manifest_files_reported_at_start(odd_dataset, tmp_path):
    import json

    folder = tmp_path / "staged"
    folder.mkdir()
    files = list_samples(os.path.join(odd_dataset, "train"))[:4]
    for p in files[:3]:
        (folder / os.path.basename(p)).write_bytes(open(p, "rb").read())
    (folder / "climseg-manifest.json").write_text(
        json.dumps(dict(files=[dict(name=os.path.basename(p)) for p in files]))
    )
    stats = os.path.join(odd_dataset, "stats.h5")
    with pytest.raises(DataError, match="1 file\\(s\\) listed but missing"):
        FastLoader(str(folder), 1, stats=stats)
    fl = FastLoader(str(folder), 1, stats=stats, on_bad_sample="skip", log=lambda m: None)
    assert fl.skipped == 1 and len([b for b in fl]) == 3


def test_nothing_hangs_when_the_consumer_stops_early(odd_dataset):
    fl = FastLoader(os.path.join(odd_dataset, "train"), 1, prefetch=1, dtype=torch.float32)
    for i, _ in enumerate(fl):
        if i == 1:
            break
    assert sum(1 for _ in fl) == 9


@pytest.mark.skipif(
    os.environ.get("CLIMSEG_FORCE_CPP_BUILD") != "1", reason="only where the build promised the extension"
)
def test_extension_was_built():
    from climseg.data.loader import extension_available

    assert extension_available(), "climseg._C is missing although CLIMSEG_FORCE_CPP_BUILD=1"


def test_trainers_find_set_epoch_on_the_sampler(odd_dataset):
    """Issue 28, item 3: trainers (PyTorch Lightning's _set_sampler_epoch) call set_epoch on
    ``loader.sampler`` or ``loader.batch_sampler.sampler``; before, FastLoader had neither, so
    every epoch came in the same order."""
    train = os.path.join(odd_dataset, "train")
    fl = FastLoader(train, 2, threads=1, seed=5)

    def trainer_sets_epoch(loader, epoch):  # what Lightning 2.x does, without importing it
        for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
            if callable(getattr(obj, "set_epoch", None)):
                obj.set_epoch(epoch)

    orders = []
    for epoch in range(3):
        trainer_sets_epoch(fl, epoch)
        orders.append([fl.files[i] for i in fl.sampler])
        assert len(fl.sampler) == len(orders[-1]) == len(fl.files)
        assert sum(d.shape[0] for d, _ in fl) == len(fl) * 2 == 8  # drop_last: whole batches of 2
    assert orders[0] != orders[1] != orders[2]
    fl.set_epoch(1, start_batch=2)  # resuming mid-epoch; the sampler's set_epoch starts the epoch over
    assert [fl.files[i] for i in fl.epoch_indices()] == orders[1][4:]
    fl.sampler.set_epoch(1)
    assert fl.start_batch == 0


def test_ranks_default_to_one_process_and_must_come_in_pairs(odd_dataset):
    from climseg.data.sampling import resolve_ranks
    from climseg.errors import ConfigError

    train = os.path.join(odd_dataset, "train")
    fl = FastLoader(train, 1, threads=1)
    assert (fl.rank, fl.world_size) == (0, 1)  # no torch.distributed running: every file
    assert len(fl) == len(fl.files)
    assert resolve_ranks(None, 1) == (0, 1) and resolve_ranks(2, 3) == (2, 3)
    with pytest.raises(ConfigError, match="without world_size"):
        resolve_ranks(1, None)
    with pytest.raises(ConfigError, match="without rank"):
        FastLoader(train, 1, world_size=2)
    with pytest.raises(ConfigError, match="outside"):
        FastLoader(train, 1, rank=2, world_size=2)
    data, labels = next(iter(fl))
    assert data.shape == (1, 16, 48, 80) and data.is_contiguous(memory_format=torch.channels_last)
    assert labels.shape == (1, 48, 80) and labels.dtype == torch.int64
