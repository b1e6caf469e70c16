"""Defaults that fit a plain training loop: FastLoader yields float32 unless asked, leaves the
process's allocator alone unless asked, and reports skipped files through ``logging``."""

import json
import logging
import os

import pytest
import torch

from climseg.data import FastLoader, list_samples
from climseg.data import loader as loader_module


def test_fastloader_defaults_to_float32_and_leaves_the_allocator_alone(small_dataset, monkeypatch):
    calls = []
    monkeypatch.setattr(loader_module, "tune_cpu_allocator", lambda: calls.append(1) or True)
    loader = FastLoader(os.path.join(small_dataset, "train"), 3, shuffle=False)
    data, labels = next(iter(loader))
    assert data.dtype == torch.float32 and labels.dtype == torch.int64
    model = torch.nn.Conv2d(data.shape[1], 3, 1)  # an fp32 model takes the batch as it is
    assert model(data).dtype == torch.float32
    assert calls == []
    FastLoader(os.path.join(small_dataset, "train"), 3, tune_allocator=True)
    assert calls == [1]


def test_skipped_files_are_logged_not_printed(small_dataset, tmp_path, caplog, capsys):
    folder = tmp_path / "staged"
    folder.mkdir()
    files = list_samples(os.path.join(small_dataset, "train"))[:4]
    for p in files[:3]:
        (folder / os.path.basename(p)).write_bytes(open(p, "rb").read())
    (folder / "climseg-manifest.json").write_text(
        json.dumps(dict(files=[dict(name=os.path.basename(p)) for p in files]))
    )
    stats = os.path.join(small_dataset, "stats.h5")
    with caplog.at_level(logging.WARNING, logger="climseg.data.loader"):
        loader = FastLoader(str(folder), 1, stats=stats, on_bad_sample="skip")
        assert len(list(loader)) == 3
    assert loader.skipped == 1
    assert [r.name for r in caplog.records] == ["climseg.data.loader"]
    assert os.path.basename(files[3]) in caplog.records[0].getMessage()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_other_dtypes_on_request(small_dataset, dtype):
    data, _ = next(iter(FastLoader(os.path.join(small_dataset, "train"), 2, dtype=dtype)))
    assert data.dtype == dtype
