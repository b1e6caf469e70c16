"""Staging manifests: the file ``climseg stage`` writes into every split folder it staged
(``climseg-manifest.json``), and how a loader turns a manifest, a folder or a list of files into
the sample files one rank reads.

A manifest is JSON: ``format`` ``"climseg-stage-manifest"``, ``version`` 1, the ``source`` folder,
the writing ``node``, its ``ranks``, ``world_size``, ``num_nodes``, ``shard`` (``all``, ``node``
or ``rank``), ``replicate`` and ``files`` (name, size, CRC-32 and owning rank of each). Written by
:func:`write_manifest` (:mod:`climseg.data.staging`), read by :func:`read_manifest` and
:func:`resolve_source` (:mod:`climseg.data.loader`).
"""

import json
import os

from climseg.data.deepcam import list_samples
from climseg.errors import DataError
from climseg.output import write_json

MANIFEST = "climseg-manifest.json"
FORMAT = "climseg-stage-manifest"
VERSION = 1


def write_manifest(folder, source, node, ranks, world_size, num_nodes, shard, replicate, files):
    """Write ``folder/climseg-manifest.json`` (atomically) for the staged ``files`` of ``folder``."""
    write_json(
        os.path.join(folder, MANIFEST),
        dict(
            format=FORMAT,
            version=VERSION,
            source=source,
            node=node,
            ranks=ranks,
            world_size=world_size,
            num_nodes=num_nodes,
            shard=shard,
            replicate=replicate,
            files=files,
        ),
    )


def read_manifest(path):
    """A staging manifest (written by ``climseg stage``): dict with ``files`` and ``folder``."""
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise DataError(f"{path}: not a climseg staging manifest")
    manifest["folder"] = os.path.dirname(os.path.abspath(path))
    return manifest


def resolve_source(source, rank=0, world_size=1):
    """``(files, folder, rank, world_size)`` for a folder (its manifest if staged), a manifest
    file or a list of files. A manifest may shard already: files owned by ranks
    (``--shard-by rank``: this rank reads its own), or a node's share to split among
    the node's ranks (``--shard-by node``)."""
    if isinstance(source, (list, tuple)):
        files = [os.fspath(p) for p in source]
        if not files:
            raise DataError("empty list of sample files")
        return files, os.path.dirname(os.path.abspath(files[0])), rank, world_size
    source = os.fspath(source)
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, MANIFEST)):
        source = os.path.join(source, MANIFEST)
    if os.path.isfile(source) and source.endswith(".json"):
        manifest = read_manifest(source)
        folder, entries = manifest["folder"], manifest["files"]
        shard = manifest.get("shard", "all")
        if shard == "rank" and world_size == manifest.get("world_size", world_size):
            mine = [os.path.join(folder, e["name"]) for e in entries if e.get("owner") == rank]
            return mine, folder, 0, 1
        files = [os.path.join(folder, e["name"]) for e in entries]
        ranks = manifest.get("ranks") or []
        if shard == "node" and rank in ranks and world_size == manifest.get("world_size", world_size):
            return files, folder, ranks.index(rank), len(ranks)
        return files, folder, rank, world_size
    return list_samples(source), source, rank, world_size
