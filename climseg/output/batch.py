"""A run's whole set of files written as one batch: all of it lands, or none of it.

:class:`OutputBatch` gives each run a private staging folder inside the output folder
(``.climseg-batch.<pid>-<8 random characters>.tmp``): the run writes every file there (its workers too, and
their work files in :attr:`OutputBatch.scratch`) and, when the whole set is complete, the files
are renamed into the folder together, with SIGINT and SIGTERM held for those few renames. Before
the renames a journal (``.commit.json``) in the staging folder lists them, so that a run killed
(``kill -9``) half-way through the renames is finished by the next run into the folder
(:func:`remove_stale_scratch`), and a reader meanwhile refuses the folder (:func:`check_complete`)
instead of reading two runs' files mixed. A failed or interrupted run removes its staging folder,
and the folder holds exactly what it held before.

A batch with a ``command`` (``label``, ``track``, ``analyze``) is a *run*: it takes the folder's
:class:`~climseg.output.lock.RunLock` for its whole life, first removes the scratch of killed runs
and finishes their commits, and replaces the earlier run of the same command as a whole: the
files the earlier run wrote (its manifest ``.climseg-run-COMMAND.json``) that the new run does not
write are removed with the same commit. It refuses to write a file that is one of its own inputs,
or one that an earlier run of another command wrote into the same folder.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile

from climseg.errors import DataError, OutputError
from climseg.output.files import (
    deferred_signals,
    file_mode,
    is_write_failure,
    makedirs,
    output_error,
    temporary_prefix,
    write_json,
)
from climseg.output.lock import RunLock

STAGING = "climseg-batch"
JOURNAL = ".commit.json"
SCRATCH = ".scratch"
MANIFEST_PREFIX = ".climseg-run-"
#: climseg's temporary names (files and folders): ``.NAME.<pid>-<8 random characters>.tmp``
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp$")
#: work files of climseg versions before the batches (no process id in the name)
LEGACY_SCRATCH = (re.compile(r"^\.climseg-track-[a-z0-9_]{8}$"), re.compile(r"^\..+_mask\.(nc|h5)\.rivers\.npy$"))


def manifest_name(command):
    """The hidden file that lists the files of a folder's last ``command`` run."""
    return f"{MANIFEST_PREFIX}{command}.json"


class OutputBatch:
    """The files of one run, written into a staging folder and renamed into ``folder`` together
    at the end (see the module docstring).

    ``with OutputBatch(folder) as batch: write(batch.path("a.h5"))``: the files are renamed when
    the block ends without an error, removed otherwise. ``command``: the batch is a run of that
    command (run lock, stale scratch removed, the earlier run replaced as a whole); ``inputs``:
    the files the run reads, never written or removed; ``earlier``: ``folder -> names`` of an
    earlier run written before manifests existed (read from its summary file).
    """

    def __init__(self, folder, command=None, inputs=(), earlier=None):
        self.folder = os.path.abspath(os.fspath(folder))
        self.command = command
        self.inputs = {os.path.realpath(os.fspath(p)) for p in inputs}
        self.earlier = earlier
        self.lock = RunLock(self.folder) if command else None
        self.staging = None
        self.claimed = {}  # file name -> the other command whose run wrote it here
        self._scratch = None

    # ------------------------------------------------------------------ names

    def check(self, names):
        """Refuse, before the work, names the run may not write (its inputs, another run's files)."""
        for name in names:
            self._final(name)

    def _final(self, name):
        if not name or os.path.basename(name) != name or name.startswith("."):
            raise ValueError(f"output name {name!r}: expected a plain, visible file name")
        final = os.path.join(self.folder, name)
        if os.path.realpath(final) in self.inputs:
            raise OutputError(f"{final}: is one of this run's inputs; choose another output folder")
        if name in self.claimed:
            raise OutputError(
                f"{final}: was written by a climseg {self.claimed[name]} run in this folder; choose another "
                f"output folder"
            )
        return final

    def path(self, name):
        """Where to write the file that becomes ``folder/name`` when the batch ends."""
        self._final(name)
        return os.path.join(self.staging, name)

    @property
    def scratch(self):
        """A private folder for work files (workers' partial results), removed with the batch."""
        if self._scratch is None:
            self._scratch = os.path.join(self.staging, SCRATCH)
            os.makedirs(self._scratch, exist_ok=True)
        return self._scratch

    # ------------------------------------------------------------------ life

    def __enter__(self):
        if self.lock is not None:
            self.lock.acquire()
        try:
            makedirs(self.folder)
            if self.command is not None:
                remove_stale_scratch(self.folder)
                self.claimed = _claims(self.folder, self.command)
            try:
                self.staging = tempfile.mkdtemp(prefix=temporary_prefix(STAGING), suffix=".tmp", dir=self.folder)
            except OSError as exc:
                raise output_error(self.folder, exc) from None
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, kind, exc, tb):
        try:
            if exc is None:
                try:
                    self._commit()
                except Exception as err:
                    if is_write_failure(err, self.folder):
                        raise output_error(self._final_of(getattr(err, "filename", None)), err) from None
                    raise
            elif is_write_failure(exc, self.folder):
                raise output_error(self._final_of(getattr(exc, "filename", None)), exc) from None
            return False
        finally:
            self._discard()
            self._release()

    def _final_of(self, name):
        """The final path of a staged one (in an error message), else ``name`` or the folder."""
        if isinstance(name, bytes):
            name = os.fsdecode(name)
        if not name:
            return self.folder
        name = os.path.abspath(name)
        if self.staging and name.startswith(self.staging + os.sep):
            return os.path.join(self.folder, os.path.relpath(name, self.staging).split(os.sep)[0])
        return name

    def _discard(self):
        if self.staging is not None and os.path.isdir(self.staging):
            shutil.rmtree(self.staging, ignore_errors=True)

    def _release(self):
        if self.lock is not None:
            self.lock.release()

    def _commit(self):
        files = sorted(
            (n for n in os.listdir(self.staging) if not n.startswith(".") and os.path.isfile(self.path(n))),
            key=lambda n: (n.endswith(".json"), n),  # summaries last
        )
        remove = []
        if self.command is not None:
            earlier = set(_manifest_files(self.folder, self.command))
            if self.earlier is not None:
                with contextlib.suppress(Exception):  # an unreadable old summary: nothing more to replace
                    earlier.update(self.earlier(self.folder))
            remove = sorted(
                n
                for n in earlier - set(files)
                if n == os.path.basename(n) and os.path.realpath(os.path.join(self.folder, n)) not in self.inputs
            )
        journal = dict(command=self.command, files=files, remove=remove)
        with deferred_signals():  # a signal now would leave half of the files renamed
            tmp = os.path.join(self.staging, JOURNAL + ".tmp")
            with open(tmp, "w") as f:
                json.dump(journal, f)
            os.replace(tmp, os.path.join(self.staging, JOURNAL))
            apply_journal(self.folder, self.staging, journal)


def apply_journal(folder, staging, journal):
    """Rename the staged files of a journal into ``folder``, remove the earlier run's files it
    lists, write the command's manifest and remove the staging folder: a commit, or the rest of
    one that a killed run began (each step can be done again)."""
    for name in journal["files"]:
        src, final = os.path.join(staging, name), os.path.join(folder, name)
        if os.path.isfile(src):
            os.chmod(src, file_mode(final))
            os.replace(src, final)
    for name in journal.get("remove", []):
        final = os.path.join(folder, name)
        if os.path.isfile(final) and not os.path.islink(final):
            os.unlink(final)
    if journal.get("command"):
        write_json(
            os.path.join(folder, manifest_name(journal["command"])),
            dict(command=journal["command"], files=journal["files"]),
        )
    shutil.rmtree(staging, ignore_errors=True)


def _read_journal(staging):
    try:
        with open(os.path.join(staging, JOURNAL)) as f:
            journal = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(journal, dict) or not isinstance(journal.get("files"), list):
        return None
    return journal


def _manifest_files(folder, command):
    try:
        with open(os.path.join(folder, manifest_name(command))) as f:
            files = json.load(f).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in files if isinstance(n, str)]


def _claims(folder, command):
    """{file name: command} of the other commands' runs in ``folder``."""
    claimed = {}
    for entry in sorted(os.listdir(folder)):
        if entry.startswith(MANIFEST_PREFIX) and entry.endswith(".json") and entry != manifest_name(command):
            other = entry[len(MANIFEST_PREFIX) : -len(".json")]
            claimed.update(dict.fromkeys(_manifest_files(folder, other), other))
    return claimed


def process_alive(pid):
    """A process with this id runs on this machine (or one we may not signal: counted as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_scratch(folder):
    """Remove what killed climseg runs left in ``folder``: temporary files and staging folders of
    processes that no longer run (a staging folder whose commit had begun is finished first, so
    the folder holds that run whole), and the work files of earlier climseg versions. Call it
    holding the folder's :class:`~climseg.output.lock.RunLock`. Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        match = TEMPORARY.match(name)
        if match:
            pid = int(match["pid"])
            if pid == os.getpid() or process_alive(pid):
                continue
        elif not any(p.match(name) for p in LEGACY_SCRATCH):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            journal = _read_journal(path) if match and match["name"] == STAGING else None
            if journal is not None:
                apply_journal(folder, path, journal)
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
        removed.append(name)
    return removed


def check_complete(folder, what="folder"):
    """A :class:`~climseg.errors.DataError` when ``folder`` holds the files of a run that was killed
    while renaming them into place (two runs' files mixed, until the next run into the folder
    finishes that commit): for readers of a folder, before they read it."""
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        match = TEMPORARY.match(name)
        if not match or match["name"] != STAGING or process_alive(int(match["pid"])):
            continue
        journal = _read_journal(os.path.join(folder, name))
        if journal is not None:
            command = journal.get("command") or "climseg"
            raise DataError(
                f"{folder}: holds the files of a climseg {command} run that was killed while it renamed them "
                f"into place (two runs mixed); rerun climseg {command} into this {what} to finish it"
            )
