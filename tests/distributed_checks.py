"""Checks that run inside a multi-process job (started by tests/test_distributed.py
under mpiexec or torchrun): ``python tests/distributed_checks.py CHECK``.
Every rank asserts; a failing assertion makes the launcher exit non-zero."""

import os
import sys

import torch
import torch.distributed as dist

import climseg.distributed as cd


def exact_sum(make, world):
    return sum(make(k).double() for k in range(world))


def check_allreduce(topo):
    transports = ["torch", "mpi"] if topo.mpi_cross is not None else ["torch"]
    r, n = topo.rank, topo.world_size
    for size in (1, 7, 1_000_003):

        def make(k, size=size):
            return (torch.arange(size) % 5 + k).float()

        expected = exact_sum(make, n)
        for dtype in (torch.float32, torch.bfloat16):
            for compression in (None, "bf16", "fp16"):
                for transport in transports:
                    x = make(r).to(dtype)
                    cd.hierarchical_all_reduce(x, "sum", compression, transport=transport)
                    assert x.dtype == dtype
                    assert torch.equal(x.double(), expected), (size, dtype, compression, transport)
        y = make(r)
        cd.hierarchical_all_reduce(y, "avg", prescale=True)
        torch.testing.assert_close(y.double(), expected / n, rtol=1e-6, atol=1e-6)
        z = make(r)
        cd.flat_all_reduce(z, "sum")
        assert torch.equal(z.double(), expected)
    # float64 and integers: summed exactly in their own type, also through shared memory (issue 15, item 7)
    for size in (5, 7, 100_003):
        g = torch.Generator().manual_seed(1234 + size)
        parts = [
            torch.rand(size, generator=g, dtype=torch.float64) * 10 ** torch.randint(-3, 4, (size,), generator=g)
            for _ in range(n)
        ]
        exact = sum(p.double() for p in parts)  # the same order of additions is not promised; the precision is
        for transport in transports:
            x = parts[r].clone()
            cd.hierarchical_all_reduce(x, "sum", transport=transport)
            assert x.dtype == torch.float64
            err = (x - exact).abs().max().item()
            assert err <= 1e-12 * exact.abs().max().item(), (size, transport, err)
        for dtype in (torch.int64, torch.int32, torch.int16):
            big = 1 << (40 if dtype == torch.int64 else 20 if dtype == torch.int32 else 8)
            ints = [(torch.arange(size, dtype=torch.int64) * (k + 3) + big).to(dtype) for k in range(n)]
            for transport in transports:
                y = ints[r].clone()
                cd.hierarchical_all_reduce(y, "sum", transport=transport)
                assert y.dtype == dtype and torch.equal(y.long(), sum(t.long() for t in ints).to(dtype).long()), (
                    size,
                    dtype,
                    transport,
                )
    for bad, op, compression in (
        (torch.ones(3, dtype=torch.int64), "avg", None),
        (torch.ones(3, dtype=torch.int32), "sum", "bf16"),
        (torch.ones(3, dtype=torch.bool), "sum", None),
    ):
        try:
            cd.hierarchical_all_reduce(bad, op, compression)
        except ValueError as exc:  # ConfigError
            assert "allreduce:" in str(exc), str(exc)
        else:
            raise AssertionError(f"{bad.dtype} {op} {compression} was not refused")
    # bucketed lists of mixed shapes (tensor fusion), fp32 and bf16, non-contiguous included
    shapes = [(3, 5), (1,), (17, 2, 3), (4000,), (2, 2)]
    for dtype in (torch.float32, torch.bfloat16):

        def make_list(k, dtype=dtype):
            return [(torch.arange(torch.Size(s).numel()).reshape(s) % 7 + k).to(dtype) for s in shapes]

        tensors = make_list(r)
        tensors.append(make_list(r)[2].transpose(0, 2))  # non-contiguous
        cd.all_reduce_tensors(tensors, "sum", bucket_bytes=200)
        reference = [sum(make_list(k)[i].double() for k in range(n)) for i in range(len(shapes))]
        reference.append(reference[2].transpose(0, 2))
        for got, want in zip(tensors, reference):
            assert torch.equal(got.double(), want)


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))


def _batch(step, n_total):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(n_total, 3, 6, 5, generator=g), torch.randn(n_total, 2, 6, 5, generator=g)


def _reference_grads(model, step, n_total):
    x, y = _batch(step, n_total)
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def check_ddp(topo):
    from torch.nn.parallel import DistributedDataParallel

    r, n = topo.rank, topo.world_size
    per_rank, steps, lr = 2, 3, 0.1
    model = _tiny_model()
    ddp = DistributedDataParallel(model, process_group=topo.world)
    ddp.register_comm_hook(None, cd.hierarchical_allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    reference = _tiny_model()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=lr)
    for step in range(steps):
        x, y = _batch(step, n * per_rank)
        opt.zero_grad()
        torch.nn.functional.mse_loss(
            ddp(x[r * per_rank : (r + 1) * per_rank]), y[r * per_rank : (r + 1) * per_rank]
        ).backward()
        opt.step()
        _reference_grads(reference, step, n * per_rank)
        ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def check_optimizer(topo):
    r, n = topo.rank, topo.world_size
    per_rank, steps, lr = 2, 4, 0.05
    for lag in (0, 1):
        model = _tiny_model(seed=1)
        if r == 0:  # broadcast at construction must give every rank rank 0's weights
            pass
        else:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        dopt = cd.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=lr), model.named_parameters(), gradient_lag=lag, bucket_bytes=64
        )
        for step in range(steps):
            x, y = _batch(step, n * per_rank)
            dopt.zero_grad()
            torch.nn.functional.mse_loss(
                model(x[r * per_rank : (r + 1) * per_rank]), y[r * per_rank : (r + 1) * per_rank]
            ).backward()
            stepped = dopt.step()
            assert stepped == (lag == 0 or step > 0)
        if lag:
            state = dopt.state_dict()
            assert state["pending"] is not None
            assert dopt.flush()
        # hand-written reference on the whole batch: w_{t+1} = w_t - lr * g_{t - lag}
        reference = _tiny_model(seed=1)
        grads = []
        for step in range(steps):
            grads.append(_reference_grads(reference, step, n * per_rank))
            if step - lag >= 0:
                with torch.no_grad():
                    for p, g in zip(reference.parameters(), grads[step - lag]):
                        p.sub_(lr * g)
        if lag:
            with torch.no_grad():
                for p, g in zip(reference.parameters(), grads[-1]):
                    p.sub_(lr * g)
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        dopt.remove_hooks()


def check_fail(topo):
    """Rank 1 meets a user error in the command line; every rank must end, non-zero."""
    from climseg.cli import main

    if topo.rank == 1:
        main(["train", "--data", "/nonexistent-climseg-data", "--no-progress"])
    dist.barrier(group=topo.world)  # the others wait for rank 1, which never comes
    dist.barrier(group=topo.world)


def check_optimizer_without_init():
    """torch.distributed started by the user, climseg.distributed.init() never called: the
    DistributedOptimizer must use that process group (broadcast, then averaging), not a world of one."""
    dist.init_process_group("gloo")
    r, n = dist.get_rank(), dist.get_world_size()
    model = _tiny_model(seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(r)  # every rank starts apart; the broadcast must join them
    dopt = cd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model.named_parameters())
    assert dopt.world_size == n, dopt.world_size
    for step in range(3):
        x, y = _batch(step, n * 2)
        dopt.zero_grad()
        torch.nn.functional.mse_loss(model(x[r * 2 : (r + 1) * 2]), y[r * 2 : (r + 1) * 2]).backward()
        dopt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(n)]
    dist.all_gather(gathered, flat)
    spread = max((g - gathered[0]).abs().max().item() for g in gathered)
    assert spread == 0.0, f"ranks drifted apart by {spread}"
    dopt.remove_hooks()
    # a script that started torch.distributed ends it (PyTorch warns otherwise): without this, gloo's
    # threads met interpreter shutdown in one of four ranks once in a loaded run ("terminate called
    # without an active exception", SIGABRT after the check had passed)
    dist.destroy_process_group()
    return f"{n} ranks"


def check_hook_without_init():
    """The DDP hook without climseg.distributed.init(): a clear error in the first backward."""
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    model = DistributedDataParallel(_tiny_model())
    model.register_comm_hook(None, cd.hierarchical_allreduce_hook)
    x, y = _batch(0, 2)
    try:
        torch.nn.functional.mse_loss(model(x), y).backward()
    except Exception as exc:  # DDP wraps what the hook raised; the message must come through whole
        message = str(exc)
        assert "call climseg.distributed.init()" in message and "Unable to cast" not in message, message
    else:
        raise AssertionError("the hook ran without a topology")
    dist.destroy_process_group()
    return f"{int(os.environ['WORLD_SIZE'])} ranks"


CHECKS = {"allreduce": check_allreduce, "ddp": check_ddp, "optimizer": check_optimizer, "fail": check_fail}
NO_INIT_CHECKS = {"optimizer-no-init": check_optimizer_without_init, "hook-no-init": check_hook_without_init}


def _group_sizes(topo):
    sizes = {1, 2, topo.local_size, topo.world_size}
    return sorted(g for g in sizes if 1 <= g <= topo.world_size)


def check_batchnorm(topo):
    """Group batch norm on each rank's slice == plain batch norm over the group's concatenated
    samples: outputs, input gradients, (group-summed) parameter gradients, running statistics;
    fp32 and bf16, NCHW and channels_last, the module and the fused ASPP's one-norm path."""
    from climseg.distributed.batchnorm import convert_batchnorm
    from climseg.distributed.launch import batchnorm_group_members
    from climseg.nn.aspp import ASPP

    r, n = topo.rank, topo.world_size
    per_rank, c, h, w = 2, 5, 7, 3
    seed = torch.randint(0, 2**30, (1,))
    dist.broadcast(seed, 0, group=topo.world)  # fresh inputs each run, the same on every rank
    for g in _group_sizes(topo):
        members = next(m for m in batchnorm_group_members(n, g) if r in m)
        gen = torch.Generator().manual_seed(int(seed) + g)
        for dtype in (torch.float32, torch.bfloat16):
            for memory_format in (torch.contiguous_format, torch.channels_last):
                full = (torch.randn(n * per_rank, c, h, w, generator=gen) * 3 + 1.5).to(dtype)
                upstream = torch.randn(n * per_rank, c, h, w, generator=gen)
                affine = torch.randn(2, c, generator=gen)
                mine = slice(r * per_rank, (r + 1) * per_rank)
                group_rows = slice(members[0] * per_rank, (members[-1] + 1) * per_rank)

                def make(affine=affine):
                    bn = torch.nn.BatchNorm2d(c, momentum=0.3)
                    with torch.no_grad():
                        bn.weight.copy_(affine[0])
                        bn.bias.copy_(affine[1])
                    return bn

                # ours: this rank's samples
                ours = convert_batchnorm(torch.nn.Sequential(make()), g, topo)[0]
                assert type(ours).__name__ == "GroupBatchNorm2d" and (ours.process_group is None) == (len(members) == 1)
                x = full[mine].contiguous(memory_format=memory_format).requires_grad_()
                for _ in range(2):  # twice: the running statistics move twice
                    y = ours(x)
                assert y.dtype == dtype and y.is_contiguous(memory_format=memory_format)
                (y.float() * upstream[mine]).sum().backward()
                pgrads = torch.stack([ours.weight.grad, ours.bias.grad])
                if len(members) > 1:
                    dist.all_reduce(pgrads, group=ours.process_group)
                # reference: one process, plain batch norm, in float32 over the group's samples
                ref = make()
                xr = full[group_rows].float().requires_grad_()
                for _ in range(2):
                    yr = ref(xr)
                (yr * upstream[group_rows]).sum().backward()
                local = slice((r - members[0]) * per_rank, (r - members[0] + 1) * per_rank)
                tol = dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=4e-2)
                where = (g, dtype, memory_format)
                torch.testing.assert_close(y.float(), yr[local].detach().to(dtype).float(), **tol, msg=str(where))
                torch.testing.assert_close(x.grad.float(), xr.grad[local].to(dtype).float(), **tol, msg=str(where))
                ptol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=0.5)
                torch.testing.assert_close(
                    pgrads, torch.stack([ref.weight.grad, ref.bias.grad]), **ptol, msg=str(where)
                )
                torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-4, atol=1e-4)
                assert int(ours.num_batches_tracked) == 2
        # the fused ASPP's single batch norm over the concatenated branch channels, under autocast
        aspp = convert_batchnorm(ASPP(3, 4, rates=(2,)), g, topo)
        norms = [b.norm for b in aspp.branches()]
        y = torch.randn(n * per_rank, 8, h, w, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = ASPP._batch_norm(y[mine].to(torch.bfloat16).contiguous(memory_format=torch.channels_last), norms)
        reference = torch.nn.functional.batch_norm(
            y[group_rows].to(torch.bfloat16).float(), torch.zeros(8), torch.ones(8), None, None, True, 0.1, norms[0].eps
        )
        local = slice((r - members[0]) * per_rank, (r - members[0] + 1) * per_rank)
        torch.testing.assert_close(out.float(), reference[local], rtol=2e-2, atol=4e-2)
        ref_mean = 0.1 * y[group_rows].to(torch.bfloat16).float().mean((0, 2, 3))
        torch.testing.assert_close(torch.cat([m.running_mean for m in norms]), ref_mean, rtol=1e-4, atol=1e-5)


def check_bn_stats(topo):
    """average_running_stats gives every rank the mean over ranks of the running statistics."""
    from climseg.distributed.batchnorm import average_running_stats

    n = topo.world_size
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3))
    values = [torch.arange(12, dtype=torch.float32).reshape(4, 3) * (k + 1) for k in range(n)]
    with torch.no_grad():
        for i, b in enumerate(
            (model[1].running_mean, model[1].running_var, model[2].running_mean, model[2].running_var)
        ):
            b.copy_(values[topo.rank][i])
    average_running_stats(model, topo.world, n)
    expected = sum(values) / n
    for i, b in enumerate((model[1].running_mean, model[1].running_var, model[2].running_mean, model[2].running_var)):
        torch.testing.assert_close(b, expected[i])


CHECKS = {
    "allreduce": check_allreduce,
    "ddp": check_ddp,
    "optimizer": check_optimizer,
    "fail": check_fail,
    "batchnorm": check_batchnorm,
    "bn_stats": check_bn_stats,
}


# ----------------------------------------------------------------------------- adopting a trainer's group
# Started by tests/test_distributed.py as separate processes, the way PyTorch Lightning's launcher
# starts them (LOCAL_RANK, NODE_RANK, WORLD_SIZE, MASTER_ADDR/PORT, no RANK: style "lightning") or
# with no launcher variables at all (the rank in CHECK_RANK: style "bare"); each process starts
# torch.distributed itself, as a trainer does, before or after climseg.distributed.init().


def _expect_config_error(fn, *needles):
    from climseg.errors import ConfigError

    try:
        fn()
    except ConfigError as exc:
        message = str(exc)
        assert all(n in message for n in needles), message
        assert "\n" not in message, message
        return message
    raise AssertionError(f"no ConfigError (expected one saying {needles})")


def _ddp_steps(model, topo, steps=3, lr=0.1, state=None):
    """A few DDP steps with the hierarchical hook, each rank on its own part of the batch; returns
    the largest difference between this rank's final weights and rank 0's."""
    from torch.nn.parallel import DistributedDataParallel

    r, n = dist.get_rank(), dist.get_world_size()
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(state if state is not None else topo, cd.hierarchical_allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    for step in range(steps):
        x, y = _batch(step, n * 2)
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x[r * 2 : (r + 1) * 2]), y[r * 2 : (r + 1) * 2]).backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    first = flat.clone()
    dist.broadcast(first, 0)
    return (flat - first).abs().max().item()


def check_adopt():
    """init() after a trainer started torch.distributed without RANK (issue 28, item 1): the
    topology is the running job's, nodes from LOCAL_RANK/NODE_RANK or host names, and the
    hook averages (weights equal on every rank, equal to one process on the whole batch)."""
    style = os.environ["CHECK_STYLE"]
    rank = int(os.environ["LOCAL_RANK"] if style == "lightning" else os.environ["CHECK_RANK"])
    world = int(os.environ["WORLD_SIZE"] if style == "lightning" else os.environ["CHECK_WORLD"])
    assert "RANK" not in os.environ
    early = None
    if style == "bare":  # init() at the top of a script, before the trainer starts its group
        early = cd.init()
        assert early.world_size == 1
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if early is not None:
        x = torch.ones(3)
        _expect_config_error(
            lambda: cd.hierarchical_all_reduce(x, "sum"), "has 1 rank(s) but torch.distributed runs 2", "Lightning"
        )
        _expect_config_error(
            lambda: cd.DistributedOptimizer(
                torch.optim.SGD(_tiny_model().parameters(), lr=0.1), _tiny_model().named_parameters(), topology=early
            ),
            "DistributedOptimizer",
            "has 1 rank(s)",
        )
        try:  # the hook with state None refuses the world of one in the first backward
            _ddp_steps(_tiny_model(), None, steps=1, state=cd.HierarchicalHookState())
        except Exception as exc:
            assert "not adopted its process group" in str(exc) and "Accelerate" in str(exc), str(exc)
        else:
            raise AssertionError("the hook averaged over a world of one")
        dist.barrier()
    topo = cd.init()  # adopts (and replaces the world of one made before)
    assert topo is not early and topo.world_size == world and topo.rank == rank
    assert topo.launcher == "torch.distributed" and topo.num_nodes == 1 and topo.local_size == world, topo
    assert topo.local_rank == rank and topo.world is dist.group.WORLD and topo.adopted
    assert cd.init() is topo
    for dtype in (torch.float32, torch.bfloat16, torch.int16):  # int16: gloo sums none, climseg widens it
        x = (torch.arange(1001) % 7 + rank).to(dtype)
        cd.hierarchical_all_reduce(x, "sum")
        assert x.dtype == dtype and torch.equal(x.double(), 2 * (torch.arange(1001) % 7).double() + 1), dtype
    spread = _ddp_steps(_tiny_model(), topo)
    assert spread == 0.0, f"ranks drifted apart by {spread}"
    check_ddp(topo)
    check_sync_batchnorm_stats()
    model = _tiny_model()
    assert cd.check_replicas(model) == 0.0
    if rank == 1:
        with torch.no_grad():
            model[2].bias.add_(0.25)
    message = None
    try:
        cd.check_replicas(model)
    except Exception as exc:  # TrainingError
        message = str(exc)
    assert message and "differ from rank 0's by up to 0.25" in message, message
    assert rank == 0 or "2.bias" in message, message
    cd.shutdown()  # forgets the adopted topology, leaves the trainer's group alone
    assert dist.is_initialized()
    dist.barrier()
    dist.destroy_process_group()
    return f"{world} ranks, style {style}"


def check_sync_batchnorm_stats():
    """sync_batchnorm_stats after DDP training: the running statistics differed (each rank's last
    forward moves them by its own batch) and are the mean over ranks afterwards, the same everywhere."""
    from torch.nn.parallel import DistributedDataParallel

    from climseg.distributed import sync_batchnorm_stats
    from climseg.distributed.batchnorm import flatten_running_stats

    r, n = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))
    ddp = DistributedDataParallel(model)  # broadcast_buffers: rank 0's statistics before each forward
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for step in range(3):
        x, y = _batch(step, n * 2)
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x[r * 2 : (r + 1) * 2] * (r + 1)), y[r * 2 : (r + 1) * 2]).backward()
        opt.step()
    before = flatten_running_stats(model)
    gathered = [torch.empty_like(before) for _ in range(n)]
    dist.all_gather(gathered, before)
    mean = sum(gathered) / n
    expected_spread = max((g - mean).abs().max().item() for g in gathered)
    assert expected_spread > 1e-4, expected_spread  # they did differ
    spread = sync_batchnorm_stats(ddp)
    assert abs(spread - expected_spread) <= 1e-6 * max(1.0, expected_spread), (spread, expected_spread)
    after = flatten_running_stats(model)
    torch.testing.assert_close(after, mean, rtol=0, atol=1e-6)
    dist.all_gather(gathered, after)
    assert all(torch.equal(g, gathered[0]) for g in gathered)
    assert sync_batchnorm_stats(model) <= 1e-6


def check_fastloader_ranks():
    """FastLoader inside a job: sharded from torch.distributed by default, a sampler whose
    set_epoch trainers find, the same permutation on every rank, len() per rank right (item 3)."""
    from climseg.data import FastLoader

    dist.init_process_group("gloo", rank=int(os.environ["CHECK_RANK"]), world_size=int(os.environ["CHECK_WORLD"]))
    r, n = dist.get_rank(), dist.get_world_size()
    source = os.path.join(sys.argv[2], "train")
    for drop_last in (True, False):
        loader = FastLoader(source, 2, threads=1, drop_last=drop_last, shuffle=True, seed=3)
        assert (loader.rank, loader.world_size) == (r, n)
        epochs = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch's start
            names = [loader.files[i] for i in loader.sampler]
            batches = list(loader)
            assert len(batches) == len(loader), (len(batches), len(loader), drop_last)
            assert sum(b[0].shape[0] for b in batches) == (len(names) if not drop_last else len(loader) * 2)
            assert batches[0][0].shape[1] == 16 and batches[0][0].is_contiguous(memory_format=torch.channels_last)
            every = [None] * n
            dist.all_gather_object(every, names)
            seen = [p for names_r in every for p in names_r]
            assert len(seen) == len(set(seen)), "two ranks read the same sample"
            if not drop_last:
                assert sorted(seen) == sorted(loader.files), "a sample was left out"
            epochs.append(every)
        assert epochs[0] != epochs[1], "the epoch did not change the order"
        explicit = FastLoader(source, 2, threads=1, rank=0, world_size=1, drop_last=drop_last)
        assert explicit.world_size == 1 and len(explicit.epoch_indices()) == len(explicit.files)  # given values win
    dist.destroy_process_group()
    return f"{n} ranks"


ADOPT_CHECKS = {"adopt": check_adopt, "fastloader-ranks": check_fastloader_ranks}

if __name__ == "__main__":
    if sys.argv[1] in ADOPT_CHECKS:
        what = ADOPT_CHECKS[sys.argv[1]]()
        print(f"{sys.argv[1]} ok: {what}", flush=True)
        sys.exit(0)
    if sys.argv[1] in NO_INIT_CHECKS:
        what = NO_INIT_CHECKS[sys.argv[1]]()
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"{sys.argv[1]} ok: {what}", flush=True)
        sys.exit(0)
    topo = cd.init()
    assert topo.world_size > 1
    CHECKS[sys.argv[1]](topo)
    if topo.rank == 0:
        print(
            f"{sys.argv[1]} ok: {topo.world_size} ranks, {topo.num_nodes} nodes x {topo.local_size}, "
            f"launcher {topo.launcher}",
            flush=True,
        )
    cd.shutdown()
