"""climseg stage: complete verified copies, each source file read once, resume."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from climseg.data import generate_dataset, list_samples
from climseg.data.manifest import MANIFEST
from climseg.data.staging import JOURNAL, stage

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich mpi4py)")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "ds"
    generate_dataset(
        str(root), samples=14, height=32, width=48, seed=9, validation_fraction=3 / 14, workers=1, progress=False
    )
    return str(root)


def quiet(*a, **k):
    pass


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def source_bytes(src):
    return sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(src)
        for f in files
        if f.endswith(".h5") or f == "climseg-dataset.json"
    )


def test_local_staging_and_resume(source, tmp_path):
    dst = tmp_path / "local"
    first = stage(source, str(dst), progress=False, log=quiet)
    assert first["staged"] == first["files"] == 14 + 2 and first["read_bytes"] == source_bytes(source)
    for split in ("train", "validation"):
        names = sorted(os.listdir(os.path.join(source, split)))
        for name in names:
            assert same_bytes(os.path.join(source, split, name), dst / split / name)
        manifest = json.load(open(dst / split / MANIFEST))
        assert sorted(e["name"] for e in manifest["files"]) == names
    assert same_bytes(os.path.join(source, "stats.h5"), dst / "stats.h5")
    # an interrupted run: two files written and journalled are lost, one half-written temp file left
    lines = open(dst / JOURNAL).read().splitlines()
    gone = [json.loads(line)["name"] for line in lines[:2]]
    for name in gone:
        os.unlink(dst / name)
    open(dst / JOURNAL, "w").write("\n".join(lines[2:]) + '\n{"name": "cut sho')
    (dst / "train" / ".data-x.h5.abc.tmp").write_bytes(b"partial")
    again = stage(source, str(dst), progress=False, log=quiet)
    assert again["staged"] == 2 and again["read_bytes"] == sum(os.path.getsize(os.path.join(source, n)) for n in gone)
    assert not (dst / "train" / ".data-x.h5.abc.tmp").exists()
    for name in gone:
        assert same_bytes(os.path.join(source, name), dst / name)
    assert stage(source, str(dst), progress=False, log=quiet)["staged"] == 0


def test_killed_staging_resumes(source, tmp_path):
    dst = tmp_path / "killed"
    cmd = [sys.executable, "-m", "climseg", "stage", source, str(dst), "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = dst / JOURNAL
    while proc.poll() is None and not (journal.exists() and journal.stat().st_size > 0):
        pass
    proc.kill()
    proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in list_samples(os.path.join(source, "train")):
        assert same_bytes(name, dst / "train" / os.path.basename(name))
    assert not [p for p in dst.rglob(".*.tmp")]


def test_cli_errors(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "climseg", "stage", str(tmp_path / "nope"), str(tmp_path / "d")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip() == f"climseg: error: {tmp_path / 'nope'}: no such folder"


STAGE_SCRIPT = """
import json, sys
from climseg.data.staging import stage
summary = stage(sys.argv[1], sys.argv[2], shard_by=sys.argv[3], replicate=int(sys.argv[4]), progress=False,
                log=lambda *a: None)
from mpi4py import MPI
if MPI.COMM_WORLD.Get_rank() == 0:
    print(json.dumps(summary))
"""


def run_mpi_stage(source, dst, shard_by, replicate, ranks=4, local_size=2):
    import climseg

    env = dict(
        os.environ,
        CLIMSEG_LOCAL_SIZE=str(local_size),
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(climseg.__file__))),
    )
    proc = subprocess.run(
        [MPIEXEC, "-n", str(ranks), sys.executable, "-c", STAGE_SCRIPT, source, dst, shard_by, str(replicate)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_mpi
@pytest.mark.parametrize("shard_by, replicate", [("node", 1), ("rank", 1), ("node", 2)])
def test_mpi_staging_two_nodes(source, tmp_path, shard_by, replicate):
    import torch

    from climseg.data import FastLoader

    pattern = str(tmp_path / "node{node}")
    summary = run_mpi_stage(source, pattern, shard_by, replicate)
    assert summary["read_bytes"] == source_bytes(source)  # every source file read exactly once
    train = sorted(os.listdir(os.path.join(source, "train")))
    held = {}
    for node in (0, 1):
        folder = tmp_path / f"node{node}"
        for name in os.listdir(os.path.join(source, "validation")):  # validation and stats on every node
            assert same_bytes(os.path.join(source, "validation", name), folder / "validation" / name)
        assert same_bytes(os.path.join(source, "stats.h5"), folder / "stats.h5")
        manifest = json.load(open(folder / "train" / MANIFEST))
        held[node] = {e["name"] for e in manifest["files"]}
        for name in held[node]:
            assert same_bytes(os.path.join(source, "train", name), folder / "train" / name)
        assert manifest["ranks"] == [2 * node, 2 * node + 1] and manifest["shard"] == shard_by
    if replicate == 1:
        assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(train)
    else:
        assert held[0] == held[1] == set(train)
    # the loader gives every rank its own files: each training file once per epoch over the 4 ranks
    seen = []
    for rank in range(4):
        fl = FastLoader(
            str(tmp_path / f"node{rank // 2}" / "train"),
            1,
            rank=rank,
            world_size=4,
            drop_last=False,
            dtype=torch.float32,
        )
        seen += [os.path.basename(fl.files[i]) for i in fl._my_indices()]
    if replicate == 1:
        assert sorted(seen) == train
    again = run_mpi_stage(source, pattern, shard_by, replicate)
    assert again["read_bytes"] == 0 and again["staged"] == 0


# ----------------------------------------------------------------------------- issue 15, item 4: stale stages


def _dataset(root, seed):
    generate_dataset(
        str(root), samples=4, height=16, width=16, seed=seed, validation_fraction=0.25, workers=1, progress=False
    )


def test_regenerated_source_is_staged_again(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _dataset(src, 1)
    assert stage(str(src), str(dst), progress=False, log=quiet)["staged"] == 6
    shutil.rmtree(src)
    _dataset(src, 2)  # same names and sizes, other content
    again = stage(str(src), str(dst), progress=False, log=quiet)
    assert again["staged"] == 6
    for split in ("train", "validation"):
        for name in os.listdir(src / split):
            assert same_bytes(src / split / name, dst / split / name)
        manifest = json.load(open(dst / split / MANIFEST))
        import zlib

        for e in manifest["files"]:
            assert e["crc32"] == zlib.crc32((src / split / e["name"]).read_bytes())
    assert stage(str(src), str(dst), progress=False, log=quiet)["staged"] == 0


def test_changed_staged_copies_are_found(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _dataset(src, 3)
    stage(str(src), str(dst), progress=False, log=quiet)
    victim = dst / "train" / sorted(os.listdir(src / "train"))[0]
    # a copy rewritten after staging (new mtime): found without --verify
    st = os.stat(victim)
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    assert stage(str(src), str(dst), progress=False, log=quiet)["staged"] == 1
    assert same_bytes(src / "train" / victim.name, victim)
    # silent corruption with the modification time put back: only --verify re-reads the checksums
    st = os.stat(victim)
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stage(str(src), str(dst), progress=False, log=quiet)["staged"] == 0
    assert stage(str(src), str(dst), progress=False, log=quiet, verify=True)["staged"] == 1
    assert same_bytes(src / "train" / victim.name, victim)


def test_journal_of_an_older_format_is_staged_again(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _dataset(src, 4)
    stage(str(src), str(dst), progress=False, log=quiet)
    rows = [json.loads(line) for line in open(dst / JOURNAL)]
    with open(dst / JOURNAL, "w") as f:  # size and CRC only, as before issue 15
        f.writelines(json.dumps(dict(name=r["name"], size=r["size"], crc32=r["crc32"])) + "\n" for r in rows)
    assert stage(str(src), str(dst), progress=False, log=quiet)["staged"] == 6
