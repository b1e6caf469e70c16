"""climseg predict as a pipeline (issue 25): precision by hardware, agreement of every precision with
fp32 on a network trained by ``climseg train``, int8 and its cache, order and completeness of the
outputs under batching and overlap, bounded read-ahead, failures and kills mid-file, MPI ranks,
and ``climseg bench predict``."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import netCDF4
import numpy as np
import pytest
import torch

from climseg.cli import main
from climseg.data.deepcam import write_sample
from climseg.data.netcdf import write_cam5_netcdf
from climseg.data.synthetic import generate_sample, grid
from climseg.errors import ConfigError, DataError
from climseg.predict import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quiet(*a, **k):
    pass


def has_torchao():
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


needs_torchao = pytest.mark.skipif(not has_torchao(), reason="int8 needs torchao (pip install 'climseg[int8]')")


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    """A tiny network trained by `climseg train` (4 epochs on the small set), its decision threshold
    then moved so that about 6% of the pixels are cyclones and 6% rivers.

    20 steps on 32 x 48 samples teach the network features, but not yet to call a pixel anything but
    background; masks that are all background would agree in every precision and the agreement tests
    could not fail. Only the classifier's bias moves (the per-class offset of the logits that puts
    the 94th percentile of each event class's margin over background on the validation samples at
    zero): every weight that computes the features stays as trained."""
    from climseg.constants import CHANNELS
    from climseg.data import list_samples, read_sample
    from climseg.models.checkpoint import build_model, load_checkpoint, save_checkpoint

    out = tmp_path_factory.mktemp("trained") / "run"
    options = ["--epochs", "4", "--batch-size", "2", "--warmup-steps", "2", "--lr", "5e-3"]
    assert main(["train", "--data", small_dataset, "--out", str(out), *options, "--no-progress"]) == 0
    ckpt = load_checkpoint(str(out / "last.pt"))
    channels = [CHANNELS.index(c) for c in ckpt["data"]["channels"]]
    shift = torch.as_tensor(ckpt["data"]["shift"]).view(1, -1, 1, 1)
    scale = torch.as_tensor(ckpt["data"]["scale"]).view(1, -1, 1, 1)
    x = torch.stack(
        [
            torch.from_numpy(read_sample(f)[0][..., channels]).permute(2, 0, 1)
            for f in list_samples(os.path.join(small_dataset, "validation"))
        ]
    )
    with torch.no_grad():
        logits = build_model(ckpt, "cpu").eval()((x - shift) * scale)
    bias = ckpt["model"]["state_dict"]["decoder.classifier.bias"]
    for c in (1, 2):
        bias[c] -= torch.quantile((logits[:, c] - logits[:, 0]).flatten(), 0.94)
    save_checkpoint(str(out / "moved.pt"), dict(model=ckpt["model"], data=ckpt["data"]))
    return str(out / "moved.pt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Inputs of several shapes: a.nc (5 steps), b.nc (3 steps, rows north to south), c.nc (one step,
    no time axis), d.nc (2 steps of an odd 30 x 45 grid: padded), s.h5 (a DeepCAM sample)."""
    folder = tmp_path_factory.mktemp("inputs")
    lat, lon = grid(32, 48)

    def steps(n, seed, h=32, w=48):
        return np.stack([generate_sample(h, w, seed=seed, index=i)[0] for i in range(n)])

    write_cam5_netcdf(str(folder / "a.nc"), steps(5, 21), lat, lon)
    write_cam5_netcdf(str(folder / "b.nc"), steps(3, 22)[:, ::-1], lat[::-1], lon)
    write_cam5_netcdf(str(folder / "c.nc"), steps(1, 23)[0], lat, lon)
    write_cam5_netcdf(str(folder / "d.nc"), steps(2, 24, 30, 45), *grid(30, 45))
    data, labels, _ = generate_sample(32, 48, seed=25, index=0)
    write_sample(str(folder / "s.h5"), data, labels)
    return [str(folder / n) for n in ("a.nc", "b.nc", "c.nc", "d.nc", "s.h5")]


def masks_of(folder):
    """{file name: mask array} of every mask file in ``folder``."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith("_mask.nc"):
            with netCDF4.Dataset(os.path.join(folder, name)) as ds:
                out[name] = np.asarray(ds["mask"][:])
        elif name.endswith("_mask.h5"):
            with h5py.File(os.path.join(folder, name)) as f:
                out[name] = f["mask"][...]
    return out


def no_temporaries(folder):
    left = [n for _, dirs, files in os.walk(folder) for n in files + dirs if n.endswith(".tmp")]
    assert not left, left


def snapshot(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


# ----------------------------------------------------------------------------- precision by hardware


def test_precision_rule(monkeypatch):
    import climseg.perf.hardware as hw
    from climseg.train import config

    assert config.PRECISION_RULE == hw.PRECISION_RULE  # one rule for train and predict, written once
    monkeypatch.setattr(hw, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
    assert hw.choose_precision("auto", "cpu")[0] == "bf16" and "avx512_bf16" in hw.choose_precision("auto", "cpu")[1]
    assert hw.cpu_int8_support()[0]
    monkeypatch.setattr(hw, "cpu_flags", lambda: {"avx2"})
    precision, why = hw.choose_precision("auto", "cpu")
    assert precision == "fp32" and "AVX2" in why and not hw.cpu_int8_support()[0]
    assert hw.choose_precision("int8", "cpu") == ("int8", "as requested")
    for capability, expected in (
        ((9, 0), "bf16"),
        ((8, 0), "bf16"),
        ((7, 0), "fp16"),
        ((7, 5), "fp16"),
        ((6, 1), "fp32"),
    ):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=capability: c)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "a GPU")
        assert hw.choose_precision("auto", torch.device("cuda", 0))[0] == expected, capability


def test_info_names_the_precision():
    from climseg.info import info_lines

    lines = info_lines()
    line = next(line for line in lines if "precision" in line and "auto" in line)
    assert any(p in line for p in ("fp32", "bf16", "fp16"))


# ----------------------------------------------------------------------------- agreement with fp32


@pytest.mark.parametrize("precision", ["bf16", pytest.param("int8", marks=needs_torchao)])
def test_every_precision_agrees_with_fp32(trained, inputs, tmp_path, precision):
    """Every precision's masks against fp32's; for int8 also its cache beside the checkpoint (the
    second run loads the quantized network the first one cached, and writes the same masks)."""
    netcdf = [p for p in inputs if p.endswith(".nc")]
    ckpt = tmp_path / "ckpt" / "net.pt"  # a copy: the int8 cache goes beside it
    ckpt.parent.mkdir()
    shutil.copy(trained, ckpt)
    predict(str(ckpt), netcdf, str(tmp_path / "fp32"), maps=False, log=quiet, progress=False, precision="fp32")
    lines = []
    run = dict(maps=False, progress=False, precision=precision, calibrate=netcdf[:1])
    summary = predict(str(ckpt), netcdf, str(tmp_path / precision), log=lines.append, **run)
    assert summary["performance"]["precision"] == precision and precision in lines[0]
    ref, got = masks_of(tmp_path / "fp32"), masks_of(tmp_path / precision)
    assert ref.keys() == got.keys()
    a = np.concatenate([m.reshape(-1) for m in ref.values()])
    b = np.concatenate([m.reshape(-1) for m in got.values()])
    assert np.mean(a > 0) > 0.02, "the trained network finds no events: the comparison would say nothing"
    assert np.mean(a == b) >= 0.995, np.mean(a == b)
    if precision != "int8":
        return
    cached = [n for n in os.listdir(ckpt.parent) if n.startswith("net.pt.int8-") and n.endswith(".pt2")]
    assert len(cached) == 1 and any("cached in" in line for line in lines), lines
    again = []
    predict(str(ckpt), netcdf, str(tmp_path / "again"), log=again.append, **run)
    assert any("loaded from" in line and cached[0] in line for line in again), again
    for k, v in masks_of(tmp_path / precision).items():
        np.testing.assert_array_equal(v, masks_of(tmp_path / "again")[k])
    no_temporaries(ckpt.parent)


def test_fp16_on_a_cpu_and_bad_options_are_one_line(trained, inputs, tmp_path, capsys):
    with pytest.raises(ConfigError, match="fp16 is a GPU precision"):
        predict(trained, inputs[:1], str(tmp_path / "o"), log=quiet, progress=False, precision="fp16", device="cpu")
    for args, fragment in (
        (["--batch-size", "0"], "option batch-size: 0"),
        (["--map-workers", "-1"], "option map-workers: -1"),
    ):
        code = main(["predict", trained, inputs[0], "--out", str(tmp_path / "o"), "--no-progress", *args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("climseg: error: ") and fragment in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_int8_without_torchao_says_what_to_install(trained, inputs, tmp_path, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    code = main(["predict", trained, inputs[0], "--out", str(tmp_path / "o"), "--precision", "int8", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "int8 needs torchao" in err and "pip install" in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


@needs_torchao
def test_int8_cache_key(trained):
    """Another calibration set, other weights or another input shape: another key (so another
    cache file); the same ones: the same key. (The cache itself: test_every_precision_agrees_with_fp32.)"""
    from climseg.data.checkpoints import load_any_checkpoint
    from climseg.predict.int8 import cache_key

    loaded = load_any_checkpoint(trained)
    model = torch.nn.Conv2d(2, 2, 1)
    batches = [torch.ones(1, 2, 4, 4)]
    key = cache_key(model, loaded, batches, (1, 2, 4, 4))
    assert key == cache_key(model, loaded, [torch.ones(1, 2, 4, 4)], (1, 2, 4, 4))
    assert key != cache_key(model, loaded, [2 * torch.ones(1, 2, 4, 4)], (1, 2, 4, 4))
    assert key != cache_key(model, loaded, batches, (2, 2, 4, 4))
    with torch.no_grad():
        model.weight[0, 0] += 1e-3
    assert key != cache_key(model, loaded, batches, (1, 2, 4, 4))


def test_compiled_network_agrees_and_reports_its_compile_time(trained, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    predict(trained, inputs[:2], str(tmp_path / "eager"), maps=False, log=quiet, progress=False, precision="fp32")
    summary = predict(
        trained,
        inputs[:2],
        str(tmp_path / "compiled"),
        maps=False,
        log=quiet,
        progress=False,
        precision="fp32",
        compile=True,
        batch_size=3,
    )
    perf = summary["performance"]
    assert perf["compiled"] and perf["compile_seconds"] > 0
    assert os.listdir(tmp_path / "inductor")
    for k, v in masks_of(tmp_path / "eager").items():
        assert np.mean(v == masks_of(tmp_path / "compiled")[k]) >= 0.999


# ----------------------------------------------------------------------------- order and completeness


def test_batching_and_overlap_keep_every_step_in_order(trained, inputs, tmp_path):
    one = predict(
        trained, inputs, str(tmp_path / "b1"), log=quiet, progress=False, precision="fp32", batch_size=1, map_workers=0
    )
    expected_maps = {e["map"] for i in one["inputs"] for e in i["time_steps"]}
    assert len(expected_maps) == 5 + 3 + 1 + 2 + 1
    for batch, workers in ((3, 2), (8, 1)):
        out = tmp_path / f"b{batch}"
        s = predict(
            trained,
            inputs,
            str(out),
            log=quiet,
            progress=False,
            precision="fp32",
            batch_size=batch,
            map_workers=workers,
        )
        assert [i["file"] for i in s["inputs"]] == inputs
        for a, b in zip(one["inputs"], s["inputs"]):
            assert [e["index"] for e in b["time_steps"]] == list(range(len(a["time_steps"])))
            assert [e["time"] for e in a["time_steps"]] == [e["time"] for e in b["time_steps"]]
            assert [e["map"] for e in a["time_steps"]] == [e["map"] for e in b["time_steps"]]
        assert expected_maps <= set(os.listdir(out))
        ref, got = masks_of(tmp_path / "b1"), masks_of(out)
        assert ref.keys() == got.keys() and len(ref) == 5
        for k in ref:
            assert ref[k].shape == got[k].shape and np.mean(ref[k] == got[k]) >= 0.999, k
        assert s["performance"]["stages"]["steps"] == 12
        no_temporaries(out)


def test_slow_stages_change_nothing_and_reading_stays_bounded(trained, inputs, tmp_path, monkeypatch):
    import climseg.predict.inputs as inputs_module
    import climseg.predict.outputs as outputs_module

    netcdf = inputs[:2]  # 8 steps
    reference = predict(
        trained, netcdf, str(tmp_path / "ref"), maps=False, log=quiet, progress=False, precision="fp32", batch_size=2
    )
    read, written = [], []
    real_read, real_describe = inputs_module.InputFile.read, outputs_module.describe

    def slow_read(self, index):
        read.append(index)
        time.sleep(0.02 if index % 2 else 0.0)
        return real_read(self, index)

    def slow_describe(*args, **kwargs):
        written.append(len(read))  # how far reading had gone when this step was written
        time.sleep(0.1)
        return real_describe(*args, **kwargs)

    monkeypatch.setattr(inputs_module.InputFile, "read", slow_read)
    monkeypatch.setattr("climseg.predict.pipeline.describe", slow_describe)
    s = predict(
        trained, netcdf, str(tmp_path / "slow"), maps=False, log=quiet, progress=False, precision="fp32", batch_size=2
    )
    assert s["inputs"] == reference["inputs"]
    # reading runs ahead of writing by at most the two queues, the batch being computed and the one being filled
    for k, reads in enumerate(written):
        assert reads <= k + 1 + (2 * 2 + 2) * 2, (k, reads)
    assert written[0] < len(read) or len(read) == 8


# ----------------------------------------------------------------------------- failures and kills


def test_bad_step_mid_run_leaves_the_earlier_run(trained, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", trained, *inputs[:2], "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    lat, lon = grid(32, 48)
    fields = np.stack([generate_sample(32, 48, seed=5, index=i)[0] for i in range(4)])
    fields[2, 3, 4, 7] = np.nan  # found only when step 2 is read, after step 0 and 1 are written
    bad = tmp_path / "b.nc"  # the same name as an earlier output
    write_cam5_netcdf(str(bad), fields, lat, lon)
    code = main(["predict", trained, inputs[0], str(bad), "--out", str(out), "--no-progress", "--batch-size", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "b.nc: variable PSL holds NaN" in err and "\n" not in err, err
    assert snapshot(out) == before
    no_temporaries(out)
    with pytest.raises(DataError):
        predict(trained, [str(bad)], str(tmp_path / "new"), log=quiet, progress=False)
    assert not [n for n in os.listdir(tmp_path / "new")] if (tmp_path / "new").exists() else True


@pytest.mark.parametrize("where", ["mask", "map"])
def test_disk_full_mid_file_is_one_line(trained, inputs, tmp_path, capsys, monkeypatch, where):
    out = tmp_path / "out"
    assert main(["predict", trained, inputs[0], "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    calls = [0]
    if where == "mask":
        import climseg.predict.outputs as outputs_module

        real = outputs_module.MaskWriter.write

        def write(self, t, pred):
            calls[0] += 1
            if calls[0] == 3:
                raise OSError(errno.ENOSPC, "No space left on device", self.name)
            return real(self, t, pred)

        monkeypatch.setattr(outputs_module.MaskWriter, "write", write)
    else:  # in a map worker process (forked after the patch)
        real = __import__("climseg.plotting", fromlist=["plot_map"]).plot_map

        def plot(*args, **kwargs):
            if "a_t0003" in os.path.basename(args[0]):  # its temporary in the output batch's staging
                raise OSError(errno.ENOSPC, "No space left on device", args[0])
            return real(*args, **kwargs)

        monkeypatch.setattr("climseg.predict.outputs.plot_map", plot)
    code = main(["predict", trained, *inputs[:2], "--out", str(out), "--no-progress", "--map-workers", "2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no space left on device" in err and "\n" not in err, err
    assert snapshot(out) == before
    no_temporaries(out)


KILLED = textwrap.dedent("""
    import sys, time
    import climseg.predict.outputs as outputs
    real = outputs.MaskWriter.write
    calls = [0]
    def write(self, t, pred):
        calls[0] += 1
        if calls[0] == int(sys.argv[1]):
            print("WRITING", flush=True)
            time.sleep(60)
        return real(self, t, pred)
    outputs.MaskWriter.write = write
    from climseg.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_kill_mid_file_leaves_the_earlier_run_and_no_temporaries(trained, inputs, tmp_path, sig):
    out = tmp_path / "out"
    assert main(["predict", trained, *inputs[:2], "--out", str(out), "--no-progress"]) == 0
    before = snapshot(out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED,
            "4",
            "predict",
            trained,
            *inputs[:2],
            "--out",
            str(out),
            "--no-progress",
            "--batch-size",
            "2",
            "--map-workers",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = proc.stdout.readline()
    while line and line.strip() != "WRITING":  # the lines logged before: the network, the precision
        line = proc.stdout.readline()
    assert line.strip() == "WRITING"  # mid-file: steps 0-2 of a.nc written, maps in flight
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (143 if sig == signal.SIGTERM else 130), err
    assert "Traceback" not in err, err
    assert snapshot(out) == before
    no_temporaries(out)


# ----------------------------------------------------------------------------- MPI ranks


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec (pip install mpich mpi4py)")
def test_ranks_stream_their_shares(trained, inputs, tmp_path):
    predict(trained, inputs, str(tmp_path / "one"), maps=False, log=quiet, progress=False, precision="fp32")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            "mpiexec",
            "-n",
            "2",
            sys.executable,
            "-m",
            "climseg",
            "predict",
            trained,
            *inputs,
            "--out",
            str(tmp_path / "two"),
            "--no-maps",
            "--no-progress",
            "--precision",
            "fp32",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    one, two = masks_of(tmp_path / "one"), masks_of(tmp_path / "two")
    assert one.keys() == two.keys()
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])
    a = json.load(open(tmp_path / "one" / "summary.json"))
    b = json.load(open(tmp_path / "two" / "summary.json"))
    assert b["ranks"] == 2 and [i["time_steps"] for i in a["inputs"]] == [i["time_steps"] for i in b["inputs"]]


# ----------------------------------------------------------------------------- the benchmark


def test_bench_predict_runs_and_reports(trained, tmp_path):
    from climseg.bench.predict import main as bench

    path = tmp_path / "predict.json"
    assert (
        bench(
            [
                "--networks",
                "tiny",
                "--steps",
                "3",
                "--height",
                "32",
                "--width",
                "48",
                "--batch-size",
                "2",
                "--checkpoint",
                trained,
                "--agreement-steps",
                "3",
                "--agreement-height",
                "32",
                "--agreement-width",
                "48",
                "--agreement-precisions",
                "bf16",  # int8's agreement has its own test
                "--json",
                str(path),
            ]
        )
        == 0
    )
    result = json.load(open(path))
    rows = result["networks"]["tiny"]
    assert {"climseg predict", "climseg predict, with maps"} <= set(rows)
    assert any(k.startswith("(a)") for k in rows) and any(k.startswith("(b)") for k in rows)
    assert any(k.startswith("(c)") for k in rows)
    # (c) runs whole batches: 3 steps in batches of 2 are 4 forwards
    assert all(r["steps"] == (4 if k.startswith("(c)") else 3) and r["steps_per_second"] > 0 for k, r in rows.items())
    assert isinstance(result["agreement"]["bf16"], float) and result["agreement"]["bf16"] > 0.9
    md = open(tmp_path / "predict.md").read()
    assert "steps/s" in md and "pixels equal to fp32" in md and result["date"] in md


def test_map_workers_stop_quietly():
    """Stopping the map pool (Ctrl-C, SIGTERM, a failure elsewhere) ends idle workers without a traceback."""
    code = "import time\nfrom climseg.predict.outputs import MapPool\np = MapPool(2)\ntime.sleep(1)\np.stop()\nprint(1)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "1" and not proc.stderr.strip(), proc.stderr
