"""``climseg stage``: copy a dataset from the shared file system to node-local
storage, reading every source file once in all.

Under MPI (mpirun, srun with MPI, jsrun) every rank reads a disjoint part of
the file list — file i by rank i mod world — and sends it over MPI to the nodes
that need it; the parallel file system is read once, not once per node. The
plan is the same on every rank:

* ``--shard-by node``: training file i goes to nodes (i + k) mod N for
  k < ``--replicate``; ``--shard-by rank``: it belongs to rank i mod world and
  goes to that rank's node (plus replicas on the following nodes).
* Validation files, ``stats.h5`` and ``climseg-dataset.json`` go to every node.
* On each target node, local rank (i mod ranks-per-node) receives and writes it.

Transfers happen in rounds: in round r each rank reads its r-th file, sends it
(with its CRC-32) to the writers of other nodes, writes it itself where its
own node is a target, and receives what was sent to it in that round.
Every file is written under a temporary name, renamed, read back and checked
(size and CRC-32) before a line for it goes into the node's journal
(``DST/.climseg-stage-journal``). A later run skips files the journal lists
and that are there with the right size, so an interrupted staging resumes.
At the end each node writes ``climseg-manifest.json`` in every split folder,
which :class:`climseg.data.FastLoader` reads. Without MPI a thread pool stages
locally.

``DST`` may contain ``{node}`` (and ``{rank}``), replaced per node: node-local
paths for tests of several simulated nodes on one machine
(``CLIMSEG_LOCAL_SIZE``).
"""
import concurrent.futures
import glob
import json
import os
import threading
import time
import zlib

from climseg.errors import UserError
from climseg.io import atomic_path, write_json

JOURNAL = ".climseg-stage-journal"
MANIFEST = "climseg-manifest.json"
EXTRAS = ("stats.h5", "climseg-dataset.json")
CHUNK = 64 << 20


def _crc32(data):
    crc = 0
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        crc = zlib.crc32(view[start: start + CHUNK], crc)
    return crc & 0xFFFFFFFF


def _file_crc32(path):
    crc = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                return crc & 0xFFFFFFFF
            crc = zlib.crc32(block, crc)


def list_source(src):
    """``(entries, splits)``: every file to stage as ``(relative path, split or None)``."""
    if not os.path.isdir(src):
        raise UserError(f"{src}: no such folder")
    splits = [s for s in ("train", "validation") if os.path.isdir(os.path.join(src, s))]
    entries = []
    for split in splits or [""]:
        folder = os.path.join(src, split)
        for path in sorted(glob.glob(os.path.join(folder, "*.h5"))):
            if os.path.basename(path) != "stats.h5":
                entries.append((os.path.relpath(path, src), split or None))
    if not entries:
        raise UserError(f"{src}: no .h5 sample files to stage")
    for extra in EXTRAS:
        if os.path.isfile(os.path.join(src, extra)):
            entries.append((extra, "*"))
    return entries, splits


def plan(entries, sizes, num_nodes, node_ranks, world, shard_by="node", replicate=1):
    """For every entry: ``(reader rank, {node: writer rank}, owner rank or None)``.

    ``node_ranks[n]`` lists the global ranks of node n. Training files are
    sharded; validation files and extras go to every node."""
    if shard_by not in ("node", "rank"):
        raise UserError(f"--shard-by must be node or rank, not {shard_by!r}")
    if replicate < 1:
        raise UserError(f"--replicate must be at least 1, got {replicate}")
    node_of = {r: n for n, ranks in enumerate(node_ranks) for r in ranks}
    replicate = min(replicate, num_nodes)
    out, shard_index = [], 0
    for i, (_name, split) in enumerate(entries):
        owner = None
        if split in ("train", None):
            if shard_by == "node":
                first = shard_index % num_nodes
            else:
                owner = shard_index % world
                first = node_of[owner]
            nodes = [(first + k) % num_nodes for k in range(replicate)]
            shard_index += 1
        else:
            nodes = list(range(num_nodes))
        writers = {n: node_ranks[n][i % len(node_ranks[n])] for n in nodes}
        reader = i % world
        if node_of[reader] in writers:           # read on a target node: no transfer there
            writers[node_of[reader]] = reader
        out.append((reader, writers, owner))
    return out


def _read_journal(folder):
    done = {}
    path = os.path.join(folder, JOURNAL)
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                    done[row["name"]] = (row["size"], row["crc32"])
                except (ValueError, KeyError):
                    continue   # a line cut short by a crash: that file is staged again
    return done


def _clean_partials(folder):
    for path in glob.glob(os.path.join(folder, "**", ".*.tmp"), recursive=True):
        os.unlink(path)


class _Writer:
    """Writes, verifies and journals files into one node's folder."""

    def __init__(self, folder):
        self.folder = folder
        self.lock = threading.Lock()
        self.bytes = 0
        path = os.path.join(folder, JOURNAL)
        if os.path.isfile(path) and os.path.getsize(path):
            with open(path, "rb+") as f:      # a line cut short by a crash must not swallow the next one
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def write(self, name, payload, crc):
        path = os.path.join(self.folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(payload)
            size, check = os.path.getsize(tmp), _file_crc32(tmp)
            if size != len(payload) or check != crc:
                raise OSError(f"{path}: verification failed after writing (size {size} of {len(payload)}, "
                              f"crc32 {check:08x} against {crc:08x})")
        line = json.dumps(dict(name=name, size=len(payload), crc32=crc)) + "\n"
        with self.lock:
            fd = os.open(os.path.join(self.folder, JOURNAL), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            self.bytes += len(payload)


def _already(folder, done, name, size):
    entry = done.get(name)
    path = os.path.join(folder, name)
    return entry is not None and entry[0] == size and os.path.isfile(path) and os.path.getsize(path) == size


def stage(src, dst, shard_by="node", replicate=1, threads=None, progress=True, log=print):
    """Stage ``src`` into ``dst`` (see the module doc). Returns a summary dict (on every rank)."""
    from climseg.distributed.launch import detect_launcher

    src = os.path.abspath(src)
    info = detect_launcher()
    if info.world_size > 1 and info.launcher in ("mpi", "jsrun"):
        return _stage_mpi(src, dst, shard_by, replicate, progress, log)
    if info.world_size > 1:
        raise UserError(f"climseg stage runs as one process or under MPI, not under {info.launcher}")
    return _stage_local(src, dst.format(node=0, rank=0), shard_by, replicate, threads, progress, log)


def _stage_local(src, dst, shard_by, replicate, threads, progress, log):
    from climseg.progress import progress_bar

    entries, splits = list_source(src)
    sizes = [os.path.getsize(os.path.join(src, name)) for name, _ in entries]
    os.makedirs(dst, exist_ok=True)
    _clean_partials(dst)
    done = _read_journal(dst)
    writer = _Writer(dst)
    todo = [(name, size) for (name, _), size in zip(entries, sizes) if not _already(dst, done, name, size)]
    read_bytes = [0]
    lock = threading.Lock()
    start = time.time()

    def copy(item):
        name, size = item
        with open(os.path.join(src, name), "rb") as f:
            payload = f.read()
        if len(payload) != size:
            raise OSError(f"{os.path.join(src, name)}: changed while staging")
        with lock:
            read_bytes[0] += len(payload)
        writer.write(name, payload, _crc32(payload))

    pool = concurrent.futures.ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1))
    try:
        with progress_bar(total=len(todo), desc="stage", unit="file", disable=not progress) as bar:
            for future in concurrent.futures.as_completed([pool.submit(copy, item) for item in todo]):
                future.result()
                bar.update()
    finally:   # on Ctrl-C or an error: finish the files being written, start no more
        pool.shutdown(wait=True, cancel_futures=True)
    layout = plan(entries, sizes, 1, [[0]], 1, shard_by, replicate)
    _write_manifests(dst, src, entries, layout, 0, [0], shard_by, replicate, 1, 1)
    return _summary(len(entries), len(todo), read_bytes[0], writer.bytes, time.time() - start, 1, log)


def _stage_mpi(src, dst_pattern, shard_by, replicate, progress, log):
    import numpy as np
    from mpi4py import MPI

    from climseg.distributed.launch import _node_table, detect_launcher
    from climseg.progress import progress_bar

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    info = detect_launcher()
    info.rank, info.world_size = rank, world
    nodes, local_ranks = _node_table(info, comm)
    num_nodes = max(nodes) + 1
    node_ranks = [sorted((r for r in range(world) if nodes[r] == n), key=lambda r: local_ranks[r]) for n in range(num_nodes)]
    node = nodes[rank]
    dst = dst_pattern.format(node=node, rank=rank)
    error = None
    try:
        if rank == 0:
            entries, _ = list_source(src)
            sizes = [os.path.getsize(os.path.join(src, name)) for name, _ in entries]
            listing = (entries, sizes)
        else:
            listing = None
    except UserError as exc:
        error, listing = str(exc), None
    listing = comm.bcast((listing, error) if rank == 0 else None, root=0)
    if listing[1]:
        raise UserError(listing[1])
    entries, sizes = listing[0]
    layout = plan(entries, sizes, num_nodes, node_ranks, world, shard_by, replicate)
    # what every node already holds (the journals), so that nothing is read or sent twice
    if rank == node_ranks[node][0]:
        os.makedirs(dst, exist_ok=True)
        _clean_partials(dst)
    comm.Barrier()
    done = _read_journal(dst) if rank == node_ranks[node][0] else None
    held = [n for n in comm.allgather((node, done)) if n[1] is not None]
    have = {}
    for n, journal in held:
        folder = dst_pattern.format(node=n, rank=node_ranks[n][0])
        have[n] = {name for name, size in zip([e[0] for e in entries], sizes) if _already(folder, journal, name, size)}
    os.makedirs(dst, exist_ok=True)
    writer = _Writer(dst)
    # the work: per rank, the files it reads (in order) and what it receives
    reads = {r: [] for r in range(world)}
    for i, (reader, writers, _) in enumerate(layout):
        targets = {n: w for n, w in writers.items() if entries[i][0] not in have.get(n, set())}
        if targets:
            reads[reader].append((i, targets))
    rounds = max(len(v) for v in reads.values())
    read_bytes = 0
    start = time.time()
    with progress_bar(total=rounds, desc=f"stage ({world} ranks)", unit="round", disable=not (progress and rank == 0)) as bar:
        for r in range(rounds):
            incoming = []
            for sender in range(world):
                if r < len(reads[sender]):
                    i, targets = reads[sender][r]
                    for w in targets.values():
                        if w == rank and sender != rank:
                            buf = np.empty(sizes[i] + 4, dtype=np.uint8)
                            incoming.append((i, buf, comm.Irecv([buf, MPI.BYTE], source=sender, tag=i % 32768)))
            sends, mine = [], None
            if r < len(reads[rank]):
                i, targets = reads[rank][r]
                with open(os.path.join(src, entries[i][0]), "rb") as f:
                    payload = f.read()
                if len(payload) != sizes[i]:
                    raise OSError(f"{os.path.join(src, entries[i][0])}: changed while staging")
                read_bytes += len(payload)
                crc = _crc32(payload)
                message = np.frombuffer(payload + crc.to_bytes(4, "little"), dtype=np.uint8)
                for w in targets.values():
                    if w != rank:
                        sends.append(comm.Isend([message, MPI.BYTE], dest=w, tag=i % 32768))
                if node in targets and targets[node] == rank:
                    mine = (i, payload, crc)
            if mine is not None:
                writer.write(entries[mine[0]][0], mine[1], mine[2])
            for i, buf, req in incoming:
                req.Wait()
                crc = int.from_bytes(buf[-4:].tobytes(), "little")
                payload = buf[:-4].tobytes()
                if _crc32(payload) != crc:
                    raise OSError(f"{entries[i][0]}: corrupted in transfer (crc32 mismatch)")
                writer.write(entries[i][0], payload, crc)
            MPI.Request.Waitall(sends)
            bar.update()
    comm.Barrier()
    elapsed = time.time() - start
    total_read = comm.allreduce(read_bytes)
    total_written = comm.allreduce(writer.bytes)
    if rank == node_ranks[node][0]:
        _write_manifests(dst, src, entries, layout, node, node_ranks[node], shard_by, replicate, world, num_nodes)
    comm.Barrier()
    staged = sum(len(v) for v in reads.values())
    return _summary(len(entries), staged, total_read, total_written, elapsed, num_nodes, log if rank == 0 else None)


def _write_manifests(dst, src, entries, layout, node, ranks, shard_by, replicate, world, num_nodes):
    """One manifest per split folder of this node: the files it holds, with size and CRC-32."""
    journal = _read_journal(dst)
    by_split = {}
    for (name, split), (_, writers, owner) in zip(entries, layout):
        if split == "*" or node not in writers:
            continue
        size, crc = journal[name]
        by_split.setdefault(split or "", []).append(
            dict(name=os.path.basename(name), size=size, crc32=crc, owner=owner))
    for split, files in by_split.items():
        sharded = split in ("train", "")
        write_json(os.path.join(dst, split, MANIFEST), dict(
            format="climseg-stage-manifest", version=1, source=os.path.join(src, split), node=node,
            ranks=ranks, world_size=world, num_nodes=num_nodes, shard=(shard_by if sharded else "all"),
            replicate=replicate, files=files))


def _summary(total, staged, read_bytes, written_bytes, seconds, nodes, log):
    s = dict(files=total, staged=staged, skipped=total - staged if staged <= total else 0, read_bytes=read_bytes,
             written_bytes=written_bytes, seconds=seconds, read_gbs=read_bytes / max(seconds, 1e-9) / 1e9,
             write_gbs=written_bytes / max(seconds, 1e-9) / 1e9, nodes=nodes)
    if log:
        log(f"climseg: staged {staged} of {total} files ({total - staged} already there) to {nodes} node(s): "
            f"{read_bytes / 1e9:.2f} GB read once from the source, {written_bytes / 1e9:.2f} GB written, "
            f"{seconds:.1f} s, {s['read_gbs']:.2f} GB/s read, {s['write_gbs']:.2f} GB/s written")
    return s
