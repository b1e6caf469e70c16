"""The command line as a user meets it: every command end to end at a tiny size,
and every bad input answered with one line and exit status 2."""
import os
import subprocess
import sys

import numpy as np
import pytest

from climseg.cli import main

ENV = dict(os.environ, PYTHONWARNINGS="ignore")


def run(*args, cwd=None, env=None):
    proc = subprocess.run([sys.executable, "-m", "climseg", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(ENV, **(env or {})), timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def assert_user_error(result, *fragments):
    code, out, err = result
    assert code == 2, (code, out, err)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("climseg: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """generate -> train -> predict through the CLI once; later tests reuse the files."""
    root = tmp_path_factory.mktemp("cli")
    code, out, err = run("generate", str(root / "data"), "--samples", "10", "--height", "32", "--width", "48",
                         "--seed", "4", "--validation-fraction", "0.2", "--no-progress")
    assert code == 0, err
    assert "wrote 8 training and 2 validation samples of 32x48" in out
    code, out, err = run("train", "--data", str(root / "data"), "--epochs", "2", "--batch-size", "4",
                         "--out", str(root / "run"), "--no-progress")
    assert code == 0, err
    assert "tropical cyclone" in out and "atmospheric river" in out and "DeepCAM score" in out
    return root


def test_generate_train_predict(workspace):
    val = sorted((workspace / "data" / "validation").iterdir())
    code, out, err = run("predict", str(workspace / "run"), str(val[0]), "--out", str(workspace / "pred"), "--no-progress")
    assert code == 0, err
    assert "IoU vs labels" in out
    names = set(os.listdir(workspace / "pred"))
    stem = val[0].stem
    assert {f"{stem}_mask.h5", f"{stem}.png", "summary.json"} <= names


def test_yaml_file_given_to_config(workspace, tmp_path):
    opts = tmp_path / "opts.yml"
    opts.write_text(f"data: {workspace / 'data'}\nepochs: 1\nbatch-size: 4\nconfig: tiny\nchannels: [TMQ, PSL, U850]\n")
    code, out, err = run("train", "--config", str(opts), "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 0, err
    assert "training tiny" in out
    from climseg.train import load_checkpoint
    assert load_checkpoint(str(tmp_path / "run"))["data"]["channels"] == ["TMQ", "PSL", "U850"]


def test_info():
    code, out, err = run("info")
    assert code == 0, err
    assert "torch" in out and "atrous_conv2d" in out and "CLIMSEG_BACKEND" in out


def test_default_train_generates_and_caches_its_dataset(tmp_path, monkeypatch, capsys):
    import climseg.data.cache as cache

    monkeypatch.setattr(cache, "DEFAULT_DATASET", dict(samples=6, height=32, width=48, seed=1, validation_fraction=1 / 3))
    monkeypatch.setenv("CLIMSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--batch-size", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Validation on 2 held-out samples (32x48)" in out and "tropical cyclone" in out
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1 and runs[0].startswith("tiny-")
    cached = os.listdir(tmp_path / "cache")
    assert len(cached) == 1 and cached[0].startswith("synthetic-32x48-n6")
    assert main(["train", "--epochs", "1", "--batch-size", "2", "--no-progress", "--out", "second"]) == 0
    assert os.listdir(tmp_path / "cache") == cached  # reused, not regenerated


def test_bad_inputs_get_one_line_and_status_2(workspace, tmp_path):
    data, run_dir = workspace / "data", workspace / "run"
    val = sorted((data / "validation").iterdir())
    import h5py

    nan_file = tmp_path / "nan.h5"
    with h5py.File(val[0]) as src, h5py.File(nan_file, "w") as dst:
        x = src["climate/data"][...]
        x[1, 2, 0] = np.nan
        dst["climate/data"] = x
        dst["climate/labels_0"] = src["climate/labels_0"][...]
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f["climate/data"] = np.zeros((32, 48, 12), np.float32)
    labels = tmp_path / "labels.h5"
    with h5py.File(val[0]) as src, h5py.File(labels, "w") as dst:
        dst["climate/data"] = src["climate/data"][...]
        dst["climate/labels_0"] = np.full((32, 48), 5, np.int32)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "keep.txt").write_text("x")

    assert_user_error(run("predict", str(run_dir), str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o")),
                      "missing.h5", "no such file")
    assert_user_error(run("predict", str(run_dir), str(nan_file), "--out", str(tmp_path / "o")), "nan.h5", "NaN")
    assert_user_error(run("predict", str(run_dir), str(wrong), "--out", str(tmp_path / "o")), "wrong.h5", "(32, 48, 12)")
    assert_user_error(run("predict", str(run_dir), str(labels), "--out", str(tmp_path / "o")), "labels.h5", "outside 0..2")
    assert_user_error(run("predict", str(tmp_path / "nope.pt"), str(val[0]), "--out", str(tmp_path / "o")),
                      "nope.pt", "checkpoint not found")
    assert_user_error(run("train", "--resume", str(run_dir / "last.pt"), "--config", "deepcam", "--no-progress"),
                      "last.pt", "'tiny', not 'deepcam'")
    assert_user_error(run("train", "--data", str(tmp_path / "nowhere"), "--no-progress"), "nowhere", "no such folder")
    assert_user_error(run("train", "--data", str(data), "--precision", "fp8", "--out", str(tmp_path / "r")), "fp8")
    assert_user_error(run("train", "--data", str(data), "--epochs", "0", "--out", str(tmp_path / "r")), "epochs")
    assert_user_error(run("train", "--data", str(data), "--out", str(run_dir)), "already holds a training run")
    assert_user_error(run("generate", str(empty), "--samples", "2", "--height", "32", "--width", "48"),
                      "already exists")
    assert_user_error(run("generate", str(tmp_path / "g"), "--height", "40"), "multiples of 16")
    assert (empty / "keep.txt").read_text() == "x"
    assert not (tmp_path / "o").exists() or not any(n.endswith(".tmp") for n in os.listdir(tmp_path / "o"))
    # a training sample with bad labels stops training with the file's name
    bad_data = tmp_path / "bad_data"
    code, _, err = run("generate", str(bad_data), "--samples", "3", "--height", "32", "--width", "48", "--no-progress")
    assert code == 0, err
    first = sorted((bad_data / "train").iterdir())[0]
    with h5py.File(first, "r+") as f:
        f["climate/labels_0"][0, 0] = 9
    assert_user_error(run("train", "--data", str(bad_data), "--epochs", "1", "--batch-size", "1", "--out",
                          str(tmp_path / "r2"), "--no-progress"), first.name, "outside 0..2")


# ----------------------------------------------------------------------------- issue 15, item 9: messages

def test_command_line_type_errors_are_one_line(capsys):
    for argv, fragment in ((["train", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
                           (["generate", "d", "--samples", "1.5"], "argument --samples: invalid int value"),
                           (["stage"], "the following arguments are required"),
                           (["nonsense"], "invalid choice")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err
        assert info.value.code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and "usage:" not in err, err


@pytest.mark.parametrize("value, shown", [("1.5", "1.5"), ("true", "True"), ("[2]", "[2]")])
def test_yaml_option_of_the_wrong_type_is_one_line(tmp_path, capsys, value, shown):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"epochs: {value}\n")
    code = main(["train", "--config-file", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"option epochs: invalid value {shown} (expected a whole number)" in err[0], err
    assert not (tmp_path / "r").exists()


def test_data_path_messages_say_what_is_wrong(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["train", "--data", str(afile), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "afile: is a file; --data names a dataset folder" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "gone"), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "gone: no such folder" in capsys.readouterr().err
    assert main(["generate", str(afile), "--samples", "2", "--height", "16", "--width", "16"]) == 2
    assert "afile: is a file, not a folder" in capsys.readouterr().err


def test_training_data_grid_mismatch_names_both_files(tmp_path, capsys):
    from climseg.data import generate_dataset
    from climseg.data.synthetic import generate_sample, write_sample

    root = tmp_path / "d"
    generate_dataset(str(root), samples=4, height=32, width=48, workers=1, progress=False)
    first = sorted((root / "train").iterdir())[0]
    data, labels, _ = generate_sample(16, 16, seed=1)
    write_sample(str(first), data, labels)           # the first training file has another grid
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and first.name in err and "validation" in err and "16x16" in err, err


def test_second_signal_aborts_training():
    import signal

    from climseg.cli import Terminated, _install_stop_handlers

    class FakeTrainer:
        stop_requested = False

        def request_stop(self):
            self.stop_requested = True

    trainer = FakeTrainer()
    previous = _install_stop_handlers(trainer)
    try:
        os.kill(os.getpid(), signal.SIGTERM)         # the first: finish the step, checkpoint, stop
        assert trainer.stop_requested
        with pytest.raises(Terminated):              # the second: abort now
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):                     # the handler runs between bytecodes
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
