"""The trainer: metrics, checkpoints, and exact resume."""

import json
import os

import pytest
import torch

from climseg.errors import CheckpointError, ConfigError, DataError
from climseg.train import TrainingListener, TrainingStopped, load_checkpoint, prepare, train

REQUIRED_KEYS = {
    "epoch",
    "split",
    "loss",
    "iou_background",
    "iou_tc",
    "iou_ar",
    "mean_iou",
    "deepcam_iou",
    "samples_per_s",
}


def options(data, out, **kw):
    base = dict(data=data, out=str(out), epochs=2, batch_size=2, progress=False, warmup_steps=2, seed=3)
    base.update(kw)
    return base


def quiet(*args, **kwargs):
    pass


def rows(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_training_writes_metrics_and_checkpoints(small_dataset, tmp_path):
    summary = train(options(small_dataset, tmp_path / "run"), log=quiet)
    out = str(tmp_path / "run")
    lines = rows(out)
    assert [(r["epoch"], r["split"]) for r in lines] == [
        (1, "train"),
        (1, "validation"),
        (2, "train"),
        (2, "validation"),
    ]
    for r in lines:
        assert REQUIRED_KEYS <= set(r)
        assert r["loss"] > 0 and r["samples_per_s"] > 0
    assert lines[-1]["step"] == 10 and lines[0]["tflops_per_s"] > 0
    assert summary["validation"]["samples"] == 4
    assert {"last.pt", "best.pt", "run.json", "metrics.jsonl"} <= set(os.listdir(out))
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
    ckpt = load_checkpoint(out)  # a run folder means its last.pt
    assert ckpt["model"]["config"] == "tiny" and ckpt["train"]["progress"]["epoch"] == 2
    assert len(ckpt["data"]["channels"]) == 16 and ckpt["data"]["shift"].shape == (16,)


def _state(out):
    return load_checkpoint(os.path.join(out, "last.pt"))["model"]["state_dict"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


@pytest.mark.parametrize("stop_at", [3, 5])  # mid-epoch, and exactly at an epoch's end
def test_resume_continues_exactly(small_dataset, tmp_path, stop_at):
    straight = tmp_path / "straight"
    train(options(small_dataset, straight), log=quiet)
    split = tmp_path / "split"
    result = train(options(small_dataset, split, max_steps=stop_at), log=quiet)
    assert result["stopped"] and result["step"] == stop_at
    train(dict(resume=str(split / "last.pt"), progress=False), log=quiet)
    _assert_same_weights(_state(str(straight)), _state(str(split)))
    a, b = rows(str(straight)), rows(str(split))
    assert [(r["epoch"], r["split"]) for r in a] == [(r["epoch"], r["split"]) for r in b]
    for ra, rb in zip(a, b):
        for key in ("loss", "iou_tc", "iou_ar", "mean_iou", "deepcam_iou"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-9, abs=1e-12), key


def test_resume_drops_metric_lines_written_after_the_checkpoint(small_dataset, tmp_path):
    done, partial = tmp_path / "done", tmp_path / "partial"
    train(options(small_dataset, done), log=quiet)
    train(options(small_dataset, partial, max_steps=7), log=quiet)
    # the run went on past step 7 before it died: its later lines must go
    os.replace(done / "metrics.jsonl", partial / "metrics.jsonl")
    assert rows(str(partial))[-1]["step"] == 10
    train(dict(resume=str(partial), progress=False), log=quiet)
    lines = rows(str(partial))
    assert [(r["epoch"], r["split"], r["step"]) for r in lines] == [
        (1, "train", 5),
        (1, "validation", 5),
        (2, "train", 10),
        (2, "validation", 10),
    ]


def test_mid_epoch_resume_needs_the_same_batch_size(small_dataset, tmp_path):
    out = tmp_path / "run"
    train(options(small_dataset, out, max_steps=3), log=quiet)
    with pytest.raises(CheckpointError, match="mid-epoch with batch size 2; resume it with --batch-size 2"):
        prepare(dict(resume=str(out), batch_size=4, progress=False), log=quiet)


def test_stop_request_writes_a_checkpoint(small_dataset, tmp_path):
    trainer = prepare(options(small_dataset, tmp_path / "run"), log=quiet)
    trainer.request_stop()
    with pytest.raises(TrainingStopped) as info:
        trainer.fit()
    ckpt = load_checkpoint(info.value.checkpoint)
    assert ckpt["train"]["progress"]["step"] == 0  # stopped before the next step, which resume will take


def test_refusals(small_dataset, tmp_path):
    out = tmp_path / "run"
    train(options(small_dataset, out, epochs=1), log=quiet)
    with pytest.raises(ConfigError, match="already holds a training run"):
        prepare(options(small_dataset, out), log=quiet)
    with pytest.raises(CheckpointError, match="was trained with model configuration 'tiny', not 'deepcam'"):
        prepare(dict(resume=str(out / "last.pt"), network="deepcam", progress=False), log=quiet)
    with pytest.raises(CheckpointError, match="expects 16 input channels, the data gives 2"):
        prepare(dict(resume=str(out / "last.pt"), channels="TMQ,PSL", progress=False), log=quiet)
    with pytest.raises(ConfigError, match="has already trained 1 epochs; pass --epochs above 1"):
        prepare(dict(resume=str(out / "last.pt"), progress=False), log=quiet)
    with pytest.raises(ConfigError, match="larger than the 10 training samples"):
        prepare(options(small_dataset, tmp_path / "x", batch_size=11), log=quiet)
    with pytest.raises(ConfigError, match="optimizer: 'sgd' is not one of"):
        prepare(options(small_dataset, tmp_path / "x", optimizer="sgd"), log=quiet)
    with pytest.raises(DataError, match="expected sub-folders train/ and validation/"):
        prepare(options(str(tmp_path), tmp_path / "x"), log=quiet)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt: not a readable checkpoint"):
        prepare(dict(resume=str(tmp_path / "broken.pt")), log=quiet)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a climseg checkpoint"):
        prepare(dict(resume=str(tmp_path / "foreign.pt")), log=quiet)


def test_config_file_and_other_optimizers(small_dataset, tmp_path):
    cfg = tmp_path / "opts.yaml"
    cfg.write_text(
        "optimizer: lamb\nlr-schedule: multistep\nmilestones: [3]\nchannels: TMQ, U850, V850, PSL\n"
        "precision: bf16\nnormalization: zscore\nclip_grad_norm: 1.0\nloss_weights: kurth2018\n"
    )
    summary = train(options(small_dataset, tmp_path / "run", epochs=1), config_file=str(cfg), log=quiet)
    assert summary["validation"]["loss"] > 0
    ckpt = load_checkpoint(str(tmp_path / "run"))
    assert ckpt["model"]["in_channels"] == 4 and ckpt["train"]["options"]["optimizer"] == "lamb"
    assert ckpt["data"]["channels"] == ["TMQ", "U850", "V850", "PSL"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rate: 3\n")
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        prepare(options(small_dataset, tmp_path / "y"), config_file=str(bad), log=quiet)


def test_fp16_loss_scaling_on_cpu(small_dataset, tmp_path):
    summary = train(options(small_dataset, tmp_path / "run", epochs=1, precision="fp16"), log=quiet)
    assert summary["validation"]["samples"] == 4
    ckpt = load_checkpoint(str(tmp_path / "run"))
    assert ckpt["train"]["scaler"]["scale"] > 0


class Recorder(TrainingListener):
    """Hears the loop's events as (name, arguments) pairs."""

    def __init__(self):
        self.heard = []

    def run_start(self, trainer):
        self.heard.append(("run_start",))

    def epoch_start(self, epoch, step):
        self.heard.append(("epoch_start", epoch, step))

    def train_stop(self, row):
        self.heard.append(("train_stop", row["epoch"], row["split"]))

    def eval_start(self, epoch):
        self.heard.append(("eval_start", epoch))

    def eval_stop(self, row):
        self.heard.append(("eval_stop", row["epoch"], row["split"]))

    def epoch_stop(self, epoch, step):
        self.heard.append(("epoch_stop", epoch, step))

    def run_stop(self, status, epoch):
        self.heard.append(("run_stop", status, epoch))


def test_listeners_hear_the_loop_events_in_order(small_dataset, tmp_path):
    trainer = prepare(options(small_dataset, tmp_path / "run", validate_every=2, max_steps=7), log=quiet)
    recorder = Recorder()
    trainer.events.add(recorder)
    assert trainer.fit()["stopped"]
    assert recorder.heard == [
        ("run_start",),
        ("epoch_start", 1, 0),
        ("train_stop", 1, "train"),
        ("epoch_stop", 1, 5),
        ("epoch_start", 2, 5),
        ("run_stop", "stopped", 2),
    ]
    trainer = prepare(dict(resume=str(tmp_path / "run"), progress=False), log=quiet)
    recorder = Recorder()
    trainer.events.add(recorder)
    trainer.fit()
    assert recorder.heard == [
        ("run_start",),
        ("epoch_start", 2, 7),
        ("train_stop", 2, "train"),
        ("eval_start", 2),
        ("eval_stop", 2, "validation"),
        ("epoch_stop", 2, 10),
        ("run_stop", "completed", 2),
    ]
