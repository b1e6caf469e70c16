"""climseg inside other trainers (issue 28): the scripts of docs/trainers.md, taken from the page
as they stand, run with 2 CPU processes (gloo) and resumed from their checkpoints; a miswired
Lightning run stops with one climseg error; a Lightning checkpoint of a converted model resumes
into the converted and the plain model alike.

PyTorch Lightning and Accelerate are test extras (``pip install ".[trainers]"``), not
dependencies: where they are missing, their tests are skipped.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = os.path.join(HERE, "..", "docs", "trainers.md")
IDENTICAL = "epochs, the same weights and statistics on all 2 ranks (spread 0.0)"


def page_scripts():
    """The page's code blocks titled ``name.py``: name -> source."""
    text = open(PAGE, encoding="utf-8").read()
    return dict(re.findall(r'```python title="([\w.]+\.py)"\n(.*?)\n```', text, flags=re.S))


def write_script(tmp_path, name, edit=None):
    source = page_scripts()[name]
    if edit is not None:
        source = edit(source)
    path = tmp_path / name
    path.write_text(source)
    return str(path)


def env():
    import climseg

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(climseg.__file__)))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    out = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=path, CLIMSEG_DIST_TIMEOUT="120")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "CLIMSEG_LOCAL_SIZE"):
        out.pop(k, None)
    return out


def run(args, cwd, timeout=420):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env(), timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def torchrun(script, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script, *args]


def assert_identical(code, log, epochs):
    assert code == 0, log[-6000:]
    for rank in (0, 1):
        assert f"rank {rank}: {epochs} {IDENTICAL}" in log, log[-6000:]


def test_the_page_has_the_three_scripts():
    assert set(page_scripts()) == {"torchrun_ddp.py", "lightning_ddp.py", "accelerate_ddp.py"}


def test_plain_ddp_under_torchrun(small_dataset, tmp_path):
    script = write_script(tmp_path, "torchrun_ddp.py")
    code, log = run(torchrun(script, small_dataset, str(tmp_path / "run"), "2"), tmp_path)
    assert_identical(code, log, 2)
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert "3.project.norm.running_mean" in weights  # the plain module's state dict


def test_lightning_ddp_ends_identical_and_resumes(small_dataset, tmp_path):
    pytest.importorskip("pytorch_lightning")

    def instrument(source):  # is it climseg's hook that averaged (DDP's own would too)? which epochs were set?
        counting = (
            "import climseg.distributed.lightning as wiring\n"
            "calls, epochs_set = [], []\n"
            "original = wiring.hierarchical_allreduce_hook\n"
            "wiring.hierarchical_allreduce_hook = lambda state, bucket: calls.append(1) or original(state, bucket)\n"
            "set_epoch = FastLoader.set_epoch\n"
            "FastLoader.set_epoch = lambda self, e, start=0: epochs_set.append(e) or set_epoch(self, e, start)\n"
            "\n\nif __name__ == "
        )
        source = source.replace("\n\nif __name__ == ", "\n\n" + counting, 1)
        report = 'print(f"rank {trainer.global_rank}: {len(calls)} hook calls, epochs set {sorted({*epochs_set})}")'
        return source + "\n    " + report + "\n"

    out = tmp_path / "run"
    script = write_script(tmp_path, "lightning_ddp.py")  # as the page has it
    code, log = run([sys.executable, script, small_dataset, str(out), "1"], tmp_path)
    assert_identical(code, log, 1)
    first = torch.load(out / "last.ckpt", weights_only=False)
    assert first["epoch"] == 0
    script = write_script(tmp_path, "lightning_ddp.py", instrument)  # resumed for a second epoch
    code, log = run([sys.executable, script, small_dataset, str(out), "2"], tmp_path)
    assert_identical(code, log, 2)
    assert "Restoring states from the checkpoint" in log or "Restored all states" in log, log[-4000:]
    for rank in (0, 1):
        seen = re.search(f"rank {rank}: (\\d+) hook calls, epochs set \\[([\\d, ]*)\\]", log)
        assert seen and int(seen.group(1)) >= 2, log[-4000:]  # 2 steps, one bucket each at least
        # Lightning set the resumed epoch through loader.sampler (FastLoader's own starts at 0)
        assert "1" in seen.group(2).split(", "), log[-4000:]
    second = torch.load(out / "last.ckpt", weights_only=False)
    assert second["epoch"] == 1 and second["global_step"] == 2 * first["global_step"]


def test_lightning_ddp_miswired_stops_with_one_climseg_error(small_dataset, tmp_path):
    """init() at the top of the script (before Lightning starts its processes): the second
    process stops at once with climseg's line, and the run fails instead of diverging."""
    pytest.importorskip("pytorch_lightning")

    def early_init(source):
        return source.replace("\n\nclass Segmenter", "\n\nclimseg.distributed.init()\n\n\nclass Segmenter", 1)

    script = write_script(tmp_path, "lightning_ddp.py", early_init)
    code, log = run([sys.executable, script, small_dataset, str(tmp_path / "run"), "1"], tmp_path)
    assert code != 0
    assert "climseg.distributed.init(): WORLD_SIZE=2 says this process is one of 2" in log, log[-4000:]
    assert IDENTICAL not in log


def test_accelerate_ends_identical_and_resumes(small_dataset, tmp_path):
    pytest.importorskip("accelerate")
    script = write_script(tmp_path, "accelerate_ddp.py")
    out = tmp_path / "run"
    code, log = run(torchrun(script, small_dataset, str(out), "1"), tmp_path)
    assert_identical(code, log, 1)
    code, log = run(torchrun(script, small_dataset, str(out), "2"), tmp_path)
    assert_identical(code, log, 2)
    assert "resumed after epoch 1" in log


# ---------------------------------------------------------------------------------------------
# a converted model's Lightning checkpoint: resumed by the converted and by the plain model
# ---------------------------------------------------------------------------------------------
def test_lightning_checkpoint_of_a_converted_model_moves_both_ways(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from test_convert import TVASPP, _randomise

    from climseg.nn import convert_model

    torch.manual_seed(0)
    x, y = torch.randn(8, 6, 9, 11), torch.randn(8, 4, 9, 11)

    class Module(pl.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def training_step(self, batch, index):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)

    def plain(seed):
        torch.manual_seed(seed)  # the convolutions' initial weights
        return _randomise(TVASPP(6, [2, 3], cout=4, dropout=0.0), seed).train()

    def fit(module, epochs, ckpt_path=None, save=None):
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
        )
        trainer.fit(module, ckpt_path=ckpt_path)
        if save:
            trainer.save_checkpoint(save)
        return module

    ckpt = str(tmp_path / "converted.ckpt")
    fit(Module(convert_model(plain(1), fuse_aspp=True)), 1, save=ckpt)
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert list(state) == ["net." + k for k in plain(2).state_dict()]  # the plain model's keys
    uninterrupted = fit(Module(plain(1)), 2).net
    resumed_converted = fit(Module(convert_model(plain(3), fuse_aspp=True)), 2, ckpt_path=ckpt).net
    resumed_plain = fit(Module(plain(4)), 2, ckpt_path=ckpt).net
    for other in (resumed_converted, resumed_plain):
        got = other.state_dict()
        for key, value in uninterrupted.state_dict().items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # and the plain model's checkpoint resumes the converted one
    plain_ckpt = str(tmp_path / "plain.ckpt")
    fit(Module(plain(1)), 1, save=plain_ckpt)
    again = fit(Module(convert_model(plain(5), fuse_aspp=True)), 2, ckpt_path=plain_ckpt).net
    for key, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
