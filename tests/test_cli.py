"""The command line as a user meets it: every command end to end at a tiny size,
and every bad input answered with one line and exit status 2."""

import os
import subprocess
import sys

import numpy as np
import pytest

from climseg.cli import main
from climseg.errors import CheckpointError, ConfigError, UserError

ENV = dict(os.environ, PYTHONWARNINGS="ignore")


def run(*args, cwd=None, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "climseg", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(ENV, **(env or {})),
        timeout=600,
    )
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
    code, out, err = run(
        "generate",
        str(root / "data"),
        "--samples",
        "10",
        "--height",
        "32",
        "--width",
        "48",
        "--seed",
        "4",
        "--validation-fraction",
        "0.2",
        "--no-progress",
    )
    assert code == 0, err
    assert "wrote 8 training and 2 validation samples of 32x48" in out
    code, out, err = run(
        "train",
        "--data",
        str(root / "data"),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--out",
        str(root / "run"),
        "--no-progress",
    )
    assert code == 0, err
    assert "tropical cyclone" in out and "atmospheric river" in out and "DeepCAM score" in out
    return root


def test_generate_train_predict(workspace):
    val = sorted((workspace / "data" / "validation").iterdir())
    code, out, err = run(
        "predict", str(workspace / "run"), str(val[0]), "--out", str(workspace / "pred"), "--no-progress"
    )
    assert code == 0, err
    assert "IoU vs labels" in out
    names = set(os.listdir(workspace / "pred"))
    stem = val[0].stem
    assert {f"{stem}_mask.h5", f"{stem}.png", "summary.json"} <= names


def test_yaml_file_given_to_config_file(workspace, tmp_path):
    opts = tmp_path / "opts.yml"
    opts.write_text(f"data: {workspace / 'data'}\nepochs: 1\nbatch-size: 4\nnetwork: tiny\nchannels: [TMQ, PSL]\n")
    code, out, err = run(
        "train",
        "--config-file",
        str(opts),
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        env={"PYTHONWARNINGS": "default"},
    )
    assert code == 0, err
    assert "training tiny" in out and "warning" not in err
    from climseg.train import load_checkpoint

    ckpt = load_checkpoint(str(tmp_path / "run"))
    assert ckpt["train"]["options"]["network"] == "tiny" and "config" not in ckpt["train"]["options"]
    assert ckpt["model"]["config"] == "tiny"  # the checkpoint format keeps its own key


def test_yaml_file_given_to_config(workspace, tmp_path):
    """The old spellings: --config FILE.yaml and a file's config: key still work (with warnings)."""
    opts = tmp_path / "opts.yml"
    opts.write_text(f"data: {workspace / 'data'}\nepochs: 1\nbatch-size: 4\nconfig: tiny\nchannels: [TMQ, PSL, U850]\n")
    code, out, err = run(
        "train",
        "--config",
        str(opts),
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        env={"PYTHONWARNINGS": "default"},
    )
    assert code == 0, err
    assert "training tiny" in out
    warnings = [line for line in err.splitlines() if line.startswith("climseg: warning: ")]
    assert f"climseg: warning: --config {opts} is now --config-file {opts}" in warnings[0], err
    assert f"climseg: warning: {opts}: option 'config' is now 'network'" in warnings[1], err
    from climseg.train import load_checkpoint

    assert load_checkpoint(str(tmp_path / "run"))["data"]["channels"] == ["TMQ", "PSL", "U850"]


def test_info():
    code, out, err = run("info")
    assert code == 0, err
    assert "torch" in out and "atrous_conv2d" in out and "CLIMSEG_BACKEND" in out


def test_default_train_generates_and_caches_its_dataset(tmp_path, monkeypatch, capsys):
    import climseg.data.cache as cache

    monkeypatch.setattr(
        cache, "DEFAULT_DATASET", dict(samples=6, height=32, width=48, seed=1, validation_fraction=1 / 3)
    )
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

    assert_user_error(
        run("predict", str(run_dir), str(tmp_path / "missing.h5"), "--out", str(tmp_path / "o")),
        "missing.h5",
        "no such file",
    )
    assert_user_error(run("predict", str(run_dir), str(nan_file), "--out", str(tmp_path / "o")), "nan.h5", "NaN")
    assert_user_error(
        run("predict", str(run_dir), str(wrong), "--out", str(tmp_path / "o")), "wrong.h5", "(32, 48, 12)"
    )
    assert_user_error(
        run("predict", str(run_dir), str(labels), "--out", str(tmp_path / "o")), "labels.h5", "outside 0..2"
    )
    assert_user_error(
        run("predict", str(tmp_path / "nope.pt"), str(val[0]), "--out", str(tmp_path / "o")),
        "nope.pt",
        "checkpoint not found",
    )
    assert_user_error(
        run("train", "--resume", str(run_dir / "last.pt"), "--network", "deepcam", "--no-progress"),
        "last.pt",
        "'tiny', not 'deepcam'",
    )
    assert_user_error(run("train", "--data", str(tmp_path / "nowhere"), "--no-progress"), "nowhere", "no such folder")
    assert_user_error(run("train", "--data", str(data), "--precision", "fp8", "--out", str(tmp_path / "r")), "fp8")
    assert_user_error(run("train", "--data", str(data), "--epochs", "0", "--out", str(tmp_path / "r")), "epochs")
    assert_user_error(run("train", "--data", str(data), "--out", str(run_dir)), "already holds a training run")
    assert_user_error(
        run("generate", str(empty), "--samples", "2", "--height", "32", "--width", "48"), "already exists"
    )
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
    assert_user_error(
        run(
            "train",
            "--data",
            str(bad_data),
            "--epochs",
            "1",
            "--batch-size",
            "1",
            "--out",
            str(tmp_path / "r2"),
            "--no-progress",
        ),
        first.name,
        "outside 0..2",
    )


# ----------------------------------------------------------------------------- issue 15, item 9: messages


def test_command_line_type_errors_are_one_line(capsys):
    for argv, fragment in (
        (["train", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
        (["generate", "d", "--samples", "1.5"], "argument --samples: invalid int value"),
        (["stage"], "the following arguments are required"),
        (["nonsense"], "invalid choice"),
    ):
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
    from climseg.data.deepcam import write_sample
    from climseg.data.synthetic import generate_sample

    root = tmp_path / "d"
    generate_dataset(str(root), samples=4, height=32, width=48, workers=1, progress=False)
    first = sorted((root / "train").iterdir())[0]
    data, labels, _ = generate_sample(16, 16, seed=1)
    write_sample(str(first), data, labels)  # the first training file has another grid
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and first.name in err and "validation" in err and "16x16" in err, err


def test_second_signal_aborts_training():
    import signal

    from climseg.cli.signals import Terminated, install_stop_handlers

    class FakeTrainer:
        stop_requested = False

        def request_stop(self):
            self.stop_requested = True

    trainer = FakeTrainer()
    previous = install_stop_handlers(trainer)
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # the first: finish the step, checkpoint, stop
        assert trainer.stop_requested
        with pytest.raises(Terminated):  # the second: abort now
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs between bytecodes
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- issue 23: the CLI as a package


def train_parser():
    from climseg.cli.entry import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse keeps its subparsers here
    train = sub.choices["train"]
    train.complete()
    return parser, sub, train


def test_every_train_config_field_is_an_option_showing_its_real_default():
    import dataclasses

    from climseg.train.config import TrainConfig

    _, _, parser = train_parser()
    actions = {a.dest: a for a in parser._actions}
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        action = actions.get(field.name)
        assert action is not None, f"TrainConfig.{field.name} has no option"
        assert action.default is None  # only what the user typed overrides a file or a checkpoint
        assert "default" not in field.metadata["help"], f"{field.name}: the default is written by hand"
        value = getattr(defaults, field.name)
        if isinstance(value, bool):  # the flag turns the default over
            assert action.option_strings == [("--no-" if value else "--") + field.name.replace("_", "-")]
            assert action.const is (not value)
            continue
        assert action.option_strings == ["--" + field.name.replace("_", "-")]
        if value is None or value == []:
            shown = field.metadata["default_text"] or "none"
        else:
            shown = f"{value:g}" if isinstance(value, float) else str(value)
        assert action.help.endswith(f"(default: {shown})"), (field.name, action.help)
        if field.metadata["choices"]:
            assert action.metavar == "{" + ",".join(field.metadata["choices"]) + "}"
            assert value is None or value in field.metadata["choices"]
    assert vars(parser.parse_args([]))["network"] is None


def test_train_help_shows_defaults_and_the_precision_rule(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # no line breaks inside the phrases looked for
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--network {kurth2018,deepcam,tiny,cgnet}" in text and "(default: tiny)" in text
    assert "--recipe {mlperf-deepcam,sc18-kurth2018}" in text
    assert "--class-frequencies {dataset,deepcam}" in text and "(default: dataset)" in text
    assert "bf16 where the cores compute it natively (AVX512-BF16 or AMX), else fp32" in text
    assert "--lr RATE peak learning rate (default: 0.002)" in text


COMMANDS = ("train", "predict", "generate", "stage", "label", "track", "analyze", "convert", "bench", "info")


def test_version_and_every_help(capsys):
    from climseg import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"climseg {__version__}"
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    top = capsys.readouterr().out
    assert info.value.code == 0 and all(f"    {c} " in top for c in COMMANDS)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0 and f"usage: climseg {command}" in capsys.readouterr().out


def test_one_casing_every_default_and_each_choice_once():
    """Arguments are named in capitals; an option that takes a value says its default (unless
    required); a list of choices appears once (argparse's, or the help's braces, never both)."""
    import argparse

    _, sub, _ = train_parser()
    for command, parser in sub.choices.items():
        parser.complete()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            name = f"climseg {command} {'/'.join(action.option_strings) or action.dest}"
            metavar = action.metavar or (None if action.choices else action.dest.upper())
            if metavar is not None:
                assert metavar.upper() == metavar or metavar.startswith("{"), name
            if not action.option_strings or action.nargs == 0:
                continue  # positionals and flags
            if action.required or (action.help or "").startswith("deprecated"):
                continue
            assert "default" in action.help, name
            if action.choices:
                assert action.metavar is None or not action.metavar.startswith("{"), name


def test_deprecated_config_names_warn_and_still_work(tmp_path, capsys, monkeypatch):
    import warnings

    monkeypatch.chdir(tmp_path)

    from climseg.cli.train import old_config
    from climseg.train.config import merge, read_config_file

    with pytest.warns(FutureWarning, match="--config is now --network"):
        assert old_config("deepcam", None, None) == ("deepcam", None)
    yaml_file = tmp_path / "o.yaml"
    yaml_file.write_text("config: deepcam\nepochs: 2\n")
    with pytest.warns(FutureWarning, match="--config-file"):
        assert old_config(str(yaml_file), None, None) == (None, str(yaml_file))
    with pytest.raises(UserError, match="give the network once, with --network"):
        old_config("deepcam", "tiny", None)
    with pytest.warns(FutureWarning, match="option 'config' is now 'network'"):
        assert read_config_file(str(yaml_file)) == {"network": "deepcam", "epochs": 2}
    both = tmp_path / "both.yaml"
    both.write_text("config: deepcam\nnetwork: tiny\n")
    with pytest.raises(ConfigError, match="given twice"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_config_file(str(both))
    assert merge({"config": "cgnet"}).network == "cgnet"  # e.g. the saved options of an older checkpoint
    # on the command line: one line on stderr, then the command goes on (here to its own one-line error)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        code = main(["train", "--config", "deepcam", "--data", str(tmp_path / "nowhere"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[0].startswith("climseg: warning: --config is now --network"), err
    assert err[1].startswith("climseg: error: ") and "nowhere" in err[1], err


def test_resume_from_a_checkpoint_saved_before_the_rename(workspace, tmp_path):
    from climseg.train import load_checkpoint, prepare, save_checkpoint

    ckpt = load_checkpoint(str(workspace / "run" / "last.pt"))
    options = ckpt["train"]["options"]
    options["config"] = options.pop("network")  # as climseg 0.1 wrote them
    (tmp_path / "old").mkdir()
    save_checkpoint(str(tmp_path / "old" / "last.pt"), {k: v for k, v in ckpt.items() if k != "path"})
    with pytest.raises(CheckpointError, match="'tiny', not 'deepcam'"):
        prepare(dict(resume=str(tmp_path / "old" / "last.pt"), network="deepcam", progress=False), log=lambda *a: None)
    trainer = prepare(dict(resume=str(tmp_path / "old" / "last.pt"), epochs=3, progress=False), log=lambda *a: None)
    try:
        assert trainer.cfg.network == "tiny" and trainer.cfg.batch_size == 4
    finally:
        trainer.run_lock.release()


def test_argument_checks_live_in_the_library(workspace, tmp_path):
    """The Python API refuses what the command line refuses, with the same one-line messages."""
    from climseg.analytics.label import LabelOptions, label
    from climseg.analytics.track import track
    from climseg.analytics.track_options import TrackOptions, parse_size
    from climseg.data.generate import generate_dataset
    from climseg.data.staging import stage
    from climseg.data.synthetic import Features
    from climseg.data.timeseries import generate_timeseries, parse_interval
    from climseg.predict import predict

    data = str(workspace / "data")
    sample = str(sorted((workspace / "data" / "validation").iterdir())[0])
    cases = [
        (lambda: stage(data, str(tmp_path / "s"), replicate=0), "--replicate must be at least 1, got 0"),
        (lambda: stage(data, str(tmp_path / "s"), threads=0), "--threads must be at least 1, got 0"),
        (lambda: stage(data, str(tmp_path / "s"), shard_by="disk"), "--shard-by must be node or rank"),
        (lambda: Features(cyclones_mean=-1.0), "--cyclones must not be negative"),
        (lambda: Features(rivers_mean=-0.5), "--rivers must not be negative"),
        (lambda: generate_dataset(str(tmp_path / "g"), 4, 32, 48, workers=0), "--workers 0: must be at least 1"),
        (lambda: generate_timeseries(str(tmp_path / "t"), 4, 3.0, 16, 32, workers=0), "--workers 0: must be at least"),
        (lambda: generate_timeseries(str(tmp_path / "t"), 0, 3.0, 16, 32), "--timesteps 0: need at least 1"),
        (lambda: parse_interval("soon"), "--interval soon"),
        (lambda: parse_size("big", "--tc-min-size"), "--tc-min-size big"),
        (lambda: track([sample], str(tmp_path / "k"), TrackOptions(look_ahead=0)), "--look-ahead 0"),
        (lambda: track([sample], str(tmp_path / "k"), TrackOptions(min_steps=0)), "--min-steps 0"),
        (lambda: track([sample], str(tmp_path / "k"), workers=0), "--workers 0"),
        (lambda: label([sample], str(tmp_path / "l"), LabelOptions(method="tc+xx")), "--method tc+xx"),
        (lambda: label([sample], str(tmp_path / "l"), LabelOptions(ar_field="wind")), "--ar-field wind"),
        (lambda: label([sample], str(tmp_path / "l"), workers=0), "--workers 0: must be at least 1"),
        (lambda: label([sample], str(tmp_path / "l"), convention="martian"), "--convention martian"),
        (
            lambda: predict(str(workspace / "run"), [sample], str(tmp_path / "p"), convention="martian"),
            "--convention martian",
        ),
    ]
    for call, message in cases:
        with pytest.raises(UserError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value), (message, str(info.value))
    assert not any((tmp_path / name).exists() for name in ("s", "g", "t", "k", "l", "p"))


def test_stage_options_are_checked_by_stage(workspace, tmp_path, capsys):
    code = main(["stage", str(workspace / "data"), str(tmp_path / "s"), "--replicate", "0", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "climseg: error: --replicate must be at least 1, got 0", err


def test_predict_says_what_it_wrote(workspace, tmp_path):
    from climseg.predict import predict

    sample = str(sorted((workspace / "data" / "validation").iterdir())[0])
    lines = []
    predict(str(workspace / "run"), [sample], str(tmp_path / "without"), maps=False, progress=False, log=lines.append)
    assert lines[-1] == f"climseg: masks and summary.json written to {tmp_path / 'without'}"
    assert not any(name.endswith(".png") for name in os.listdir(tmp_path / "without"))
    lines = []
    predict(str(workspace / "run"), [sample], str(tmp_path / "with"), progress=False, log=lines.append)
    assert lines[-1] == f"climseg: masks, maps and summary.json written to {tmp_path / 'with'}"


def test_readme_analytics_workflow_runs_as_written_after_the_default_train(tmp_path, monkeypatch, capsys):
    """The README's commands from masks to climate science, at a small size, after a default `climseg train`."""
    import re
    import shlex

    import climseg.data.cache as cache

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    section = readme.split("## From masks to climate science", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    commands = [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("climseg ")]
    assert [c.split()[1] for c in commands] == ["generate", "label", "predict", "track", "analyze"]
    monkeypatch.setattr(
        cache, "DEFAULT_DATASET", dict(samples=6, height=32, width=48, seed=1, validation_fraction=1 / 3)
    )
    monkeypatch.setenv("CLIMSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1", "--batch-size", "2", "--no-progress"]) == 0  # the default run
    capsys.readouterr()
    small = {"--timesteps": "8", "--height": "32", "--width": "48"}
    python = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "climseg"))
    for command in commands:
        words = command.split()
        words = [small.get(words[i - 1], w) if i else w for i, w in enumerate(words)]
        line = python + " " + " ".join(words[1:])
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr)
    assert os.path.isfile(tmp_path / "analysis" / "summary.json") and os.listdir(tmp_path / "labels")


def test_docs_name_every_option_of_every_command():
    _, sub, _ = train_parser()
    docs = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "cli.md")).read()
    missing = []
    for command, parser in sub.choices.items():
        parser.complete()
        section = docs.split(f"## `climseg {command}`", 1)[-1].split("\n## ", 1)[0]
        missing += [
            f"{command} {flag}"
            for action in parser._actions
            for flag in action.option_strings
            if flag not in ("-h", "--help") and f"`{flag}" not in section
        ]
    assert not missing, missing
