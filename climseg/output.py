"""Safe output: every file climseg writes, and the checks made before writing.

* :func:`atomic_path` / :func:`atomic_directory`: everything goes to a
  temporary name in the destination folder and is renamed into place only once
  it is complete, so an interrupted or failed run never leaves a half-written
  file behind and never damages what was already there. Files and folders get
  the modes a plain ``open()``/``mkdir`` would give under the user's umask (a
  file that is replaced keeps its mode).
* :func:`check_output_location`: called by every command before its expensive
  work; a path that is a file, lies under a file, or in a folder that cannot be
  written is refused with one line.
* :func:`output_error`: the one place that turns an ``OSError`` of writing
  (disk full, read-only, permission, quota) into an :class:`OutputError`
  naming the path and the problem; the atomic helpers raise it.
* :class:`RunLock`: a run folder is written by one process at a time
  (``fcntl.flock`` on ``FOLDER/.climseg-lock``; the kernel drops the lock when
  the holder dies, so a killed run never leaves it stuck).
"""

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
import threading

from climseg.errors import OutputError, UserError

LOCK_NAME = ".climseg-lock"
_UMASK_LOCK = threading.Lock()


# ----------------------------------------------------------------------------- modes


def current_umask():
    """The process's umask (read from /proc where there is one, else set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _file_mode(path):
    """The mode ``open(path, "w")`` would leave: an existing file's own, else 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


# ----------------------------------------------------------------------------- errors

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "is a folder",
    errno.EFBIG: "file too large",
    errno.EIO: "input/output error",
}


def output_error(path, exc):
    """An :class:`OutputError` for ``exc`` (an OSError or a library's write failure) while
    writing ``path``: one line, the path first, then the problem."""
    if isinstance(exc, OutputError):
        return exc
    code = getattr(exc, "errno", None)
    if code in _REASONS:
        reason = _REASONS[code]
    elif getattr(exc, "strerror", None):
        reason = exc.strerror[0].lower() + exc.strerror[1:]
    else:
        text = str(exc).strip().splitlines()
        reason = text[0] if text else type(exc).__name__
        if _disk_full(os.path.dirname(os.path.abspath(path))):  # h5py, torch.save: no errno, but the disk is full
            reason = f"no space left on device ({reason})"
    return OutputError(f"{path}: cannot write ({reason})")


def _disk_full(folder):
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder.rstrip(os.sep)) if folder != os.sep else ""
    try:
        st = os.statvfs(folder or ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 16)


# ----------------------------------------------------------------------------- checks


def check_output_location(path, kind="folder", must_be_new=False):
    """Refuse, with one line, an output location that cannot be written: call it before
    the expensive work. ``kind`` is ``"folder"`` (the path is, or will be, a folder)
    or ``"file"``. ``must_be_new``: a folder must not exist or be empty. Returns the
    absolute path. Nothing is created."""
    if path is None or str(path).strip() == "":
        raise OutputError("output path is empty")
    shown = os.fspath(path)
    path = os.path.abspath(shown)
    if os.path.lexists(path):
        if kind == "folder" and not os.path.isdir(path):
            raise OutputError(f"{shown}: is a file, not a folder")
        if kind == "file" and os.path.isdir(path):
            raise OutputError(f"{shown}: is a folder, not a file")
        if kind == "folder" and must_be_new and os.listdir(path):
            raise OutputError(f"{shown}: already exists and is not an empty folder")
        folder = path if kind == "folder" else os.path.dirname(path)
    else:
        folder = os.path.dirname(path)
    # the nearest existing folder above must be a folder we may write into
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise OutputError(f"{shown}: {folder} is a file, not a folder")
    _probe(shown, folder)
    return path


def _probe(path, folder):
    """Create and remove a file in ``folder``: read-only mounts, permissions (also for
    root, who ignores permission bits but not a read-only mount) and full disks show here."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write into {folder} (permission denied)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".climseg-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write into {folder} ({_REASONS.get(exc.errno, exc.strerror)})") from None
    if _disk_full(folder):
        raise OutputError(f"{path}: cannot write into {folder} (no space left on device)")


# ----------------------------------------------------------------------------- atomic writes


def makedirs(folder):
    """``os.makedirs(folder, exist_ok=True)``, a failure as one :class:`OutputError` line."""
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{folder}: is a file, not a folder") from None
    except OSError as exc:
        raise output_error(folder, exc) from None
    return folder


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    The file gets ``path``'s mode if it exists, else 0666 less the umask. An
    ``OSError`` while writing becomes an :class:`OutputError` naming ``path``;
    whatever fails, the temporary file is removed.
    """
    folder = os.path.dirname(os.path.abspath(path)) or "."
    makedirs(folder)
    base = os.path.basename(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.chmod(tmp, _file_mode(path))
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _is_write_failure(exc, folder):
            raise output_error(path, exc) from None
        raise


def _is_write_failure(exc, folder):
    """An OSError, or a library's own error (h5py, netCDF4, torch.save, matplotlib) on a full disk."""
    if isinstance(exc, UserError) or not isinstance(exc, Exception):
        return False
    return isinstance(exc, OSError) or _disk_full(folder)


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary folder beside ``path``; rename it to ``path`` on success.

    ``path`` must not exist, or be an empty folder. The folder gets 0777 less the
    umask; an ``OSError`` while writing becomes an :class:`OutputError`.
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    makedirs(parent)
    try:
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(path))}.", suffix=".tmp", dir=parent)
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        yield tmp
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_failure(exc, parent):
            raise output_error(path, exc) from None
        raise


@contextlib.contextmanager
def deferred_signals(signals=(2, 15)):
    """Hold SIGINT and SIGTERM until the block is done, then act on them as usual: for a
    few renames that must happen together. Outside the main thread it does nothing."""
    import signal

    received = []
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, lambda signum, frame: received.append(signum))
    except ValueError:  # not the main thread
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in received[:1]:
            signal.raise_signal(sig)


class OutputBatch:
    """Several files of one folder written under temporary names and renamed into
    place together at the end, so a failure part-way leaves the folder as it was
    (``predict``: masks, maps and the summary always belong to one run).

    ``with OutputBatch(folder) as batch: write(batch.path("a.h5"))``; the files
    are renamed when the block ends without an error, removed otherwise.
    """

    def __init__(self, folder):
        self.folder = os.path.abspath(os.fspath(folder))
        self.files = {}  # final path -> temporary path

    def _discard(self):
        for tmp in self.files.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.files = {}

    def path(self, name):
        """A temporary file (mode as ``open()`` would give) that becomes ``folder/name`` at the end."""
        final = os.path.join(self.folder, name)
        if final in self.files:
            return self.files[final]
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
            os.close(fd)
            os.chmod(tmp, _file_mode(final))
        except OSError as exc:
            raise output_error(final, exc) from None
        self.files[final] = tmp
        return tmp

    def __enter__(self):
        makedirs(self.folder)
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            try:
                with deferred_signals():  # a signal now would leave half of the files renamed
                    for final in sorted(self.files, key=lambda p: p.endswith(".json")):  # summaries last
                        os.replace(self.files.pop(final), final)
                return False
            except BaseException as err:
                exc = err
                if not isinstance(err, OSError):
                    self._discard()
                    raise
        final_of = {tmp: final for final, tmp in self.files.items()}
        self._discard()
        if _is_write_failure(exc, self.folder):
            name = getattr(exc, "filename", None)
            raise output_error(final_of.get(name, name) or self.folder, exc) from None
        return False


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")


def append_line(path, line):
    """Append one line (a JSON row) to ``path``, created with the umask's mode; a
    failure is an :class:`OutputError`. The line is written with one ``write`` call."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, (line.rstrip("\n") + "\n").encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from None


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# ----------------------------------------------------------------------------- the run lock


class RunLock:
    """Exclusive use of a run folder by one process, for the life of a run.

    ``RunLock(folder).acquire()`` creates the folder if needed and takes an
    ``fcntl.flock`` on ``folder/.climseg-lock``; a second writer gets an
    :class:`OutputError` at once. The kernel releases the lock when the process
    ends, however it ends. ``release()`` (or leaving a ``with`` block) drops it
    and removes the folder again if acquiring created it and nothing else was
    written there.
    """

    def __init__(self, folder):
        self.folder = os.path.abspath(os.fspath(folder))
        self.fd = None
        self.created = False

    @property
    def held(self):
        return self.fd is not None

    def acquire(self):
        import fcntl

        if self.fd is not None:
            return self
        self.created = not os.path.isdir(self.folder)
        makedirs(self.folder)
        path = os.path.join(self.folder, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise output_error(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(
                    f"{self.folder}: another climseg run is writing into this folder"
                    f"{f' (process {holder})' if holder else ''}; wait for it or choose another "
                    f"output folder"
                ) from None
            raise output_error(path, exc) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if self.created:
            with contextlib.suppress(OSError):
                if os.listdir(self.folder) == [LOCK_NAME]:
                    os.unlink(os.path.join(self.folder, LOCK_NAME))
                    os.rmdir(self.folder)
        os.close(fd)  # closing drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
