"""Shared fixtures: small synthetic datasets made once per test session, and a
cache folder of our own so tests never touch the user's. Without a GPU, Triton
kernels run in Triton's CPU interpreter (set before anything imports Triton)."""

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CLIMSEG_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("CLIMSEG_BACKEND", raising=False)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """10 training + 4 validation samples of 32 x 48, generated once."""
    from climseg.data import generate_dataset

    root = tmp_path_factory.mktemp("data") / "small"
    generate_dataset(
        str(root), samples=14, height=32, width=48, seed=7, validation_fraction=4 / 14, workers=1, progress=False
    )
    return str(root)


@pytest.fixture(scope="session")
def medium_dataset(tmp_path_factory):
    """6 + 2 samples of 64 x 96 (big enough for every configuration's strides)."""
    from climseg.data import generate_dataset

    root = tmp_path_factory.mktemp("data") / "medium"
    generate_dataset(
        str(root), samples=8, height=64, width=96, seed=11, validation_fraction=0.25, workers=1, progress=False
    )
    return str(root)
