"""What the launcher tells a process: rank, world size, local rank and node, from the environment
variables of ``torchrun``, ``mpirun``/``mpiexec`` (Open MPI, MPICH), ``srun`` (Slurm) and ``jsrun``
(LSF), and where the ranks meet (the rendezvous address). :mod:`.launch` turns this into process
groups; nothing here starts or joins one.

Rendezvous: ``MASTER_ADDR``/``MASTER_PORT`` when set (torchrun sets them); under MPI rank 0's
address and a free port travel over MPI, so nothing needs setting; under Slurm without MPI, the
first host of the step's node list and a port derived from the job id.
"""

import dataclasses
import os
import re
import socket

from climseg.errors import ConfigError


@dataclasses.dataclass
class LaunchInfo:
    """What the launcher tells a process about itself."""

    launcher: str  # "torchrun", "mpi", "slurm", "jsrun" or "none"
    rank: int
    world_size: int
    local_rank: int = 0
    local_size: int = 1
    node_key: str = ""  # equal for ranks on the same node


def env_int(*names, default=None):
    """The first of the environment variables ``names`` that is set and not empty, as an integer."""
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
            env_int("LOCAL_RANK", default=0),
            env_int("LOCAL_WORLD_SIZE", default=1),
            env.get("GROUP_RANK", socket.gethostname()),
        )
    if "OMPI_COMM_WORLD_RANK" in env:
        return LaunchInfo(
            "mpi",
            int(env["OMPI_COMM_WORLD_RANK"]),
            int(env["OMPI_COMM_WORLD_SIZE"]),
            env_int("OMPI_COMM_WORLD_LOCAL_RANK", default=0),
            env_int("OMPI_COMM_WORLD_LOCAL_SIZE", default=1),
            socket.gethostname(),
        )
    if "PMI_RANK" in env or "PMIX_RANK" in env:
        return LaunchInfo(
            "mpi",
            env_int("PMI_RANK", "PMIX_RANK"),
            env_int("PMI_SIZE", "PMIX_SIZE", default=1),
            env_int("MPI_LOCALRANKID", "PALS_LOCAL_RANKID", default=0),
            env_int("MPI_LOCALNRANKS", "PALS_LOCAL_SIZE", default=1),
            socket.gethostname(),
        )
    if "JSM_NAMESPACE_RANK" in env:
        return LaunchInfo(
            "jsrun",
            int(env["JSM_NAMESPACE_RANK"]),
            int(env["JSM_NAMESPACE_SIZE"]),
            env_int("JSM_NAMESPACE_LOCAL_RANK", default=0),
            env_int("JSM_NAMESPACE_LOCAL_SIZE", default=1),
            socket.gethostname(),
        )
    if "SLURM_PROCID" in env and env_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", default=1) > 1:
        return LaunchInfo(
            "slurm",
            int(env["SLURM_PROCID"]),
            env_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"),
            env_int("SLURM_LOCALID", default=0),
            _slurm_local_size(),
            env.get("SLURM_NODEID", socket.gethostname()),
        )
    return LaunchInfo("none", 0, 1)


def is_launched():
    """True when a launcher started more than one process."""
    return detect_launcher().world_size > 1


def _slurm_local_size():
    counts = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE") or "1"
    node = env_int("SLURM_NODEID", default=0)
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


def mpi_world():
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


def rendezvous(info, comm):
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
        return addr or first, int(port or 20000 + env_int("SLURM_JOB_ID", default=0) % 20000)
    raise ConfigError(f"{info.launcher}: set MASTER_ADDR and MASTER_PORT, or install mpi4py, for the rendezvous")
