"""PyTorch Lightning callbacks: climseg's hierarchical allreduce and batch-norm statistics in a
Lightning ``Trainer``.

* :class:`HierarchicalAllreduce`: in ``setup`` (every rank, after Lightning has started the
  process group) :func:`climseg.distributed.init` adopts Lightning's group; in ``on_fit_start``
  (after the strategy has wrapped the model in ``DistributedDataParallel``, before the first
  step) the hook is registered on that DDP model. This works on CPUs and GPUs alike, where
  ``DDPStrategy(ddp_comm_hook=...)`` registers a hook only on CUDA devices and ignores it
  elsewhere without a word. Do not pass the hook to ``DDPStrategy`` as well: DDP takes one hook.
* :class:`SyncBatchNormStats`: :func:`climseg.distributed.sync_batchnorm_stats` on every rank
  before each validation, at every checkpoint (the checkpoint's ``state_dict`` holds the averaged
  statistics) and at the end of training, so that all ranks evaluate and save the same model.

Lightning is not a dependency of climseg (``pip install "climseg[trainers]"`` brings it): this
module imports it, the ``lightning.pytorch`` namespace or the older ``pytorch_lightning`` one,
whichever the program has imported already (else ``lightning.pytorch`` where installed), and
derives its callbacks from that namespace's ``Callback``.
"""

import importlib
import sys

from climseg.distributed.batchnorm import sync_batchnorm_stats
from climseg.distributed.hooks import HierarchicalHookState, hierarchical_allreduce_hook
from climseg.distributed.launch import init, running_world_size
from climseg.errors import ConfigError


def lightning_namespace():
    """The Lightning package in use: ``lightning.pytorch`` or ``pytorch_lightning``."""
    names = ["lightning.pytorch", "pytorch_lightning"]
    names.sort(key=lambda n: n not in sys.modules)  # one already imported comes first
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(
        "climseg.distributed.lightning needs PyTorch Lightning: pip install pytorch-lightning "
        '(or pip install "climseg[trainers]")'
    )


Callback = lightning_namespace().Callback


class HierarchicalAllreduce(Callback):
    """Average gradients with climseg's hierarchical allreduce in a Lightning DDP run.

    Args:
        compression: ``None``, ``"bf16"`` or ``"fp16"`` on the wire (sums in float32).
        hierarchical: False for a flat allreduce over the world (with the same compression).
        transport: cross-node step over ``"torch"`` or ``"mpi"`` (default: ``CLIMSEG_CROSS_TRANSPORT``).
        prescale: divide by the world size before sending (fp16 safety).

    After ``setup``, :attr:`topology` is the adopted :class:`~climseg.distributed.launch.Topology`.
    """

    def __init__(self, compression=None, hierarchical=True, transport=None, prescale=False):
        super().__init__()
        self.compression, self.hierarchical = compression, hierarchical
        self.transport, self.prescale = transport, prescale
        self.topology = None

    def setup(self, trainer, pl_module, stage):
        self.topology = init()  # collective: Lightning runs setup on every rank

    def on_fit_start(self, trainer, pl_module):
        from torch.nn.parallel import DistributedDataParallel

        model = trainer.strategy.model
        if not isinstance(model, DistributedDataParallel):
            if running_world_size() > 1:
                raise ConfigError(
                    f"HierarchicalAllreduce: the strategy {type(trainer.strategy).__name__} gives a "
                    f"{type(model).__name__}, not a DistributedDataParallel model; use strategy='ddp'"
                )
            return  # one process: nothing to average
        if getattr(trainer.strategy, "_ddp_comm_hook", None) is not None:
            raise ConfigError(
                "HierarchicalAllreduce: DDPStrategy(ddp_comm_hook=...) was given too; DDP takes one hook, "
                "so pass it to only one of them (this callback registers it on CPUs and GPUs)"
            )
        state = HierarchicalHookState(
            self.topology or init(), self.compression, self.transport, self.prescale, self.hierarchical
        )
        model.register_comm_hook(state, hierarchical_allreduce_hook)


class SyncBatchNormStats(Callback):
    """Average the batch norms' running statistics over the ranks (:func:`sync_batchnorm_stats`)
    before every validation, at every checkpoint and at the end of training. :attr:`last_spread`
    is the largest difference between a rank and the mean that the last sync removed."""

    def __init__(self):
        super().__init__()
        self.last_spread = 0.0

    def _sync(self, pl_module):
        self.last_spread = sync_batchnorm_stats(pl_module)

    def on_validation_start(self, trainer, pl_module):
        self._sync(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # the checkpoint's state_dict holds the buffers themselves (detached, same storage):
        # averaging them in place here is what the checkpoint saves
        self._sync(pl_module)

    def on_train_end(self, trainer, pl_module):
        self._sync(pl_module)
