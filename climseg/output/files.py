"""Single files written safely, and the checks made before writing.

* :func:`atomic_path` / :func:`atomic_directory`: everything goes to a
  temporary name in the destination folder and is renamed into place only once
  it is complete, so an interrupted or failed run never leaves a half-written
  file behind and never damages what was already there. Files and folders get
  the modes a plain ``open()``/``mkdir`` would give under the user's umask (a
  file that is replaced keeps its mode). Temporary names are
  ``.NAME.<pid>-<8 random characters>.tmp`` (:func:`temporary_prefix`): hidden, and naming the
  process that writes them, so that a later run can tell a killed writer's
  leftovers from a live one's (:func:`climseg.output.batch.remove_stale_scratch`).
* :func:`check_output_location`: called by every command before its expensive
  work; a path that is a file, lies under a file, or in a folder that cannot be
  written is refused with one line.
* :func:`output_error`: the one place that turns an ``OSError`` of writing
  (disk full, read-only, permission, quota) into an :class:`OutputError`
  naming the path and the problem; the atomic helpers raise it.
* :func:`deferred_signals`: SIGINT and SIGTERM held while a few renames that
  belong together are made.
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


def file_mode(path):
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
        if disk_full(os.path.dirname(os.path.abspath(path))):  # h5py, torch.save: no errno, but the disk is full
            reason = f"no space left on device ({reason})"
    return OutputError(f"{path}: cannot write ({reason})")


def disk_full(folder):
    """Less than 64 KiB left for the user on the file system of ``folder`` (or of the nearest folder above)."""
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
    if disk_full(folder):
        raise OutputError(f"{path}: cannot write into {folder} (no space left on device)")


# ----------------------------------------------------------------------------- atomic writes


def temporary_prefix(name):
    """``.NAME.PID-``: the start of every temporary name climseg makes for ``NAME`` (``tempfile``
    adds eight random characters and the caller ``.tmp``), so that the writing process can be told."""
    return f".{name}.{os.getpid()}-"


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
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(base), suffix=".tmp", dir=folder)
        os.close(fd)
        os.chmod(tmp, file_mode(path))
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_write_failure(exc, folder):
            raise output_error(path, exc) from None
        raise


def is_write_failure(exc, folder):
    """An OSError, or a library's own error (h5py, netCDF4, torch.save, matplotlib) on a full disk."""
    if isinstance(exc, UserError) or not isinstance(exc, Exception):
        return False
    return isinstance(exc, OSError) or disk_full(folder)


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary folder beside ``path``; rename it to ``path`` on success.

    ``path`` must not exist, or be an empty folder. The folder gets 0777 less the
    umask; an ``OSError`` while writing becomes an :class:`OutputError`.
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    makedirs(parent)
    try:
        tmp = tempfile.mkdtemp(
            prefix=temporary_prefix(os.path.basename(os.path.abspath(path))), suffix=".tmp", dir=parent
        )
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
        if is_write_failure(exc, parent):
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
