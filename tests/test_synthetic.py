"""The synthetic generator: deterministic, physically shaped, in the DeepCAM layout."""

import os

import h5py
import numpy as np
import pytest
import torch

from climseg import sphere
from climseg.constants import CHANNELS
from climseg.data import DeepCAMDataset, generate_dataset, generate_sample, planet, read_stats
from climseg.data.planet import NoiseGrid
from climseg.data.synthetic import grid
from climseg.errors import UserError
from climseg.sphere import EARTH_RADIUS_M, haversine_km

C = {name: i for i, name in enumerate(CHANNELS)}

# plausible global extremes of CAM5 fields (units as CAM5 writes them)
RANGES = {
    "TMQ": (0.0, 100.0),
    "U850": (-100.0, 100.0),
    "V850": (-100.0, 100.0),
    "UBOT": (-90.0, 90.0),
    "VBOT": (-90.0, 90.0),
    "QREFHT": (0.0, 0.04),
    "PS": (5.0e4, 1.09e5),
    "PSL": (8.8e4, 1.085e5),
    "T200": (195.0, 240.0),
    "T500": (220.0, 285.0),
    "PRECT": (0.0, 5e-5),
    "TS": (220.0, 315.0),
    "TREFHT": (215.0, 315.0),
    "Z1000": (-800.0, 700.0),
    "Z200": (1.0e4, 1.3e4),
    "ZBOT": (40.0, 80.0),
}


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(192, 288, seed=3, split="train", index=i) for i in range(4)]


def test_deterministic_by_seed_and_index():
    a = generate_sample(64, 96, seed=5, index=2)
    b = generate_sample(64, 96, seed=5, index=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = generate_sample(64, 96, seed=6, index=2)
    d = generate_sample(64, 96, seed=5, index=3)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], d[0])
    # the same planet at any resolution
    assert generate_sample(128, 192, seed=5, index=2)[2] == a[2]


def test_physical_ranges(samples):
    for data, labels, _ in samples:
        assert data.dtype == np.float32 and labels.dtype == np.int32
        assert np.all(np.isfinite(data))
        for name, (lo, hi) in RANGES.items():
            x = data[..., C[name]]
            assert lo <= x.min() and x.max() <= hi, f"{name} spans {x.min()}..{x.max()}"


def test_latitude_dependent_climate(samples):
    lat, _ = grid(192, 288)
    tropics, poles = np.abs(lat) < 15, np.abs(lat) > 70
    data = np.stack([s[0] for s in samples])
    zonal = data.mean(axis=(0, 2))  # (lat, channel)
    assert zonal[tropics, C["TMQ"]].mean() > 35 and zonal[poles, C["TMQ"]].mean() < 8
    assert zonal[tropics, C["TS"]].mean() > 295 and zonal[poles, C["TS"]].mean() < 262
    assert zonal[tropics, C["Z200"]].mean() > zonal[poles, C["Z200"]].mean() + 800
    mid = (np.abs(lat) > 40) & (np.abs(lat) < 50)
    trades = (np.abs(lat) > 8) & (np.abs(lat) < 18)
    assert zonal[mid, C["U850"]].mean() > 4 and zonal[trades, C["U850"]].mean() < -1
    itcz = (lat > 0) & (lat < 12)
    assert zonal[itcz, C["PRECT"]].mean() > 2 * zonal[poles, C["PRECT"]].mean()
    assert np.all(data[..., C["PS"]] <= data[..., C["PSL"]] + 1e-3)
    assert np.all(data[..., C["TREFHT"]] < data[..., C["TS"]])


def _centre_index(c, lat, lon):
    i = int(np.argmin(np.abs(lat - c["lat"])))
    j = int(np.argmin(np.abs(((lon - c["lon"]) + 180) % 360 - 180)))
    return i, j


def test_cyclones_are_warm_core_vortices_turning_with_the_hemisphere(samples):
    lat, lon = grid(192, 288)
    dy = EARTH_RADIUS_M * np.deg2rad(lat[1] - lat[0])
    seen = {1.0: 0, -1.0: 0}
    for data, labels, meta in samples:
        for c in meta["cyclones"]:
            assert 8 <= abs(c["lat"]) <= 30 and not planet.is_land(c["lat"], c["lon"])
            i, j = _centre_index(c, lat, lon)
            k = 4  # ~400 km box
            dx = EARTH_RADIUS_M * np.cos(np.deg2rad(lat[i])) * np.deg2rad(lon[1] - lon[0])
            rows, cols = np.arange(i - k, i + k + 1), np.arange(j - k, j + k + 1) % len(lon)
            u = data[np.ix_(rows, cols, [C["UBOT"]])][..., 0]
            v = data[np.ix_(rows, cols, [C["VBOT"]])][..., 0]
            circulation = (v[:, -1].sum() - v[:, 0].sum()) * dy - (u[-1, :].sum() - u[0, :].sum()) * dx
            assert np.sign(circulation) == c["hemisphere"], f"cyclone at {c['lat']:.1f} turns the wrong way"
            seen[c["hemisphere"]] += 1
            psl = data[np.ix_(rows, cols, [C["PSL"]])][..., 0]
            # Holland's deficit at the grid point nearest the centre (the core is smaller than a cell)
            r = max(haversine_km(lat[i], lon[j], c["lat"], c["lon"]) * 1e3, 1.0)
            depth = c["deficit"] * (1.0 - np.exp(-((c["rmax"] / r) ** 1.5)))
            corners = np.mean([psl[0, 0], psl[0, -1], psl[-1, 0], psl[-1, -1]])
            assert psl[k, k] < psl.mean() - 0.2 * depth and psl[k, k] < corners - 0.8 * depth
            ring = data[np.ix_(np.arange(i - 8, i + 9), np.arange(j - 8, j + 9) % len(lon), [C["T500"]])][..., 0]
            assert data[i, j, C["T500"]] > np.median(ring) + 1.0, "no warm core"
            tmq = data[np.ix_(np.arange(i - 8, i + 9), np.arange(j - 8, j + 9) % len(lon), [C["TMQ"]])][..., 0]
            assert data[i, j, C["TMQ"]] > max(45.0, np.median(tmq) + 8.0), "no moist core"
            assert labels[i, j] == 1
    assert seen[1.0] and seen[-1.0]


def test_rivers_are_labelled_filaments_in_midlatitudes(samples):
    lat, _ = grid(192, 288)
    for data, labels, meta in samples:
        rows = np.nonzero((labels == 2).any(axis=1))[0]
        if not len(meta["rivers"]):
            continue
        assert len(rows) > 0
        assert np.all((np.abs(lat[rows]) >= 8) & (np.abs(lat[rows]) <= 75))
        ar = labels == 2
        ivt = data[..., C["TMQ"]] * np.hypot(data[..., C["U850"]], data[..., C["V850"]])
        assert np.all(ivt[ar] >= 250.0)
        assert data[..., C["TMQ"]][ar].mean() > data[..., C["TMQ"]][~ar & (np.abs(lat)[:, None] > 30)].mean() + 10


def test_the_earths_land_and_sea(samples):
    lat, lon = grid(192, 288)
    land = NoiseGrid(lat, lon).resample(planet.land_fraction())
    coast_lat, coast_lon = planet.west_coasts()
    ends, rivers, ar_cells, ar_on_land = 0, 0, 0, 0
    for data, labels, meta in samples:
        # no orography at sea: surface and sea-level pressure agree; mountains on land
        assert np.array_equal(data[..., C["PS"]][land == 0], data[..., C["PSL"]][land == 0])
        assert (data[..., C["PSL"]] - data[..., C["PS"]])[land > 0.9].max() > 30000  # above 3 km somewhere
        # warm tropical sea (26.5 C and more where cyclones form), cold high latitudes
        sea = (land == 0) & (np.abs(lat)[:, None] < 15)
        assert np.median(data[..., C["TS"]][sea]) > 299.65
        for r in meta["rivers"]:
            rivers += 1
            ends += sphere.haversine_km(*r["end"], coast_lat, coast_lon).min() < 1600.0
        ar_cells += (labels == 2).sum()
        ar_on_land += ((labels == 2) & (land > 0.5)).sum()
    # three in four rivers are aimed at a west coast, ending 1500 km before it to 500 km past it; they rain
    # out over land: few of their cells lie inland
    assert ends >= 0.5 * rivers and ar_on_land < 0.25 * ar_cells


def test_class_frequencies_like_real_data():
    labels = np.concatenate([generate_sample(128, 192, seed=9, index=i)[1].ravel() for i in range(12)])
    freq = np.bincount(labels, minlength=3) / labels.size
    assert 0.95 <= freq[0] <= 0.99
    assert 0.0005 <= freq[1] <= 0.01 and 0.005 <= freq[2] <= 0.04


def test_generate_dataset_layout_and_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    s = generate_dataset(
        str(a), samples=5, height=32, width=48, seed=1, validation_fraction=0.4, workers=1, progress=False
    )
    generate_dataset(str(b), samples=5, height=32, width=48, seed=1, validation_fraction=0.4, workers=2, progress=False)
    assert (s["train"], s["validation"]) == (3, 2)
    assert sorted(os.listdir(a)) == ["climseg-dataset.json", "stats.h5", "train", "validation"]
    names = sorted(os.listdir(a / "train"))
    assert len(names) == 3 and names[0].startswith("data-2106-01-01-00")
    for split in ("train", "validation"):
        for name in sorted(os.listdir(a / split)):
            with h5py.File(a / split / name) as fa, h5py.File(b / split / name) as fb:
                assert fa["climate/data"].shape == (32, 48, 16) and fa["climate/data"].dtype == np.float32
                assert fa["climate/data"].chunks is None  # contiguous, as the fast loader expects
                assert fa["climate/labels_0"].shape == (32, 48)
                np.testing.assert_array_equal(fa["climate/data"][...], fb["climate/data"][...])
    stats = read_stats(str(a / "stats.h5"))
    ds = DeepCAMDataset(str(a / "train"))
    raw = np.stack([ds.read_raw(i)[0] for i in range(len(ds))]).reshape(-1, 16)
    np.testing.assert_allclose(stats.minval, raw.min(0), rtol=1e-6)
    np.testing.assert_allclose(stats.maxval, raw.max(0), rtol=1e-6)
    np.testing.assert_allclose(stats.mean, raw.astype(np.float64).mean(0), rtol=1e-5)
    assert abs(stats.class_frequencies.sum() - 1) < 1e-5


def test_compressed_dataset_reads_the_same(tmp_path):
    from climseg.data import FastLoader

    a, c = tmp_path / "a", tmp_path / "c"
    generate_dataset(str(a), samples=4, height=32, width=48, seed=2, validation_fraction=0.25, progress=False)
    s = generate_dataset(
        str(c), samples=4, height=32, width=48, seed=2, validation_fraction=0.25, progress=False, compress=True
    )
    assert s["compression"] == "gzip-1+shuffle"
    for name in sorted(os.listdir(a / "train")):
        with h5py.File(a / "train" / name) as fa, h5py.File(c / "train" / name) as fc:
            for key in ("climate/data", "climate/labels_0"):
                assert fc[key].compression == "gzip" and fc[key].shuffle and fc[key].chunks == fc[key].shape
                np.testing.assert_array_equal(fa[key][...], fc[key][...])
        assert os.path.getsize(c / "train" / name) < os.path.getsize(a / "train" / name)
    # FastLoader reads them through h5py instead of by offset: the same batches
    plain = list(FastLoader(str(a / "train"), 2, shuffle=False, drop_last=False))
    packed = list(FastLoader(str(c / "train"), 2, shuffle=False, drop_last=False))
    assert len(plain) == len(packed) == 2
    for (x, y), (u, v) in zip(plain, packed):
        assert torch.equal(x, u) and torch.equal(y, v)


def test_generate_refuses_bad_requests(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="already exists and is not an empty folder"):
        generate_dataset(str(tmp_path / "full"), samples=3, height=32, width=48, progress=False)
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"
    with pytest.raises(UserError, match="multiples of 16"):
        generate_dataset(str(tmp_path / "x"), samples=3, height=30, width=48, progress=False)
    with pytest.raises(UserError, match="at least 2"):
        generate_dataset(str(tmp_path / "x"), samples=1, height=32, width=48, progress=False)
    assert not (tmp_path / "x").exists()
