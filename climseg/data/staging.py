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
(``DST/.climseg-stage-journal``): the source's size and modification time,
the CRC-32 of the content, and the staged copy's size and modification time.
A later run skips a file only when the journal lists it, the source still has
the recorded size and modification time (a regenerated dataset is copied
again), and the staged copy still has its recorded size and modification time
(a copy changed after staging is copied again); ``verify=True``
(``--verify``) also re-reads every staged copy against its recorded CRC-32.
So an interrupted staging resumes, and a stale one is refreshed.
At the end each node writes ``climseg-manifest.json`` in every split folder,
which :class:`climseg.data.FastLoader` reads. Without MPI a thread pool stages
locally.

``DST`` may contain ``{node}`` (and ``{rank}``), replaced per node: node-local
paths for tests of several simulated nodes on one machine
(``CLIMSEG_LOCAL_SIZE``). ``DST`` must not be ``SRC`` or lie inside it (nor
``SRC`` inside ``DST``); it is checked (a folder, writable) before anything is
read. A source file that cannot be read, and a destination that cannot be
written (full, read-only), end the staging with one line naming the file.
"""

import concurrent.futures
import glob
import json
import os
import threading
import time
import zlib

from climseg.data.manifest import write_manifest
from climseg.errors import DataError, UserError
from climseg.output import append_line, atomic_path, check_output_location, makedirs

JOURNAL = ".climseg-stage-journal"
EXTRAS = ("stats.h5", "climseg-dataset.json")
CHUNK = 64 << 20


def _crc32(data):
    crc = 0
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        crc = zlib.crc32(view[start : start + CHUNK], crc)
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
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            raise DataError(f"{folder}: cannot read this folder ({exc.strerror})") from None
        for name in names:
            if name.endswith(".h5") and name != "stats.h5" and not name.startswith("."):
                entries.append((os.path.join(split, name) if split else name, split or None))
    if not entries:
        raise UserError(f"{src}: no .h5 sample files to stage")
    for extra in EXTRAS:
        if os.path.isfile(os.path.join(src, extra)):
            entries.append((extra, "*"))
    return entries, splits


def source_stats(src, entries):
    """``(size, mtime_ns)`` of every source file: what identifies its content between runs."""
    stats = []
    for name, _ in entries:
        path = os.path.join(src, name)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DataError(f"{path}: cannot read ({exc.strerror})") from None
        stats.append((st.st_size, st.st_mtime_ns))
    return stats


def read_source(path, stat):
    """The bytes of a source file, checked against its listed ``(size, mtime_ns)``."""
    try:
        with open(path, "rb") as f:
            payload = f.read()
            st = os.fstat(f.fileno())
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if len(payload) != stat[0] or (st.st_size, st.st_mtime_ns) != tuple(stat):
        raise DataError(f"{path}: changed while staging; stage again once it is written")
    return payload


def check_locations(src, dst):
    """Refuse a destination that is the source, inside it or around it, or cannot be written."""
    real_src, real_dst = os.path.realpath(src), os.path.realpath(dst)
    if real_dst == real_src:
        raise UserError(f"{dst}: is the source folder itself; stage into another folder")
    if real_dst.startswith(real_src.rstrip(os.sep) + os.sep):
        raise UserError(f"{dst}: lies inside the source folder {src}; stage into a folder outside it")
    if real_src.startswith(real_dst.rstrip(os.sep) + os.sep):
        raise UserError(f"{dst}: holds the source folder {src}; stage into a folder outside it")
    check_output_location(dst, "folder")


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
        if node_of[reader] in writers:  # read on a target node: no transfer there
            writers[node_of[reader]] = reader
        out.append((reader, writers, owner))
    return out


def _read_journal(folder):
    """``{name: row}`` of the journal (the last line of a name wins); rows of an older
    format, without the source's identity, are left out (those files are staged again)."""
    done = {}
    path = os.path.join(folder, JOURNAL)
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                    if all(k in row for k in ("name", "size", "crc32", "source_size", "source_mtime_ns", "mtime_ns")):
                        done[row["name"]] = row
                except ValueError:
                    continue  # a line cut short by a crash: that file is staged again
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
            with open(path, "rb+") as f:  # a line cut short by a crash must not swallow the next one
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def write(self, name, payload, crc, source):
        """Write ``payload`` as ``name``, verify it and journal it with ``source`` = (size, mtime_ns)."""
        path = os.path.join(self.folder, name)
        makedirs(os.path.dirname(path))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(payload)
            size, check = os.path.getsize(tmp), _file_crc32(tmp)
            if size != len(payload) or check != crc:
                raise UserError(
                    f"{path}: verification failed after writing (size {size} of {len(payload)}, "
                    f"crc32 {check:08x} against {crc:08x}); the destination's storage is faulty"
                )
        mtime = os.stat(path).st_mtime_ns
        line = json.dumps(
            dict(
                name=name,
                size=len(payload),
                crc32=crc,
                source_size=source[0],
                source_mtime_ns=source[1],
                mtime_ns=mtime,
            )
        )
        with self.lock:
            append_line(os.path.join(self.folder, JOURNAL), line)
            self.bytes += len(payload)


def _already(folder, done, name, source, verify=False):
    """Is ``name`` staged in ``folder`` from the source as it is now (``source`` = (size, mtime_ns))?
    ``verify``: also re-read the staged copy against its recorded CRC-32."""
    entry = done.get(name)
    if entry is None or (entry["source_size"], entry["source_mtime_ns"]) != tuple(source):
        return False
    try:
        st = os.stat(os.path.join(folder, name))
    except OSError:
        return False
    if (st.st_size, st.st_mtime_ns) != (entry["size"], entry["mtime_ns"]):
        return False
    return not verify or _file_crc32(os.path.join(folder, name)) == entry["crc32"]


def _staged_names(folder, entries, stats, verify):
    """The names in ``entries`` already staged, and unchanged, in ``folder``."""
    done = _read_journal(folder)
    return {name for (name, _), st in zip(entries, stats) if _already(folder, done, name, st, verify)}


def stage(src, dst, shard_by="node", replicate=1, threads=None, progress=True, log=print, verify=False):
    """Stage ``src`` into ``dst`` (see the module doc). Returns a summary dict (on every rank).
    ``verify``: re-read every already staged copy against its recorded CRC-32 (copy it again if it differs)."""
    from climseg.distributed.launch import detect_launcher

    if shard_by not in ("node", "rank"):
        raise UserError(f"--shard-by must be node or rank, not {shard_by!r}")
    if replicate < 1:
        raise UserError(f"--replicate must be at least 1, got {replicate}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    src = os.path.abspath(src)
    info = detect_launcher()
    if info.world_size > 1 and info.launcher in ("mpi", "jsrun"):
        return _stage_mpi(src, dst, shard_by, replicate, progress, log, verify)
    if info.world_size > 1:
        raise UserError(f"climseg stage runs as one process or under MPI, not under {info.launcher}")
    return _stage_local(src, dst.format(node=0, rank=0), shard_by, replicate, threads, progress, log, verify)


def _stage_local(src, dst, shard_by, replicate, threads, progress, log, verify=False):
    from climseg.progress import progress_bar

    entries, splits = list_source(src)
    check_locations(src, dst)
    stats = source_stats(src, entries)
    sizes = [st[0] for st in stats]
    makedirs(dst)
    _clean_partials(dst)
    writer = _Writer(dst)
    have = _staged_names(dst, entries, stats, verify)
    todo = [(name, st) for (name, _), st in zip(entries, stats) if name not in have]
    read_bytes = [0]
    lock = threading.Lock()
    start = time.time()

    def copy(item):
        name, st = item
        payload = read_source(os.path.join(src, name), st)
        with lock:
            read_bytes[0] += len(payload)
        writer.write(name, payload, _crc32(payload), st)

    pool = concurrent.futures.ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1))
    try:
        with progress_bar(total=len(todo), desc="stage", unit="file", disable=not progress) as bar:
            for future in concurrent.futures.as_completed([pool.submit(copy, item) for item in todo]):
                future.result()
                bar.update()
    finally:  # on Ctrl-C or an error: finish the files being written, start no more
        pool.shutdown(wait=True, cancel_futures=True)
    layout = plan(entries, sizes, 1, [[0]], 1, shard_by, replicate)
    _write_manifests(dst, src, entries, layout, 0, [0], shard_by, replicate, 1, 1)
    return _summary(len(entries), len(todo), read_bytes[0], writer.bytes, time.time() - start, 1, log)


def _stage_mpi(src, dst_pattern, shard_by, replicate, progress, log, verify=False):
    import numpy as np
    from mpi4py import MPI

    from climseg.distributed.launch import detect_launcher, node_table
    from climseg.progress import progress_bar

    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    info = detect_launcher()
    info.rank, info.world_size = rank, world
    nodes, local_ranks = node_table(info, comm)
    num_nodes = max(nodes) + 1
    node_ranks = [
        sorted((r for r in range(world) if nodes[r] == n), key=lambda r: local_ranks[r]) for n in range(num_nodes)
    ]
    node = nodes[rank]
    dst = dst_pattern.format(node=node, rank=rank)
    error = None
    try:
        if rank == 0:
            entries, _ = list_source(src)
            stats = source_stats(src, entries)
            listing = (entries, stats)
        else:
            listing = None
    except UserError as exc:
        error, listing = str(exc), None
    listing = comm.bcast((listing, error) if rank == 0 else None, root=0)
    if listing[1]:
        raise UserError(listing[1])
    entries, stats = listing[0]
    sizes = [st[0] for st in stats]
    layout = plan(entries, sizes, num_nodes, node_ranks, world, shard_by, replicate)
    # what every node already holds, checked by the node itself, so that nothing is read or sent twice
    leader = rank == node_ranks[node][0]
    error = None
    try:
        if leader:
            check_locations(src, dst)
            makedirs(dst)
            _clean_partials(dst)
    except UserError as exc:
        error = str(exc)
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise UserError(errors[0])
    held_here = _staged_names(dst, entries, stats, verify) if leader else None
    have = {n: names for n, names in comm.allgather((node, held_here)) if names is not None}
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
    with progress_bar(
        total=rounds, desc=f"stage ({world} ranks)", unit="round", disable=not (progress and rank == 0)
    ) as bar:
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
                payload = read_source(os.path.join(src, entries[i][0]), stats[i])
                read_bytes += len(payload)
                crc = _crc32(payload)
                message = np.frombuffer(payload + crc.to_bytes(4, "little"), dtype=np.uint8)
                for w in targets.values():
                    if w != rank:
                        sends.append(comm.Isend([message, MPI.BYTE], dest=w, tag=i % 32768))
                if node in targets and targets[node] == rank:
                    mine = (i, payload, crc)
            if mine is not None:
                writer.write(entries[mine[0]][0], mine[1], mine[2], stats[mine[0]])
            for i, buf, req in incoming:
                req.Wait()
                crc = int.from_bytes(buf[-4:].tobytes(), "little")
                payload = buf[:-4].tobytes()
                if _crc32(payload) != crc:
                    raise OSError(f"{entries[i][0]}: corrupted in transfer (crc32 mismatch)")
                writer.write(entries[i][0], payload, crc, stats[i])
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
        size, crc = journal[name]["size"], journal[name]["crc32"]
        by_split.setdefault(split or "", []).append(
            dict(name=os.path.basename(name), size=size, crc32=crc, owner=owner)
        )
    for split, files in by_split.items():
        sharded = split in ("train", "")
        write_manifest(
            os.path.join(dst, split),
            os.path.join(src, split),
            node,
            ranks,
            world,
            num_nodes,
            shard_by if sharded else "all",
            replicate,
            files,
        )


def _summary(total, staged, read_bytes, written_bytes, seconds, nodes, log):
    s = dict(
        files=total,
        staged=staged,
        skipped=total - staged if staged <= total else 0,
        read_bytes=read_bytes,
        written_bytes=written_bytes,
        seconds=seconds,
        read_gbs=read_bytes / max(seconds, 1e-9) / 1e9,
        write_gbs=written_bytes / max(seconds, 1e-9) / 1e9,
        nodes=nodes,
    )
    if log:
        log(
            f"climseg: staged {staged} of {total} files ({total - staged} already there) to {nodes} node(s): "
            f"{read_bytes / 1e9:.2f} GB read once from the source, {written_bytes / 1e9:.2f} GB written, "
            f"{seconds:.1f} s, {s['read_gbs']:.2f} GB/s read, {s['write_gbs']:.2f} GB/s written"
        )
    return s
