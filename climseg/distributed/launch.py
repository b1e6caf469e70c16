"""Launcher environments and process groups.

``init()`` works under ``mpirun``/``mpiexec`` (Open MPI, MPICH), ``srun``
(Slurm), ``jsrun`` (LSF) and ``torchrun``. It reads the launcher's rank and
size, finds which ranks share a node, picks the device, starts
``torch.distributed`` (NCCL on GPUs, gloo on CPUs) and creates three kinds of
groups: the world, one intra-node group per node, and one cross-node group per
local rank (the ranks with the same local rank on every node).

Node membership: ``CLIMSEG_LOCAL_SIZE=k`` makes each run of k consecutive
ranks one node (to test multi-node topologies on one machine); otherwise MPI's
shared-memory split, else the launcher's local rank and host name.

Rendezvous: ``MASTER_ADDR``/``MASTER_PORT`` when set (torchrun sets them);
under MPI rank 0's address and a free port travel over MPI, so nothing needs
setting; under Slurm without MPI, the first host of the step's node list and a
port derived from the job id.

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
import re
import socket

import torch
import torch.distributed as dist

from climseg.errors import ConfigError

LOCAL_SIZE_ENV = "CLIMSEG_LOCAL_SIZE"
BACKEND_ENV = "CLIMSEG_DIST_BACKEND"
TIMEOUT_ENV = "CLIMSEG_DIST_TIMEOUT"
INTRA_ENV = "CLIMSEG_INTRA_TRANSPORT"
DEFAULT_TIMEOUT_S = 600


@dataclasses.dataclass
class LaunchInfo:
    """What the launcher tells a process about itself."""

    launcher: str  # "torchrun", "mpi", "slurm", "jsrun" or "none"
    rank: int
    world_size: int
    local_rank: int = 0
    local_size: int = 1
    node_key: str = ""  # equal for ranks on the same node


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

    @property
    def hierarchical(self):
        """True when the hierarchical algorithm differs from a flat one (several nodes, several ranks each)."""
        return self.uniform and self.num_nodes > 1 and self.local_size > 1


_TOPOLOGY = None


def _int(env, *names, default=None):
    for n in names:
        if os.environ.get(n, "").strip():
            return int(os.environ[n])
    return default


def detect_launcher():
    """The launcher's view of this process, from environment variables alone."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and ("TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env):
        return LaunchInfo(
            "torchrun",
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            _int(env, "LOCAL_RANK", default=0),
            _int(env, "LOCAL_WORLD_SIZE", default=1),
            env.get("GROUP_RANK", socket.gethostname()),
        )
    if "OMPI_COMM_WORLD_RANK" in env:
        return LaunchInfo(
            "mpi",
            int(env["OMPI_COMM_WORLD_RANK"]),
            int(env["OMPI_COMM_WORLD_SIZE"]),
            _int(env, "OMPI_COMM_WORLD_LOCAL_RANK", default=0),
            _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", default=1),
            socket.gethostname(),
        )
    if "PMI_RANK" in env or "PMIX_RANK" in env:
        return LaunchInfo(
            "mpi",
            _int(env, "PMI_RANK", "PMIX_RANK"),
            _int(env, "PMI_SIZE", "PMIX_SIZE", default=1),
            _int(env, "MPI_LOCALRANKID", "PALS_LOCAL_RANKID", default=0),
            _int(env, "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE", default=1),
            socket.gethostname(),
        )
    if "JSM_NAMESPACE_RANK" in env:
        return LaunchInfo(
            "jsrun",
            int(env["JSM_NAMESPACE_RANK"]),
            int(env["JSM_NAMESPACE_SIZE"]),
            _int(env, "JSM_NAMESPACE_LOCAL_RANK", default=0),
            _int(env, "JSM_NAMESPACE_LOCAL_SIZE", default=1),
            socket.gethostname(),
        )
    if "SLURM_PROCID" in env and _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", default=1) > 1:
        return LaunchInfo(
            "slurm",
            int(env["SLURM_PROCID"]),
            _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
            _int(env, "SLURM_LOCALID", default=0),
            _slurm_local_size(),
            env.get("SLURM_NODEID", socket.gethostname()),
        )
    return LaunchInfo("none", 0, 1)


def is_launched():
    """True when a launcher started more than one process."""
    return detect_launcher().world_size > 1


def _slurm_local_size():
    counts = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE") or "1"
    node = _int(os.environ, "SLURM_NODEID", default=0)
    per_node = expand_counts(counts)
    return per_node[node] if node < len(per_node) else per_node[0]


def expand_counts(text):
    """Slurm task counts: ``"4(x2),3"`` -> ``[4, 4, 3]``."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            out += [int(m.group(1))] * int(m.group(2) or 1)
    return out or [1]


def expand_hostlist(text):
    """Slurm host lists: ``"nid[001-003,007],login1"`` -> ``["nid001", "nid002", "nid003", "nid007", "login1"]``."""
    hosts, depth, token = [], 0, ""
    for ch in text + ",":
        if ch == "," and depth == 0:
            if token:
                hosts += _expand_one(token)
            token = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        token += ch
    return hosts


def _expand_one(token):
    m = re.fullmatch(r"([^\[]*)\[([^\]]+)\](.*)", token)
    if not m:
        return [token]
    prefix, ranges, rest = m.groups()
    out = []
    for r in ranges.split(","):
        lo, _, hi = r.partition("-")
        hi = hi or lo
        for i in range(int(lo), int(hi) + 1):
            for tail in _expand_one(rest) if "[" in rest else [rest]:
                out.append(f"{prefix}{str(i).zfill(len(lo))}{tail}")
    return out


def _mpi_world():
    """mpi4py's COMM_WORLD when running under an MPI launcher and mpi4py is installed."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def routable_address():
    """This host's address as other hosts can reach it (not 127.x when avoidable)."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        for info in infos:
            if not info[4][0].startswith("127."):
                return info[4][0]
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def _rendezvous(info, comm):
    """MASTER_ADDR and MASTER_PORT for torch.distributed's env:// rendezvous."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if addr and port:
        return addr, int(port)
    if comm is not None:
        multi_host = len(set(comm.allgather(socket.gethostname()))) > 1
        mine = (addr or (routable_address() if multi_host else "127.0.0.1"), int(port) if port else _free_port())
        return comm.bcast(mine if comm.Get_rank() == 0 else None, root=0)
    if info.launcher == "slurm":
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST", "")
        first = expand_hostlist(nodes)[0] if nodes else "127.0.0.1"
        return addr or first, int(port or 20000 + _int(os.environ, "SLURM_JOB_ID", default=0) % 20000)
    raise ConfigError(f"{info.launcher}: set MASTER_ADDR and MASTER_PORT, or install mpi4py, for the rendezvous")


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


def init(backend=None, device=None):
    """Start ``torch.distributed`` for this process and make the world, intra-node
    and cross-node groups. Idempotent; returns the :class:`Topology`.

    A single process without a launcher gets a one-rank topology (no process group).
    """
    global _TOPOLOGY
    if _TOPOLOGY is not None:
        return _TOPOLOGY
    info = detect_launcher()
    comm = _mpi_world() if info.launcher in ("mpi", "jsrun") else None
    if comm is not None:
        info.rank, info.world_size = comm.Get_rank(), comm.Get_size()
    cuda = torch.cuda.is_available()
    backend = (backend or os.environ.get(BACKEND_ENV) or ("nccl" if cuda else "gloo")).lower()
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"{BACKEND_ENV}={backend!r}: choose nccl or gloo")
    if info.world_size == 1:
        dev = torch.device(device) if device else torch.device("cuda" if cuda else "cpu")
        _TOPOLOGY = Topology("none", 0, 1, 0, 1, 0, 1, dev, backend, True, False, node_ranks=[0], cross_ranks=[0])
        return _TOPOLOGY
    if not dist.is_initialized():
        addr, port = _rendezvous(info, comm)
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = str(addr), str(port)
        os.environ["RANK"], os.environ["WORLD_SIZE"] = str(info.rank), str(info.world_size)
        dist.init_process_group(
            backend, init_method="env://", rank=info.rank, world_size=info.world_size, timeout=_timeout()
        )
    nodes, local_ranks = node_table(info, comm)
    node = nodes[info.rank]
    num_nodes = max(nodes) + 1
    members = [[r for r in range(info.world_size) if nodes[r] == n] for n in range(num_nodes)]
    members = [sorted(m, key=lambda r: local_ranks[r]) for m in members]
    sizes = {len(m) for m in members}
    uniform = len(sizes) == 1
    local_size = len(members[node])
    local_rank = members[node].index(info.rank)
    if device is None:
        device = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}") if cuda else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
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
    _TOPOLOGY = Topology(
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
    )
    _TOPOLOGY.comm_world = dist.new_group(list(range(info.world_size)), timeout=_timeout())
    import atexit

    atexit.register(shutdown)
    return _TOPOLOGY


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
    """Destroy the process groups made by :func:`init`."""
    global _TOPOLOGY
    topo = _TOPOLOGY
    if topo is not None and topo.world_size > 1 and dist.is_initialized():
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
        comm = _mpi_world()
        if comm is not None:
            comm.Abort(code)
    os._exit(code)
