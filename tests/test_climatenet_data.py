"""ClimateNet-layout data (netCDF with LABELS): indexing, reading, normalisation from a config.json
fields block or computed statistics, the NetCDFLoader against the Dataset, and training CGNet on it
end to end, then predicting."""

import json
import os

import numpy as np
import pytest
import torch

from climseg.data.climatenet import (
    ClimateNetDataset,
    find_layout,
    index_folder,
    open_climatenet,
    read_step,
    write_climatenet_file,
)
from climseg.data.climatenet_loader import NetCDFLoader
from climseg.errors import DataError

H, W = 32, 40
LAT = np.linspace(-88.0, 88.0, H)
LON = np.arange(W) * 360.0 / W
FIELDS = {"TMQ": (19.2, 15.8), "U850": (1.5, 8.3), "V850": (0.25, 6.2), "PSL": (100814.4, 1461.2)}


def _fields(rng, t):
    means = np.array([m for m, _ in FIELDS.values()], np.float32)
    stds = np.array([s for _, s in FIELDS.values()], np.float32)
    return (rng.standard_normal((t, H, W, 4)).astype(np.float32) * stds + means).astype(np.float32)


def _labels(rng, t):
    lab = np.zeros((t, H, W), np.int64)
    lab[:, 5:9, 10:14] = 1
    lab[:, 18:22, :] = 2
    return np.where(rng.random((t, H, W)) < 0.05, rng.integers(0, 3, (t, H, W)), lab)


@pytest.fixture()
def climatenet_dir(tmp_path):
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    root = tmp_path / "cn"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    truth = {}
    for name, t in (("a", 3), ("b", 2)):
        f, lab = _fields(rng, t), _labels(rng, t)
        write_climatenet_file(str(root / "train" / f"{name}.nc"), f, lab, LAT, LON)
        truth[name] = (f, lab)
    # a file stored north to south, and one without a time dimension
    f, lab = _fields(rng, 2), _labels(rng, 2)
    write_climatenet_file(str(root / "train" / "c.nc"), f[:, ::-1], lab[:, ::-1], LAT[::-1], LON)
    truth["c"] = (f, lab)
    f, lab = _fields(rng, 1), _labels(rng, 1)
    write_climatenet_file(str(root / "test" / "d.nc"), f[0], lab[0], LAT, LON)
    truth["d"] = (f, lab)
    return root, truth


def test_index_and_read(climatenet_dir):
    root, truth = climatenet_dir
    train_dir, val_dir = find_layout(str(root))
    assert val_dir.endswith("test")
    samples = index_folder(train_dir, ["PSL", "TMQ"])
    assert [os.path.basename(s.path) for s in samples] == ["a.nc"] * 3 + ["b.nc"] * 2 + ["c.nc"] * 2
    for s in samples:
        name = os.path.basename(s.path)[0]
        fields, lab = read_step(s)
        np.testing.assert_array_equal(fields, truth[name][0][s.step][..., [3, 0]])
        np.testing.assert_array_equal(lab, truth[name][1][s.step])
    (d,) = index_folder(val_dir, ["TMQ"])
    assert d.step == -1
    np.testing.assert_array_equal(read_step(d)[0][..., 0], truth["d"][0][0, ..., 0])


def test_normalisation_from_config_or_computed(climatenet_dir):
    root, truth = climatenet_dir
    # computed: zscore from the training split's own mean and std (every step: 7 < 64)
    train, _, stats, idx, norm = open_climatenet(str(root), None, "zscore", log=lambda *a: None)
    ds = ClimateNetDataset(train, stats, idx, norm)
    assert ds.channels == ["TMQ", "U850", "V850", "PSL"]
    everything = np.concatenate([truth[n][0].reshape(-1, 4) for n in "abc"]).astype(np.float64)
    np.testing.assert_allclose(ds.shift.reshape(-1), everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(1 / ds.scale.reshape(-1), everything.std(0), rtol=1e-4)
    labels = np.concatenate([truth[n][1].reshape(-1) for n in "abc"])
    np.testing.assert_allclose(stats.class_frequencies, np.bincount(labels, minlength=3) / labels.size)
    # a ClimateNet config.json: its fields' order and mean/std, z-score whatever was asked
    (root / "config.json").write_text(
        json.dumps({"fields": {k: {"mean": m, "std": s} for k, (m, s) in reversed(list(FIELDS.items()))}})
    )
    train, _, stats, idx, norm = open_climatenet(str(root), None, "minmax", log=lambda *a: None)
    ds = ClimateNetDataset(train, stats, idx, norm)
    assert ds.channels == ["PSL", "V850", "U850", "TMQ"] and norm == "zscore"
    x, y = ds[0]
    raw = truth["a"][0][0][..., [3, 2, 1, 0]].transpose(2, 0, 1)
    mean = np.array([FIELDS[c][0] for c in ds.channels]).reshape(-1, 1, 1)
    std = np.array([FIELDS[c][1] for c in ds.channels]).reshape(-1, 1, 1)
    np.testing.assert_allclose(x.numpy(), (raw - mean) / std, rtol=1e-4, atol=1e-4)
    assert torch.equal(y, torch.from_numpy(truth["a"][1][0]))


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("offsets", [True, False])
def test_loader_matches_dataset(climatenet_dir, layout, offsets):
    from climseg.data.loader import extension_available

    root, truth = climatenet_dir
    # a compressed (chunked) file beside the contiguous ones: read with h5py whatever is asked
    rng = np.random.default_rng(5)
    write_climatenet_file(str(root / "train" / "z.nc"), _fields(rng, 2), _labels(rng, 2), LAT, LON, zlib=True)
    train, _, stats, idx, norm = open_climatenet(str(root), ["V850", "TMQ"], "minmax", log=lambda *a: None)
    ds = ClimateNetDataset(train, stats, idx, norm)
    loader = NetCDFLoader(ds, 3, dtype=torch.float32, layout=layout, shuffle=False, drop_last=False, threads=2)
    loader.use_offsets = offsets and extension_available()
    batches = list(loader)
    if loader.use_offsets:  # a.nc (3 steps), b.nc (2) by offset; c.nc (north to south, 2), z.nc (zlib, 2) by h5py
        assert loader.paths_used == {"offset": 5, "h5py": 4}
    else:
        assert loader.paths_used == {"offset": 0, "h5py": 9}
    assert [b[0].shape[0] for b in batches] == [3, 3, 3]
    data = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    ref = torch.stack([ds[i][0] for i in range(len(ds))])
    torch.testing.assert_close(data, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(labels, torch.stack([ds[i][1] for i in range(len(ds))]))
    # two ranks: disjoint shares covering the epoch
    shares = [
        NetCDFLoader(ds, 1, dtype=torch.float32, shuffle=True, seed=3, rank=r, world_size=2, drop_last=False)
        for r in range(2)
    ]
    seen = [tuple(b[0].flatten()[:4].tolist()) for s in shares for b in s]
    assert len(seen) == len(ds) == len(set(seen))


def test_bad_values_named(climatenet_dir):
    root, truth = climatenet_dir
    from climseg.data.loader import extension_available

    train, _, stats, idx, norm = open_climatenet(str(root), None, "zscore", log=lambda *a: None)
    loader = NetCDFLoader(
        ClimateNetDataset(train, stats, idx, norm), 7, dtype=torch.float32, shuffle=False, drop_last=False
    )
    f, lab = truth["b"]
    f = f.copy()
    f[1, 3, 4, 2] = np.nan
    write_climatenet_file(str(root / "train" / "b.nc"), f, lab, LAT, LON)
    samples = index_folder(str(root / "train"), ["TMQ", "U850", "V850", "PSL"])
    with pytest.raises(DataError, match=r"b\.nc\[1\].*V850"):
        read_step(samples[4])
    if extension_available():  # the C++ offset reader names the variable too
        with pytest.raises(DataError, match=r"b\.nc\[1\]: NaN/Inf value\(s\) in V850"):
            list(loader)
        assert loader.paths_used["offset"] > 0
    lab = lab.copy()
    lab[0, 0, 0] = 7
    write_climatenet_file(str(root / "train" / "b.nc"), truth["b"][0], lab, LAT, LON)
    with pytest.raises(DataError, match=r"b\.nc\[0\].*outside"):
        read_step(samples[3])


def test_train_cgnet_then_predict(climatenet_dir, tmp_path):
    from climseg.predict import predict
    from climseg.train import prepare

    root, _ = climatenet_dir
    out = tmp_path / "run"
    trainer = prepare(
        dict(
            data=str(root),
            network="cgnet",
            loss="ce+jaccard",
            epochs=1,
            batch_size=2,
            max_steps=2,
            out=str(out),
            progress=False,
            lr=1e-3,
            warmup_steps=0,
            precision="fp32",
        ),
        None,
        log=lambda *a: None,
    )
    trainer.fit()
    from climseg.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(out / "last.pt"))
    assert ckpt["model"]["config"] == "cgnet" and ckpt["data"]["channels"] == ["TMQ", "U850", "V850", "PSL"]
    summary = predict(
        str(out / "last.pt"),
        [str(root / "test" / "d.nc")],
        str(tmp_path / "pred"),
        maps=False,
        progress=False,
        log=lambda *a: None,
    )
    assert len(summary["inputs"]) == 1 and os.path.isfile(tmp_path / "pred" / "d_mask.nc")


def _random_cgnet_checkpoint(path, channels):
    from climseg.models import CGNet
    from climseg.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = CGNet(len(channels), 3, blocks_stage2=2, blocks_stage3=2)
    for m in model.modules():  # running statistics away from 0/1 so that classes differ
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
    model.stem[0].conv.conv.weight.data *= 3
    save_checkpoint(
        path,
        dict(
            model=dict(
                config="cgnet",
                in_channels=len(channels),
                num_classes=3,
                norm="batch",
                options=dict(blocks_stage2=2, blocks_stage3=2),
                state_dict=model.state_dict(),
            ),
            data=dict(
                channels=list(channels),
                normalization="zscore",
                shift=torch.tensor([FIELDS[c][0] for c in channels]),
                scale=torch.tensor([1 / FIELDS[c][1] for c in channels]),
            ),
        ),
    )


def test_predict_under_mpiexec_matches_one_process(tmp_path):
    import shutil
    import subprocess
    import sys

    import netCDF4

    import climseg
    from climseg.data.netcdf import write_cam5_netcdf

    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec (pip install mpich mpi4py)")
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    channels = list(FIELDS)
    ckpt = tmp_path / "cgnet.pt"
    _random_cgnet_checkpoint(str(ckpt), channels)
    inputs = []
    for name, t in (("s1", 3), ("s2", 1), ("s3", 2)):  # three files over two ranks: uneven shares
        path = tmp_path / f"{name}.nc"
        write_cam5_netcdf(str(path), _fields(rng, t), LAT, LON, channels=channels)
        inputs.append(str(path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(climseg.__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1", CLIMSEG_DIST_TIMEOUT="60", PYTHONWARNINGS="ignore")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    args = ["-m", "climseg", "predict", str(ckpt), *inputs, "--no-maps", "--no-progress", "--device", "cpu"]
    par = subprocess.run(
        [mpiexec, "-n", "2", sys.executable, *args, "--out", str(tmp_path / "par")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert par.returncode == 0, par.stdout + par.stderr
    from climseg.predict import predict

    predict(str(ckpt), inputs, str(tmp_path / "one"), device="cpu", maps=False, progress=False, log=lambda *a: None)
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    merged = json.loads((tmp_path / "par" / "summary.json").read_text())
    assert merged.pop("ranks") == 2
    assert merged["inputs"] == one["inputs"] and [e["file"] for e in merged["inputs"]] == inputs
    for name in ("s1", "s2", "s3"):
        with (
            netCDF4.Dataset(tmp_path / "one" / f"{name}_mask.nc") as a,
            netCDF4.Dataset(tmp_path / "par" / f"{name}_mask.nc") as b,
        ):
            np.testing.assert_array_equal(a["mask"][:], b["mask"][:])
    assert sum(len(e["time_steps"]) for e in merged["inputs"]) == 6
