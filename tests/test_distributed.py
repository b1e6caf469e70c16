"""Multi-process tests on CPU: mpiexec (from the mpich wheel) and torchrun, with
nodes simulated by CLIMSEG_LOCAL_SIZE; plus the launcher parsing and LARC."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from climseg.distributed import launch
from climseg.optim import LARC, build_scheduler

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKS = os.path.join(HERE, "distributed_checks.py")
MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich mpi4py)")


def job_env(local_size):
    import climseg

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(climseg.__file__)))  # the climseg under test
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(
        os.environ,
        CLIMSEG_LOCAL_SIZE=str(local_size),
        CLIMSEG_DIST_TIMEOUT="60",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=path,
    )
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def mpi(n, *args, local_size=2, timeout=300):
    return subprocess.run(
        [MPIEXEC, "-n", str(n), sys.executable, *args],
        capture_output=True,
        text=True,
        env=job_env(local_size),
        timeout=timeout,
    )


def torchrun(n, *args, local_size=2, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--standalone", *args],
        capture_output=True,
        text=True,
        env=job_env(local_size),
        timeout=timeout,
    )


@needs_mpi
@pytest.mark.parametrize("ranks", [4, 6])  # 2 nodes x 2, 3 nodes x 2
@pytest.mark.parametrize("check", ["allreduce", "ddp", "optimizer"])
def test_under_mpiexec(ranks, check):
    proc = mpi(ranks, CHECKS, check)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{check} ok: {ranks} ranks, {ranks // 2} nodes x 2, launcher mpi" in proc.stdout


def test_under_torchrun():
    proc = torchrun(4, CHECKS, "allreduce")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "allreduce ok: 4 ranks, 2 nodes x 2, launcher torchrun" in proc.stdout


@pytest.mark.parametrize("check", ["optimizer-no-init", "hook-no-init"])
def test_without_climseg_init_under_torchrun(check):
    """Issue 15, item 8: no silent world of one, no mangled hook error."""
    proc = torchrun(4, CHECKS, check)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{check} ok: 4 ranks" in proc.stdout


@pytest.mark.parametrize(
    "launcher", [pytest.param(mpi, marks=needs_mpi, id="mpiexec"), pytest.param(torchrun, id="torchrun")]
)
def test_one_failing_rank_ends_every_rank(launcher):
    start = time.time()
    proc = launcher(4, CHECKS, "fail")
    assert proc.returncode != 0
    assert time.time() - start < 90  # far below CLIMSEG_DIST_TIMEOUT: the failure ended the job, not a timeout
    assert "rank 1: /nonexistent-climseg-data" in proc.stderr


@needs_mpi
@pytest.mark.parametrize("lag", [0, 1])
def test_data_parallel_training(small_dataset, tmp_path, lag):
    out = tmp_path / "run"
    proc = mpi(
        4,
        "-m",
        "climseg",
        "train",
        "--data",
        small_dataset,
        "--epochs",
        "2",
        "--batch-size",
        "1",
        "--gradient-lag",
        str(lag),
        "--out",
        str(out),
        "--no-progress",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 processes (2 node(s) x 2, hierarchical allreduce" in proc.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [(r["epoch"], r["split"]) for r in rows] == [
        (1, "train"),
        (1, "validation"),
        (2, "train"),
        (2, "validation"),
    ]
    assert rows[0]["samples"] == 8 and rows[1]["samples"] == 4  # 10 // 4 ranks x 4; every validation sample once
    assert rows[-1]["step"] == 4
    from climseg.train import load_checkpoint

    ckpt = load_checkpoint(str(out))
    assert ckpt["train"]["world_size"] == 4 and ckpt["train"]["options"]["gradient_lag"] == lag
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_data_parallel_training_under_torchrun(small_dataset, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(
        2,
        "-m",
        "climseg",
        "train",
        "--data",
        small_dataset,
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--allreduce",
        "flat",
        "--compression",
        "bf16",
        "--out",
        str(out),
        "--no-progress",
        local_size=1,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 processes (2 node(s) x 1, flat allreduce" in proc.stdout
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert rows[-1]["split"] == "validation" and rows[-1]["samples"] == 4


@needs_mpi
@pytest.mark.parametrize("lag", [0, 1])
def test_data_parallel_resume_is_exact(small_dataset, tmp_path, lag):
    common = [
        "-m",
        "climseg",
        "train",
        "--data",
        small_dataset,
        "--epochs",
        "2",
        "--batch-size",
        "1",
        "--gradient-lag",
        str(lag),
        "--no-progress",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert mpi(4, *common, "--out", str(straight), timeout=600).returncode == 0
    proc = mpi(4, *common, "--out", str(split), "--max-steps", "3", timeout=600)
    assert proc.returncode == 0, proc.stderr
    proc = mpi(4, "-m", "climseg", "train", "--resume", str(split), "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from climseg.train import load_checkpoint

    a = load_checkpoint(str(straight))["model"]["state_dict"]
    b = load_checkpoint(str(split))["model"]["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    rb = [json.loads(line) for line in open(split / "metrics.jsonl")]
    assert [r["loss"] for r in ra] == pytest.approx([r["loss"] for r in rb], rel=1e-9)


def spawn(n, check, style, *args, timeout=300):
    """``n`` processes of ``distributed_checks.py CHECK`` started the way a trainer starts them:
    style "lightning" (Lightning's launcher: LOCAL_RANK, NODE_RANK, WORLD_SIZE, no RANK) or "bare"
    (no launcher variables; the rank in CHECK_RANK); nodes from the host names (no CLIMSEG_LOCAL_SIZE)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(n):
        env = job_env(1)
        env.pop("CLIMSEG_LOCAL_SIZE")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CHECK_STYLE=style)
        if style == "lightning":
            env.update(LOCAL_RANK=str(r), NODE_RANK="0", WORLD_SIZE=str(n))
        else:
            env.update(CHECK_RANK=str(r), CHECK_WORLD=str(n))
        procs.append(
            subprocess.Popen(
                [sys.executable, CHECKS, check, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append((p.returncode, out, err))
    return outs


@pytest.mark.parametrize("style", ["lightning", "bare"])
def test_init_adopts_a_trainers_process_group(style):
    """Issue 28, item 1: Lightning's launcher sets no RANK; init() after the trainer's
    init_process_group adopts it (before: a one-rank topology and silently diverging ranks).
    With init() called before the group exists, every climseg collective, the hook and the
    optimizer wrapper refuse the world of one with one clear error, and init() replaces it."""
    for code, out, err in spawn(2, "adopt", style):
        assert code == 0, out + err
        assert f"adopt ok: 2 ranks, style {style}" in out


def test_fastloader_shards_and_follows_the_trainers_epochs(small_dataset):
    for code, out, err in spawn(2, "fastloader-ranks", "bare", small_dataset):
        assert code == 0, out + err
        assert "fastloader-ranks ok: 2 ranks" in out


def test_init_refuses_a_process_that_is_one_of_several_without_a_rank(monkeypatch):
    from climseg.errors import ConfigError

    for k in list(os.environ):
        if k.startswith(("RANK", "LOCAL_", "OMPI_", "PMI", "MPI_", "JSM_", "SLURM_", "TORCHELASTIC")):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's second process, before trainer.fit starts the group
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 says this process is one of 2") as info:
        launch.init()
    assert "LightningModule.setup()" in str(info.value) and "Accelerator()" in str(info.value)
    assert launch.topology() is None


# ----------------------------------------------------------------------------- single-process parts


def test_hostlists_and_counts():
    assert launch.expand_hostlist("nid[001-003,007],login1") == ["nid001", "nid002", "nid003", "nid007", "login1"]
    assert launch.expand_hostlist("a[1-2]-ib,b") == ["a1-ib", "a2-ib", "b"]
    assert launch.expand_counts("4(x2),3") == [4, 4, 3]


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            dict(RANK="3", WORLD_SIZE="8", LOCAL_RANK="1", LOCAL_WORLD_SIZE="4", TORCHELASTIC_RUN_ID="x"),
            ("torchrun", 3, 8, 1, 4),
        ),
        (
            dict(
                OMPI_COMM_WORLD_RANK="5",
                OMPI_COMM_WORLD_SIZE="6",
                OMPI_COMM_WORLD_LOCAL_RANK="2",
                OMPI_COMM_WORLD_LOCAL_SIZE="3",
            ),
            ("mpi", 5, 6, 2, 3),
        ),
        (dict(PMI_RANK="1", PMI_SIZE="4", MPI_LOCALRANKID="1", MPI_LOCALNRANKS="2"), ("mpi", 1, 4, 1, 2)),
        (
            dict(
                JSM_NAMESPACE_RANK="7",
                JSM_NAMESPACE_SIZE="12",
                JSM_NAMESPACE_LOCAL_RANK="1",
                JSM_NAMESPACE_LOCAL_SIZE="6",
            ),
            ("jsrun", 7, 12, 1, 6),
        ),
        (
            dict(
                SLURM_PROCID="9", SLURM_NTASKS="12", SLURM_LOCALID="1", SLURM_NODEID="2", SLURM_TASKS_PER_NODE="4(x3)"
            ),
            ("slurm", 9, 12, 1, 4),
        ),
        ({}, ("none", 0, 1, 0, 1)),
    ],
)
def test_launcher_detection(monkeypatch, env, expected):
    for k in list(os.environ):
        if k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "OMPI_", "PMI", "MPI_", "JSM_", "SLURM_", "TORCHELASTIC")):
            monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    info = launch.detect_launcher()
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.local_size) == expected


def test_single_process_topology():
    topo = launch.init()
    assert topo.world_size == 1 and not topo.hierarchical
    x = torch.ones(5)
    from climseg.distributed import hierarchical_all_reduce

    assert torch.equal(hierarchical_all_reduce(x, "avg"), torch.ones(5))
    launch.shutdown()


def test_larc_by_hand():
    w0 = torch.tensor([3.0, -4.0])  # ||w|| = 5
    g0 = torch.tensor([0.6, 0.8])  # ||g|| = 1
    p = torch.nn.Parameter(w0.clone())
    inner = torch.optim.SGD([p], lr=0.1, weight_decay=0.01)
    opt = LARC(inner, trust_coefficient=0.002, clip=True, trust_eps=1 / 16000)
    p.grad = g0.clone()
    opt.step()
    local = 0.002 * 5 / (1 + 5 * 0.01 + 1 / 16000)
    factor = min(local / 0.1, 1.0)
    expected = w0 - 0.1 * (g0 + 0.01 * w0) * factor
    torch.testing.assert_close(p.detach(), expected)
    assert inner.param_groups[0]["weight_decay"] == 0.01  # restored after the step
    # without clipping the local rate multiplies the gradient directly
    q = torch.nn.Parameter(w0.clone())
    q.grad = g0.clone()
    LARC(torch.optim.SGD([q], lr=0.1), clip=False, trust_eps=0.0).step()
    torch.testing.assert_close(q.detach(), w0 - 0.1 * g0 * (0.002 * 5 / 1))
    # a zero gradient or weight leaves the gradient alone; schedulers accept the wrapper
    z = torch.nn.Parameter(torch.zeros(2))
    z.grad = torch.ones(2)
    larc = LARC(torch.optim.SGD([z], lr=0.5))
    sched = build_scheduler(larc, 10, "constant", warmup_steps=2)
    larc.step()
    sched.step()
    torch.testing.assert_close(z.detach(), torch.full((2,), -0.25))  # lr 0.5 * warmup 1/2
    assert larc.param_groups[0]["lr"] == pytest.approx(0.5)
