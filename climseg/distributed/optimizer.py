"""``DistributedOptimizer``: Horovod's interface for trainers without DDP.

Gradients are fused into buckets (in reverse parameter order, as they become
ready). A hook on each parameter notices when its gradient is accumulated;
as soon as every gradient of a bucket is there — and every earlier bucket has
been started, so all ranks issue the same collectives in the same order — the
bucket is copied into a flat buffer and averaged over all ranks on a
background thread while backward goes on. ``step()`` then waits for the
averages, writes them into ``.grad`` and steps the wrapped optimizer.

Gradient lag (``gradient_lag=1``, Kurth et al. 2018): the update at step t
applies the averaged gradient of step t-1, so that its allreduce overlaps all
of step t's forward and backward pass.

* First step: its gradients start their allreduce; no update is applied.
* Every later step t: waits for step t-1's averages, applies them, and leaves
  step t's allreduce running.
* Last step: its averaged gradient is still pending. ``flush()`` applies it
  (the trainer calls it when training ends), so N steps make N updates.
* Checkpoint/resume: ``state_dict()`` waits for the pending averages and
  stores them with the wrapped optimizer's state; ``load_state_dict()`` puts
  them back as pending, so a resumed run applies exactly what the
  uninterrupted run would have applied.
"""

import torch
import torch.distributed as dist

from climseg.distributed.collectives import bucket_tensors, flat_all_reduce, hierarchical_all_reduce
from climseg.distributed.hooks import comm_executor, resolve_topology
from climseg.errors import ConfigError
from climseg.ops.buckets import flatten_gradients, unflatten_gradients
from climseg.ops.multi_tensor import in_layout_of, memory_view, same_layout


class _Done:
    """A finished result with the interface of a future."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class DistributedOptimizer:
    """Average gradients across ranks in buckets during backward, then step ``optimizer``.

    Args:
        optimizer: any ``torch.optim.Optimizer`` (or ``climseg.optim.LARC``).
        named_parameters: ``model.named_parameters()``.
        hierarchical: hierarchical allreduce (else flat over the world).
        compression: ``None``, ``"bf16"`` or ``"fp16"`` on the wire.
        gradient_lag: 0, or 1 to apply each step's averaged gradient one step later.
        bucket_bytes: size of the fused buffers (default 25 MiB).
        topology: from ``climseg.distributed.init()`` (default: the current one; when
            ``init()`` was not called, or made a world of one before a trainer started its
            process group, but ``torch.distributed`` runs several processes, ``init()`` is called
            here and adopts that group; a topology whose size differs from the running job's,
            or a job of several processes without any process group, is refused with a
            ``ConfigError``; a lone process is a world of one).
        transport: cross-node step over ``"torch"`` or ``"mpi"``.
        max_grad_norm: clip the averaged gradient's total norm before the step (0: off).
        broadcast: copy rank 0's parameters to every rank at construction.
    """

    def __init__(
        self,
        optimizer,
        named_parameters,
        hierarchical=True,
        compression=None,
        gradient_lag=0,
        bucket_bytes=25 << 20,
        topology=None,
        transport=None,
        max_grad_norm=0.0,
        broadcast=True,
    ):
        if gradient_lag not in (0, 1):
            raise ConfigError(f"gradient_lag must be 0 or 1, not {gradient_lag}")
        self.optimizer = optimizer
        self.hierarchical, self.compression, self.transport = hierarchical, compression, transport
        self.gradient_lag, self.max_grad_norm = gradient_lag, max_grad_norm
        self.topology = resolve_topology(topology, "DistributedOptimizer")
        self.world_size = self.topology.world_size if self.topology else 1
        named = [(n, p) for n, p in named_parameters if p.requires_grad]
        names = [n for n, _ in named]
        if len(set(names)) != len(names):
            raise ConfigError("DistributedOptimizer: parameter names must be unique")
        self._params = [p for _, p in named]
        self._buckets = bucket_tensors(list(reversed(self._params)), bucket_bytes)
        self._bucket_of = {id(p): b for b, bucket in enumerate(self._buckets) for p in bucket}
        self._reset_launch_state()
        self._pending = None
        self.nonfinite = None  # after a step: did any averaged gradient hold Inf or NaN (0-d bool tensor)
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self._params]
        if broadcast and self.world_size > 1:
            with torch.no_grad():
                for p in self._params:
                    dist.broadcast(p.data, src=0, group=self.topology.world)

    # the wrapped optimizer's view, for schedulers and checkpoints
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    # ------------------------------------------------------------------ launching
    def _reset_launch_state(self):
        self._ready = [0] * len(self._buckets)
        self._launched = 0
        self._futures = [None] * len(self._buckets)

    def _on_grad(self, param):
        b = self._bucket_of[id(param)]
        self._ready[b] += 1
        while self._launched < len(self._buckets) and self._ready[self._launched] == len(self._buckets[self._launched]):
            self._launch(self._launched)
            self._launched += 1

    def _launch(self, b):
        bucket = self._buckets[b]
        # buckets hold each gradient in its parameter's memory order (channels-last stays as it is)
        flat = flatten_gradients([memory_view(in_layout_of(p.grad, p)) for p in bucket], dtype=bucket[0].dtype)
        if self.world_size == 1:
            self._futures[b] = _Done(flat)
            return
        ready = None
        if flat.is_cuda:
            ready = torch.cuda.Event()
            ready.record()

        def reduce():
            if ready is not None:
                stream = torch.cuda.Stream(device=flat.device)
                stream.wait_event(ready)
                with torch.cuda.stream(stream):
                    self._reduce(flat)
                stream.synchronize()
            else:
                self._reduce(flat)
            return flat

        self._futures[b] = comm_executor("optimizer").submit(reduce)

    def _reduce(self, flat):
        if self.hierarchical:
            hierarchical_all_reduce(flat, "avg", self.compression, self.topology, self.transport)
        else:
            flat_all_reduce(flat, "avg", self.compression, self.topology.comm_world)

    def _launch_remaining(self):
        """Start the buckets not started yet (parameters without a gradient count as zeros)."""
        while self._launched < len(self._buckets):
            self._launch(self._launched)
            self._launched += 1
        futures = self._futures
        self._reset_launch_state()
        return futures

    def _apply(self, futures):
        """Write the averages into ``.grad``, one pass per bucket; ``self.nonfinite`` (a 0-d bool
        tensor, no device sync) says whether any averaged gradient was Inf or NaN."""
        nonfinite = None
        for bucket, future in zip(self._buckets, futures):
            flat = future.result()
            for p in bucket:
                if p.grad is None or p.grad.dtype != flat.dtype or not same_layout([p.grad], p):
                    p.grad = torch.empty_like(p, dtype=flat.dtype)
            found = unflatten_gradients(flat, [memory_view(p.grad) for p in bucket])
            nonfinite = found if nonfinite is None else nonfinite | found
        self.nonfinite = nonfinite
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self._params, self.max_grad_norm)

    # ------------------------------------------------------------------ stepping
    def synchronize(self):
        """Finish this step's allreduces and write the averages into ``.grad`` (no lag only)."""
        if self.gradient_lag:
            raise ConfigError("synchronize() has no meaning with gradient lag; use step() and flush()")
        self._apply(self._launch_remaining())

    def step(self, closure=None):
        """Apply averaged gradients: this step's (no lag) or the previous step's (lag 1).
        Returns True if the wrapped optimizer stepped."""
        if closure is not None:
            raise ConfigError("DistributedOptimizer.step() takes no closure")
        current = self._launch_remaining()
        if not self.gradient_lag:
            self._apply(current)
            self.optimizer.step()
            return True
        previous, self._pending = self._pending, current
        if previous is None:
            return False
        self._apply(previous)
        self.optimizer.step()
        return True

    def flush(self):
        """Gradient lag: apply the last step's pending average now. Returns True if it stepped."""
        if self._pending is None:
            return False
        pending, self._pending = self._pending, None
        self._apply(pending)
        self.optimizer.step()
        return True

    def state_dict(self):
        pending = None if self._pending is None else [f.result().detach().cpu() for f in self._pending]
        return dict(optimizer=self.optimizer.state_dict(), gradient_lag=self.gradient_lag, pending=pending)

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        pending = state.get("pending")
        if pending is not None:
            if len(pending) != len(self._buckets):
                raise ConfigError("DistributedOptimizer: the saved pending gradients do not match these buckets")
            device = self._params[0].device
            self._pending = [_Done(t.to(device)) for t in pending]
        else:
            self._pending = None

    def remove_hooks(self):
        for h in self._handles:
            h.remove()
        self._handles = []
