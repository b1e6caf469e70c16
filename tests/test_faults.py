"""Fault injection on the output side (issue 15): full, read-only, missing and
wrong output paths, a second run into one folder, kills during each writing
phase, the umask, bad checkpoints, inputs that fail after outputs exist.

Every case must end in one line and exit status 2 (or 130/143 for a signal),
with nothing lost: what was in the output folder before is still there and
whole, and no temporary file stays behind (except after SIGKILL, which no
process can clean up after; the next run removes those).

A full file system is a small tmpfs (``mount -t tmpfs -o size=...``, which
needs root or CAP_SYS_ADMIN); a read-only one a read-only tmpfs (root ignores
permission bits) or, for other users, a folder without write permission. Where
neither can be made the case is skipped with the reason, and the patched-writer
cases (a write that fails with ENOSPC/EROFS) still run.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from climseg.cli import main
from climseg.constants import CHANNELS
from climseg.errors import OutputError, first_line
from climseg.output import RunLock, atomic_directory, check_output_location, current_umask, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ----------------------------------------------------------------------------- helpers


def check_one_line_error(capsys, code, *fragments):
    """``main()`` returned ``code`` 2 with one ``climseg: error:`` line holding every fragment."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("climseg: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def no_temporaries(folder):
    leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(folder) for n in files + dirs if n.endswith(".tmp")]
    assert not leftovers, leftovers


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    out = {}
    for d, _, files in os.walk(folder):
        for n in files:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def _mount(target, options):
    os.makedirs(target, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(
            f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount failed'}); the patched-writer cases cover this"
        )


@pytest.fixture
def full_fs(tmp_path):
    """A 192 KiB tmpfs: small enough that any dataset, checkpoint or staging fills it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the patched-writer cases cover a full disk")
    target = tmp_path / "full"
    _mount(target, "size=192k,mode=0777")
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write into: a read-only tmpfs for root, a 0555 folder for others."""
    target = tmp_path / "ro"
    if os.geteuid() != 0:
        target.mkdir()
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    _mount(target, "ro,size=64k")
    yield target
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny-model checkpoint made without training (seconds, not minutes)."""
    from climseg.models import DeepLabV3Plus
    from climseg.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = DeepLabV3Plus("tiny", in_channels=len(CHANNELS), num_classes=3)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(
        str(path),
        dict(
            model=dict(
                config="tiny", in_channels=len(CHANNELS), num_classes=3, norm="batch", state_dict=net.state_dict()
            ),
            data=dict(
                channels=list(CHANNELS),
                normalization="minmax",
                shift=torch.zeros(len(CHANNELS)),
                scale=torch.full((len(CHANNELS),), 1e-3),
            ),
        ),
    )
    return str(path)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Two DeepCAM samples (32 x 48) to segment."""
    from climseg.data.deepcam import write_sample
    from climseg.data.synthetic import generate_sample

    folder = tmp_path_factory.mktemp("samples")
    paths = []
    for i in range(2):
        data, labels, _ = generate_sample(32, 48, seed=np.random.randint(1 << 30), index=i)
        paths.append(str(folder / f"s{i}.h5"))
        write_sample(paths[-1], data, labels)
    return paths


def failing(exc_errno, after=0):
    """A replacement for ``os.replace`` in climseg.output that fails with ``exc_errno`` after ``after`` calls."""
    calls = [0]
    real = os.replace

    def replace(src, dst):
        calls[0] += 1
        if calls[0] > after:
            raise OSError(exc_errno, os.strerror(exc_errno), dst)
        return real(src, dst)

    return replace


# ----------------------------------------------------------------------------- 1. output paths


def test_output_check_refuses_files_and_paths_under_files(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    with pytest.raises(OutputError, match="afile: is a file, not a folder"):
        check_output_location(str(afile))
    with pytest.raises(OutputError, match="afile is a file, not a folder"):
        check_output_location(str(afile / "sub" / "deeper"))
    with pytest.raises(OutputError, match="is a folder, not a file"):
        check_output_location(str(tmp_path), kind="file")
    assert check_output_location(str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # a check creates nothing
    assert afile.read_text() == "keep"


def test_train_refuses_a_bad_out_before_reading_data(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    # --data does not exist: the output is checked first, so the output is what the line names
    for out in (afile, afile / "run"):
        code = main(["train", "--data", str(tmp_path / "no-data"), "--out", str(out), "--no-progress"])
        check_one_line_error(capsys, code, str(afile), "is a file, not a folder")
    assert afile.read_text() == "x"


def test_read_only_outputs(read_only, tmp_path, checkpoint, samples, capsys):
    code = main(["train", "--data", str(tmp_path / "no-data"), "--out", str(read_only / "run"), "--no-progress"])
    check_one_line_error(capsys, code, str(read_only / "run"), "cannot write into")
    code = main(["predict", checkpoint, samples[0], "--out", str(read_only / "masks"), "--no-progress"])
    check_one_line_error(capsys, code, "masks", "cannot write into")
    code = main(
        ["generate", str(read_only / "data"), "--samples", "2", "--height", "16", "--width", "16", "--no-progress"]
    )
    check_one_line_error(capsys, code, "data", "cannot write into")
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train" / "a.h5").write_bytes(b"x" * 100)
    code = main(["stage", str(src), str(read_only / "staged"), "--no-progress"])
    check_one_line_error(capsys, code, "staged", "cannot write into")
    assert os.listdir(read_only) == []


def test_predict_out_naming_a_file(tmp_path, checkpoint, samples, capsys):
    afile = tmp_path / "masks"
    afile.write_text("x")
    code = main(["predict", checkpoint, samples[0], "--out", str(afile), "--no-progress"])
    check_one_line_error(capsys, code, "masks: is a file, not a folder")


def test_stage_onto_a_file_itself_or_inside_the_source(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train" / "a.h5").write_bytes(b"x" * 100)
    before = snapshot(src)
    afile = tmp_path / "afile"
    afile.write_text("x")
    check_one_line_error(capsys, main(["stage", str(src), str(afile), "--no-progress"]), "is a file, not a folder")
    check_one_line_error(capsys, main(["stage", str(src), str(src), "--no-progress"]), "is the source folder itself")
    check_one_line_error(
        capsys, main(["stage", str(src), str(src / "copy"), "--no-progress"]), "inside the source folder"
    )
    check_one_line_error(
        capsys, main(["stage", str(src / "train"), str(src), "--no-progress"]), "holds the source folder"
    )
    assert snapshot(src) == before


def test_stage_unreadable_source(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    for n in ("a.h5", "b.h5"):
        (src / "train" / n).write_bytes(os.urandom(1000))
    import builtins

    real_open = builtins.open

    def deny(path, *args, **kwargs):  # root reads whatever the permission bits say: deny by patching
        if str(path).endswith("b.h5") and str(path).startswith(str(src)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    code = main(["stage", str(src), str(tmp_path / "dst"), "--threads", "1", "--no-progress"])
    check_one_line_error(capsys, code, "b.h5", "cannot read", "Permission denied")
    no_temporaries(tmp_path / "dst")


# ----------------------------------------------------------------------------- disk full


def test_full_tmpfs(full_fs, tmp_path, checkpoint, samples, capsys):
    # generate: more than 192 KiB of samples
    code = main(
        [
            "generate",
            str(full_fs / "data"),
            "--samples",
            "8",
            "--height",
            "64",
            "--width",
            "64",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    check_one_line_error(capsys, code, "no space left on device")
    assert os.listdir(full_fs) == []  # no half dataset, no temporary folder
    # stage: a 300 KB source
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    for i in range(3):
        (src / "train" / f"s{i}.h5").write_bytes(os.urandom(100_000))
    code = main(["stage", str(src), str(full_fs / "staged"), "--threads", "1", "--no-progress"])
    check_one_line_error(capsys, code, "no space left on device")
    no_temporaries(full_fs)
    shutil.rmtree(full_fs / "staged")  # the files that fitted are whole and journalled
    # predict: its maps fill what a ballast leaves of the disk
    with open(full_fs / "ballast", "wb") as f:
        f.write(os.urandom(150_000))
    code = main(["predict", checkpoint, *samples, "--out", str(full_fs / "masks"), "--no-progress"])
    check_one_line_error(capsys, code, "no space left on device")
    no_temporaries(full_fs)
    # a checkpoint written onto the full disk: one OutputError, the earlier file intact
    from climseg.train.checkpoint import load_checkpoint, save_checkpoint

    os.unlink(full_fs / "ballast")
    small = dict(model=dict(config="tiny"), data=dict(), blob=torch.zeros(10))
    save_checkpoint(str(full_fs / "last.pt"), small)
    with pytest.raises(OutputError, match="last.pt: cannot write \\(no space left on device"):
        save_checkpoint(str(full_fs / "last.pt"), dict(small, blob=torch.zeros(100_000)))
    assert load_checkpoint(str(full_fs / "last.pt"))["blob"].numel() == 10
    no_temporaries(full_fs)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_patched_writer_failures_are_one_line(tmp_path, monkeypatch, code):
    """Where no tmpfs can be mounted: the same path through a writer that fails."""

    (tmp_path / "old.json").write_text("{}")
    monkeypatch.setattr(os, "replace", failing(code))
    with pytest.raises(OutputError) as info:
        write_json(str(tmp_path / "old.json"), {"a": 1})
    assert str(info.value).startswith(f"{tmp_path / 'old.json'}: cannot write (")
    assert "\n" not in str(info.value)
    assert (tmp_path / "old.json").read_text() == "{}"
    no_temporaries(tmp_path)


def test_patched_disk_full_in_generate(tmp_path, monkeypatch, capsys):

    monkeypatch.setattr(os, "replace", failing(errno.ENOSPC, after=1))
    code = main(
        [
            "generate",
            str(tmp_path / "data"),
            "--samples",
            "3",
            "--height",
            "16",
            "--width",
            "16",
            "--workers",
            "1",
            "--no-progress",
        ]
    )
    check_one_line_error(capsys, code, "no space left on device")
    assert not (tmp_path / "data").exists()
    no_temporaries(tmp_path)


# ----------------------------------------------------------------------------- 2. checkpoints


def test_empty_and_broken_checkpoints(tmp_path, samples, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    check_one_line_error(capsys, main(["train", "--resume", str(empty), "--no-progress"]), "empty.pt", "is empty")
    check_one_line_error(
        capsys,
        main(["predict", str(empty), samples[0], "--out", str(tmp_path / "o"), "--no-progress"]),
        "empty.pt",
        "is empty",
    )
    (tmp_path / "dir.pt").mkdir()
    (tmp_path / "dir.pt" / "last.pt").mkdir()
    check_one_line_error(
        capsys, main(["predict", str(tmp_path / "dir.pt"), samples[0], "--out", str(tmp_path / "o")]), "not a file"
    )
    assert not (tmp_path / "o").exists()


def test_first_line_never_fails_and_cuts_at_words():
    assert first_line(ValueError()) == "ValueError"  # an empty message: its type, not IndexError
    assert first_line(RuntimeError("\n\n  second line\nthird")) == "second line"
    words = " ".join(f"word{i}" for i in range(100))
    cut = first_line(RuntimeError(words), limit=120)
    assert cut.endswith(" ...") and len(cut) <= 125
    assert cut[:-4].split(" ")[-1] in words.split(" ")  # ends on a whole word


# ----------------------------------------------------------------------------- 3. predict checks everything first


def test_predict_leaves_an_earlier_run_alone(tmp_path, checkpoint, samples, capsys, monkeypatch):
    from climseg.data.netcdf import write_cam5_netcdf
    from climseg.data.synthetic import grid

    out = tmp_path / "out"
    assert main(["predict", checkpoint, *samples, "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert "summary.json" in before and len(before) == 5
    lat, lon = grid(32, 48)
    empty_nc = tmp_path / "s1.nc"  # same stem as an earlier output, no time steps
    write_cam5_netcdf(str(empty_nc), np.zeros((0, 32, 48, len(CHANNELS)), np.float32), lat, lon)
    code = main(["predict", checkpoint, samples[0], str(empty_nc), "--out", str(out), "--no-progress"])
    check_one_line_error(capsys, code, "s1.nc", "time axis has length 0")
    assert snapshot(out) == before
    (tmp_path / "nothing").mkdir()  # a folder of inputs is read (its .nc and .h5 files), an empty one refused
    check_one_line_error(
        capsys, main(["predict", checkpoint, str(tmp_path / "nothing"), "--out", str(out)]), "is a folder"
    )
    # a failure while writing the second input's outputs: nothing of the new run lands
    import climseg.plotting

    real = climseg.plotting.plot_map
    calls = [0]

    def plot_then_fail(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr("climseg.predict.outputs.plot_map", plot_then_fail)
    code = main(["predict", checkpoint, *samples, "--out", str(out), "--no-progress"])
    check_one_line_error(capsys, code, "no space left on device")
    assert snapshot(out) == before
    no_temporaries(out)


# ----------------------------------------------------------------------------- 5. one run per folder

LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from climseg.output import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def _hold_lock(folder):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_into_one_folder_is_refused_and_a_killed_one_frees_it(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        code = main(["train", "--data", str(tmp_path / "no-data"), "--out", str(run), "--no-progress"])
        line = check_one_line_error(capsys, code, str(run), "another climseg run is writing into this folder")
        assert f"process {holder.pid}" in line
        with pytest.raises(OutputError, match="another climseg run"):
            RunLock(run).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed run: the kernel drops its lock
        holder.wait()
    with RunLock(run) as lock:
        assert lock.held
    # the lock of a refused set-up is released at once: the same process can start again
    code = main(["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "fresh"), "--no-progress"])
    check_one_line_error(capsys, code, "no-data")
    assert not (tmp_path / "fresh").exists()  # made for the lock, removed again: nothing was written
    with RunLock(tmp_path / "fresh"):
        pass


def test_two_concurrent_training_runs(small_dataset, tmp_path, capsys):
    """A second `climseg train` into the --out of a running one gets one line; the first is unharmed."""
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        small_dataset,
        "--epochs",
        "1",
        "--batch-size",
        "5",
        "--max-steps",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    first = _writer(tmp_path, "=run.json", 5, *args)  # holds the folder, paused while writing run.json
    try:
        code = main(args)
        check_one_line_error(capsys, code, str(out), "another climseg run is writing into this folder")
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert json.load(open(out / "run.json"))["options"]["batch_size"] == 5


# ----------------------------------------------------------------------------- 6. umask


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        write_json(str(tmp_path / "a.json"), {})
        with atomic_directory(str(tmp_path / "folder")) as tmp:
            write_json(os.path.join(tmp, "b.json"), {})
        plain = tmp_path / "plain"
        with open(plain, "w"):
            pass
        os.mkdir(tmp_path / "plain_dir")
    finally:
        os.umask(old)

    def mode(p):
        return os.stat(p).st_mode & 0o777

    assert mode(tmp_path / "a.json") == mode(plain) == 0o666 & ~mask
    assert mode(tmp_path / "folder" / "b.json") == 0o666 & ~mask
    assert mode(tmp_path / "folder") == mode(tmp_path / "plain_dir") == 0o777 & ~mask
    # a replaced file keeps its own mode, as open(path, "w") would
    os.chmod(tmp_path / "a.json", 0o640)
    write_json(str(tmp_path / "a.json"), {"again": 1})
    assert mode(tmp_path / "a.json") == 0o640


def test_generated_dataset_is_readable_by_others(tmp_path):
    from climseg.data import generate_dataset

    old = os.umask(0o022)
    try:
        generate_dataset(str(tmp_path / "d"), samples=2, height=16, width=16, workers=1, progress=False)
    finally:
        os.umask(old)
    for d, _dirs, files in os.walk(tmp_path / "d"):
        assert os.stat(d).st_mode & 0o777 == 0o755, d
        for n in files:
            assert os.stat(os.path.join(d, n)).st_mode & 0o777 == 0o644, n


# ----------------------------------------------------------------------------- kills during writing

KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    import climseg.output
    real = os.replace
    marker = sys.argv[1]
    def slow_replace(src, dst):       # every file complete under its temporary name, not yet renamed
        name = os.path.basename(dst)
        # "DIR/NAME": the rename onto that path; "=NAME": onto that name; else a part of the name
        if dst.endswith(marker) if "/" in marker else name == marker[1:] if marker.startswith("=") else marker in name:
            print("WRITING", flush=True)
            time.sleep(float(sys.argv[2]))
        return real(src, dst)
    os.replace = slow_replace
    from climseg.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def _writer(tmp_path, marker, pause, *args):
    env = dict(
        os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, marker, str(pause), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    line = proc.stdout.readline()
    while line and line.strip() != "WRITING":  # lines logged before (predict's first names its network)
        line = proc.stdout.readline()
    assert line.strip() == "WRITING", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


@pytest.fixture(scope="module")
def stage_source(tmp_path_factory):
    from climseg.data import generate_dataset

    root = tmp_path_factory.mktemp("stagesrc") / "ds"
    generate_dataset(str(root), samples=4, height=16, width=16, workers=1, progress=False)
    return root


def test_sigterm_during_stage_leaves_no_temporaries(stage_source, tmp_path):
    dst = tmp_path / "dst"
    proc = _writer(tmp_path, ".h5", 2, "stage", str(stage_source), str(dst), "--threads", "1", "--no-progress")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err
    no_temporaries(dst)


def test_sigkill_during_stage_then_resume(stage_source, tmp_path):
    dst = tmp_path / "dst"
    proc = _writer(tmp_path, ".h5", 30, "stage", str(stage_source), str(dst), "--threads", "1", "--no-progress")
    proc.kill()
    proc.wait()
    assert main(["stage", str(stage_source), str(dst), "--no-progress"]) == 0
    no_temporaries(dst)
    for split in ("train", "validation"):
        for name in os.listdir(stage_source / split):
            assert (dst / split / name).read_bytes() == (stage_source / split / name).read_bytes()


def test_kills_during_generate(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = tmp_path / f"data{int(sig)}"
        proc = _writer(
            tmp_path,
            ".h5",
            30,
            "generate",
            str(out),
            "--samples",
            "3",
            "--height",
            "16",
            "--width",
            "16",
            "--workers",
            "1",
            "--no-progress",
        )
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert not out.exists()  # no half dataset under the final name
        if sig == signal.SIGTERM:
            assert proc.returncode == 143
            assert [n for n in os.listdir(tmp_path) if n.startswith(f".data{int(sig)}")] == []
    assert (
        main(
            [
                "generate",
                str(tmp_path / f"data{int(signal.SIGKILL)}"),
                "--samples",
                "2",
                "--height",
                "16",
                "--width",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )


def test_kills_while_writing_predictions_and_checkpoints(tmp_path, checkpoint, samples):
    out = tmp_path / "out"
    assert main(["predict", checkpoint, samples[0], "--out", str(out), "--no-progress"]) == 0
    before = snapshot(out)
    # SIGTERM while writing the second map: the folder as it was, no temporaries
    proc = _writer(tmp_path, "=s1.png", 30, "predict", checkpoint, *samples, "--out", str(out), "--no-progress")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    after = snapshot(out)
    assert proc.returncode == 143 and after == before, sorted(after)
    # SIGTERM while the finished outputs are renamed into place: all of them land, then it stops
    proc = _writer(tmp_path, "out/s0.png", 3, "predict", checkpoint, *samples, "--out", str(out), "--no-progress")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    after = snapshot(out)
    assert proc.returncode == 143 and not [k for k in after if k.endswith(".tmp")]
    summary = json.loads(after["summary.json"])
    assert [os.path.basename(i["file"]) for i in summary["inputs"]] == ["s0.h5", "s1.h5"]
    assert {"s0.png", "s1.png", "s0_mask.h5", "s1_mask.h5"} <= set(after)
    # a checkpoint killed while being written: the earlier one is still whole
    script = textwrap.dedent(f"""
        import os, sys, time, torch
        import climseg.output
        from climseg.train.checkpoint import save_checkpoint
        real = os.replace
        def slow(src, dst):
            print("WRITING", flush=True); time.sleep(30); real(src, dst)
        os.replace = slow
        save_checkpoint({str(tmp_path / "last.pt")!r}, dict(model=dict(), data=dict(step=2)))
    """)
    from climseg.train.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(str(tmp_path / "last.pt"), dict(model=dict(), data=dict(step=1)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "WRITING"
    proc.kill()
    proc.wait()
    assert load_checkpoint(str(tmp_path / "last.pt"))["data"]["step"] == 1
