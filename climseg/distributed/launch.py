"""Process groups: the world, the nodes, the ranks across nodes.

``init()`` works under ``mpirun``/``mpiexec`` (Open MPI, MPICH), ``srun``
(Slurm), ``jsrun`` (LSF) and ``torchrun``. It reads the launcher's rank and
size (:mod:`.environment`), finds which ranks share a node, picks the device, starts
``torch.distributed`` (NCCL on GPUs, gloo on CPUs) and creates three kinds of
groups: the world, one intra-node group per node, and one cross-node group per
local rank (the ranks with the same local rank on every node). Where a trainer
(PyTorch Lightning, Accelerate, your own ``init_process_group``) has started
``torch.distributed`` already, ``init()`` adopts its default group instead: rank and
size from ``torch.distributed``, nodes from the launcher's variables or the host names.
:func:`check_world` is what every collective, hook and optimizer wrapper asks before
it uses a topology: it refuses one whose size differs from the running job.

Node membership: ``CLIMSEG_LOCAL_SIZE=k`` makes each run of k consecutive
ranks one node (to test multi-node topologies on one machine); otherwise MPI's
shared-memory split, else the launcher's local rank and host name.

Environment variables (documented in the README):
``CLIMSEG_LOCAL_SIZE`` (ranks per simulated node), ``CLIMSEG_INTRA_TRANSPORT``
(``auto``/``shm``/``torch``: CPU tensors of a node meet in shared memory when its
ranks share a host), ``CLIMSEG_DIST_BACKEND``
(``nccl``/``gloo``, default by device), ``CLIMSEG_DIST_TIMEOUT`` (seconds a
collective may wait before every rank fails, default 600),
``MASTER_ADDR``/``MASTER_PORT`` (rendezvous override).
"""

import dataclasses
import datetime
import os
import socket

import torch
import torch.distributed as dist

from climseg.distributed.environment import (
    LaunchInfo,
    detect_launcher,
    env_int,
    expand_counts,
    expand_hostlist,
    is_launched,
    mpi_world,
    rendezvous,
)
from climseg.errors import ConfigError

__all__ = [
    "HOW_TO_INIT",
    "LaunchInfo",
    "Topology",
    "abort",
    "batchnorm_group",
    "batchnorm_group_members",
    "check_world",
    "detect_launcher",
    "expand_counts",
    "expand_hostlist",
    "init",
    "is_launched",
    "node_table",
    "running_world_size",
    "shutdown",
    "topology",
]

LOCAL_SIZE_ENV = "CLIMSEG_LOCAL_SIZE"
BACKEND_ENV = "CLIMSEG_DIST_BACKEND"
TIMEOUT_ENV = "CLIMSEG_DIST_TIMEOUT"
INTRA_ENV = "CLIMSEG_INTRA_TRANSPORT"
DEFAULT_TIMEOUT_S = 600


@dataclasses.dataclass
class Topology:
    """A process's place in the job and the process groups made for it."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    local_size: int
    node: int
    num_nodes: int
    device: torch.device
    backend: str
    uniform: bool  # every node has local_size ranks (cross groups exist)
    intra_shm: bool = False  # a node's ranks share a host: CPU tensors meet in shared memory
    world: object = None  # torch.distributed ProcessGroup (the default group)
    intra: object = None  # this node's ranks
    cross: object = None  # the ranks with this local rank, one per node
    mpi_cross: object = None  # mpi4py communicator of the same ranks as `cross`, when MPI is there
    node_ranks: list = dataclasses.field(default_factory=list)  # global ranks of this node, by local rank
    cross_ranks: list = dataclasses.field(default_factory=list)  # global ranks of this cross group, by node
    comm_world: object = None  # all ranks again, for flat gradient allreduces on the background thread, so
    # they never interleave with the main thread's collectives on `world`
    batchnorm_groups: dict = dataclasses.field(default_factory=dict)  # group size -> this rank's group (or None)
    adopted: bool = False  # the default process group was started by someone else (a trainer): never destroyed here

    @property
    def hierarchical(self):
        """True when the hierarchical algorithm differs from a flat one (several nodes, several ranks each)."""
        return self.uniform and self.num_nodes > 1 and self.local_size > 1


_TOPOLOGY = None


def _timeout():
    try:
        return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r} is not a number of seconds") from None


def node_table(info, comm):
    """``(node of every rank, local rank of every rank)`` by global rank."""
    k = os.environ.get(LOCAL_SIZE_ENV, "").strip()
    if k:
        try:
            k = int(k)
        except ValueError:
            raise ConfigError(f"{LOCAL_SIZE_ENV}={k!r} is not a whole number") from None
        if k < 1 or info.world_size % k:
            raise ConfigError(f"{LOCAL_SIZE_ENV}={k} does not divide the {info.world_size} ranks into nodes")
        return [r // k for r in range(info.world_size)], [r % k for r in range(info.world_size)]
    if comm is not None:
        from mpi4py import MPI

        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
        keys = comm.allgather((local.allgather(comm.Get_rank())[0], local.Get_rank()))
        local.Free()
    else:
        keys = [None] * info.world_size
        dist.all_gather_object(keys, (f"{info.node_key}@{socket.gethostname()}", info.local_rank))
    first_seen = {}
    for key, _ in keys:
        first_seen.setdefault(key, len(first_seen))
    return [first_seen[key] for key, _ in keys], [lr for _, lr in keys]


def running_world_size():
    """How many processes ``torch.distributed``'s default group holds (1 when none is initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


HOW_TO_INIT = (
    "call climseg.distributed.init() once torch.distributed runs, on every rank (torchrun, mpirun, srun: "
    "anywhere; PyTorch Lightning: in LightningModule.setup(), or add the callback "
    "climseg.distributed.lightning.HierarchicalAllreduce(); Hugging Face Accelerate: after Accelerator()), "
    "and pass its Topology or None as the hook's state"
)


def check_world(topo, who):
    """Refuse ``topo`` when ``torch.distributed`` runs a different number of processes (a topology
    made before the trainer started its process group, or for another job): a ``ConfigError``
    naming both sizes. Returns ``topo``."""
    running = running_world_size()
    if topo is not None and topo.world_size != running:
        raise ConfigError(
            f"{who}: its climseg topology has {topo.world_size} rank(s) but torch.distributed runs "
            f"{running} process(es); {HOW_TO_INIT}"
        )
    return topo


def _stale(topo):
    """True when ``topo`` no longer describes the running job: made as a world of one before a
    trainer started its process group, or on a default group that has since been destroyed or
    replaced."""
    current = dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
    return topo.world is not current or topo.world_size != running_world_size()


def init(backend=None, device=None):
    """Start ``torch.distributed`` for this process, or adopt the default process group a trainer
    already started, and make the world, intra-node and cross-node groups. Idempotent; returns
    the :class:`Topology`.

    Adopting (``torch.distributed`` already initialised: PyTorch Lightning, Accelerate, your own
    ``init_process_group``): rank and world size come from ``torch.distributed``; local ranks and
    nodes from the launcher's variables (``LOCAL_RANK``, ``NODE_RANK``/``GROUP_RANK``, MPI's split)
    or, where they are absent, from an exchange of host names; ``backend`` and the device are the
    trainer's. The trainer's process group is never destroyed by :func:`shutdown`.

    A single process without a launcher gets a one-rank topology (no process group); a topology
    made so before a trainer started its process group is replaced by the adopted one at the next
    call. A process whose environment says it is one of several (``WORLD_SIZE`` > 1) but which
    has neither a rank nor a process group is refused (``ConfigError``), never run as a world of one.
    """
    global _TOPOLOGY
    if _TOPOLOGY is not None and not _stale(_TOPOLOGY):
        return _TOPOLOGY
    _TOPOLOGY = None
    info = detect_launcher()
    if dist.is_available() and dist.is_initialized():
        return _adopt(info, device)
    comm = mpi_world() if info.launcher in ("mpi", "jsrun") else None
    if comm is not None:
        info.rank, info.world_size = comm.Get_rank(), comm.Get_size()
    cuda = torch.cuda.is_available()
    backend = (backend or os.environ.get(BACKEND_ENV) or ("nccl" if cuda else "gloo")).lower()
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"{BACKEND_ENV}={backend!r}: choose nccl or gloo")
    if info.world_size == 1:
        claimed = env_int("WORLD_SIZE", default=1)
        if claimed > 1:
            raise ConfigError(
                f"climseg.distributed.init(): WORLD_SIZE={claimed} says this process is one of {claimed}, "
                f"but it has no RANK and torch.distributed is not initialised yet (PyTorch Lightning's "
                f"launcher sets only LOCAL_RANK and WORLD_SIZE); {HOW_TO_INIT}"
            )
        dev = torch.device(device) if device else torch.device("cuda" if cuda else "cpu")
        _TOPOLOGY = _one_rank("none", dev, backend)
        return _TOPOLOGY
    addr, port = rendezvous(info, comm)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = str(addr), str(port)
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(info.rank), str(info.world_size)
    dist.init_process_group(
        backend, init_method="env://", rank=info.rank, world_size=info.world_size, timeout=_timeout()
    )
    _TOPOLOGY = _build(info, comm, backend, device, adopted=False)
    import atexit

    atexit.register(shutdown)
    return _TOPOLOGY


def _one_rank(launcher, device, backend, world=None, adopted=False):
    return Topology(
        launcher,
        0,
        1,
        0,
        1,
        0,
        1,
        device,
        backend,
        True,
        False,
        world,
        adopted=adopted,
        node_ranks=[0],
        cross_ranks=[0],
    )


def _adopt(info, device):
    """The topology over the default process group someone else started (see :func:`init`)."""
    global _TOPOLOGY
    rank, world = dist.get_rank(), dist.get_world_size()
    comm = None
    if info.launcher in ("mpi", "jsrun"):
        comm = mpi_world()
        if comm is not None and (comm.Get_rank(), comm.Get_size()) != (rank, world):
            comm = None  # MPI numbers the ranks otherwise: no MPI transport, nodes from host names
    if (info.rank, info.world_size) != (rank, world):
        env = os.environ
        node_key = env.get("NODE_RANK") or env.get("GROUP_RANK") or ""
        info = LaunchInfo("torch.distributed", rank, world, env_int("LOCAL_RANK", default=-1), 1, node_key)
    backend = str(dist.get_backend()).lower()
    if device is None:
        nccl = "nccl" in backend and torch.cuda.is_available()
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    if world == 1:
        _TOPOLOGY = _one_rank(info.launcher, torch.device(device), backend, dist.group.WORLD, adopted=True)
        return _TOPOLOGY
    _TOPOLOGY = _build(info, comm, backend, device, adopted=True)
    return _TOPOLOGY


def _build(info, comm, backend, device, adopted):
    """Nodes, local ranks, the device and the groups of a job whose default process group runs."""
    nodes, local_ranks = node_table(info, comm)
    node = nodes[info.rank]
    num_nodes = max(nodes) + 1
    members = [[r for r in range(info.world_size) if nodes[r] == n] for n in range(num_nodes)]
    members = [sorted(m, key=lambda r: local_ranks[r]) for m in members]
    sizes = {len(m) for m in members}
    uniform = len(sizes) == 1
    local_size = len(members[node])
    local_rank = members[node].index(info.rank)
    cuda = torch.cuda.is_available()
    if device is None:
        device = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}") if cuda else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not adopted:
        torch.cuda.set_device(device)
    intra, _ = dist.new_subgroups_by_enumeration(members, timeout=_timeout())
    hosts = [None] * local_size
    dist.all_gather_object(hosts, socket.gethostname(), group=intra)
    mode = os.environ.get(INTRA_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "shm", "torch"):
        raise ConfigError(f"{INTRA_ENV}={mode!r}: choose auto, shm or torch")
    if mode == "shm" and len(set(hosts)) > 1:
        raise ConfigError(f"{INTRA_ENV}=shm but the ranks of node {node} run on several hosts: {sorted(set(hosts))}")
    intra_shm = mode != "torch" and len(set(hosts)) == 1 and local_size > 1
    cross = mpi_cross = None
    cross_members = []
    if uniform:
        cross_members = [[members[n][lr] for n in range(num_nodes)] for lr in range(local_size)]
        cross, _ = dist.new_subgroups_by_enumeration(cross_members, timeout=_timeout())
        if comm is not None:
            mpi_cross = comm.Split(color=local_rank, key=node)
    topo = Topology(
        info.launcher,
        info.rank,
        info.world_size,
        local_rank,
        local_size,
        node,
        num_nodes,
        device,
        backend,
        uniform,
        intra_shm,
        dist.group.WORLD,
        intra,
        cross,
        mpi_cross,
        members[node],
        cross_members[local_rank] if uniform else [],
        adopted=adopted,
    )
    topo.comm_world = dist.new_group(list(range(info.world_size)), timeout=_timeout())
    return topo


def batchnorm_group_members(world_size, group_size):
    """The batch-norm groups: runs of ``group_size`` consecutive ranks; when ``group_size`` does
    not divide the world, the last group holds the remaining ranks."""
    if group_size < 1 or group_size > world_size:
        raise ConfigError(f"option batchnorm-group-size: {group_size} is not between 1 and the {world_size} ranks")
    return [list(range(start, min(start + group_size, world_size))) for start in range(0, world_size, group_size)]


def batchnorm_group(topo, group_size):
    """This rank's process group for batch-norm statistics shared by ``group_size`` consecutive
    ranks: None for 1 (or a last group of this rank alone), the world group for the world size
    (only the main thread's collectives use it); otherwise groups of their own, made collectively
    (every rank must call this with the same size), even when they are the nodes: the gradient
    allreduces run the intra-node and cross-node groups on a background thread while backward (and,
    with gradient lag, the next forward) runs the batch norms, and two threads must never share a
    group. Cached on ``topo``."""
    if group_size in topo.batchnorm_groups:
        return topo.batchnorm_groups[group_size]
    members = batchnorm_group_members(topo.world_size, group_size)
    mine = next(m for m in members if topo.rank in m)
    if group_size == 1:
        group = None
    elif group_size == topo.world_size:
        group = topo.world
    else:
        group = _new_groups(members, topo)
    if group is not None and len(mine) == 1:
        group = None
    topo.batchnorm_groups[group_size] = group
    return group


def _new_groups(members, topo):
    mine, _ = dist.new_subgroups_by_enumeration(members, timeout=_timeout())
    return mine


def topology():
    """The topology made by :func:`init` (None before it)."""
    return _TOPOLOGY


def shutdown():
    """Destroy the process groups made by :func:`init`. An adopted topology (a trainer's process
    group) is only forgotten: the trainer destroys its group, and every group made on it, itself."""
    global _TOPOLOGY
    topo = _TOPOLOGY
    if topo is not None and topo.world_size > 1 and not topo.adopted and dist.is_initialized():
        dist.barrier(group=topo.world)  # nobody tears down links a peer still uses
        if topo.mpi_cross is not None:
            topo.mpi_cross.Free()
        dist.destroy_process_group()
    _TOPOLOGY = None


def abort(code=1):
    """End this process at once with ``code`` and make the launcher end the others:
    MPI_Abort under MPI; under torchrun and srun the launcher stops the rest when a
    process fails, and ranks waiting in a collective fail after CLIMSEG_DIST_TIMEOUT."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    info = detect_launcher()
    if info.launcher in ("mpi", "jsrun"):
        comm = mpi_world()
        if comm is not None:
            comm.Abort(code)
    os._exit(code)
