"""Batch-norm groups and running statistics across ranks: the multi-process checks
(tests/distributed_checks.py ``batchnorm`` and ``bn_stats``) under mpiexec and torchrun, and the
single-process parts of :mod:`climseg.distributed.batchnorm`."""

import json

import pytest
import torch
from test_distributed import CHECKS, mpi, needs_mpi, torchrun

from climseg.distributed import launch
from climseg.distributed.batchnorm import (
    GroupBatchNorm2d,
    average_running_stats,
    convert_batchnorm,
    flatten_running_stats,
    gather_running_stats,
    group_batch_norm,
    load_running_stats,
)
from climseg.errors import ConfigError


@needs_mpi
def test_groups_of_1_2_4_under_mpiexec():
    proc = mpi(4, CHECKS, "batchnorm")  # 2 simulated nodes x 2: G = 1, 2 (the nodes), 4 (all)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "batchnorm ok: 4 ranks, 2 nodes x 2, launcher mpi" in proc.stdout


@needs_mpi
def test_groups_that_are_not_nodes_under_mpiexec():
    proc = mpi(3, CHECKS, "batchnorm", local_size=3)  # G = 2 on 3 ranks: groups {0, 1} and {2}
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "batchnorm ok: 3 ranks, 1 nodes x 3" in proc.stdout


def test_groups_under_torchrun():
    proc = torchrun(2, CHECKS, "batchnorm", local_size=1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "batchnorm ok: 2 ranks, 2 nodes x 1, launcher torchrun" in proc.stdout


@needs_mpi
def test_running_statistics_averaged_over_ranks():
    proc = mpi(4, CHECKS, "bn_stats")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_mpi
def test_training_with_groups_and_epoch_statistics(small_dataset, tmp_path):
    out = tmp_path / "run"
    proc = mpi(
        4,
        "-m",
        "climseg",
        "train",
        "--data",
        small_dataset,
        "--epochs",
        "1",
        "--batch-size",
        "1",
        "--batchnorm-group-size",
        "2",
        "--out",
        str(out),
        "--no-progress",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[-1]["split"] == "validation" and rows[-1]["samples"] == 4


# ----------------------------------------------------------------------------- one process


def test_group_size_one_is_plain_batch_norm():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    bn = model[1]
    assert convert_batchnorm(model, 1) is model and model[1] is not bn
    assert isinstance(model[1], GroupBatchNorm2d) and model[1].process_group is None
    x = torch.randn(3, 4, 5, 7)
    torch.testing.assert_close(
        group_batch_norm(x, None, None, None, None, 0.1, 1e-5, None),
        torch.nn.functional.batch_norm(x, None, None, training=True),
    )
    launch.shutdown()


def test_group_members_and_refusals():
    assert launch.batchnorm_group_members(4, 2) == [[0, 1], [2, 3]]
    assert launch.batchnorm_group_members(6, 4) == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(ConfigError, match="batchnorm-group-size"):
        launch.batchnorm_group_members(4, 5)
    with pytest.raises(ConfigError, match="batchnorm-group-size"):
        convert_batchnorm(torch.nn.BatchNorm2d(2), 2)  # one process: no group of 2
    with pytest.raises(ConfigError, match="batchnorm-group-size"):
        convert_batchnorm(torch.nn.BatchNorm2d(2), 0)
    launch.shutdown()


def test_running_statistics_flatten_gather_and_load_in_one_process():
    def model():
        return torch.nn.Sequential(
            torch.nn.Conv2d(2, 3, 1),
            torch.nn.BatchNorm2d(3),
            torch.nn.BatchNorm2d(2, track_running_stats=False),
            torch.nn.BatchNorm2d(4).double(),
        )

    source = model()
    with torch.no_grad():
        for k, b in enumerate(
            (source[1].running_mean, source[1].running_var, source[3].running_mean, source[3].running_var)
        ):
            b.copy_(torch.arange(b.numel(), dtype=b.dtype) + 10 * k)
    flat = flatten_running_stats(source)
    assert flat.dtype == torch.float32 and flat.shape == (14,)  # means and variances, in module order
    assert flat.tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22, 23, 30, 31, 32, 33]
    gathered = gather_running_stats(source)  # one process: its own, no collective
    assert len(gathered) == 1 and torch.equal(gathered[0], flat)
    target = model()
    load_running_stats(target, gathered[0])
    for a, b in zip(source.buffers(), target.buffers()):
        if a.dtype != torch.int64:  # num_batches_tracked is no running statistic
            assert a.dtype == b.dtype and torch.equal(a, b)
    average_running_stats(target, None, 1)  # one rank: its own mean
    assert torch.equal(flatten_running_stats(target), flat)
    assert flatten_running_stats(torch.nn.Conv2d(2, 3, 1)) is None
    assert gather_running_stats(torch.nn.Conv2d(2, 3, 1)) is None
