"""The run lock: one climseg process writes into a folder at a time, and nobody reads a folder
while it is being rewritten.

:class:`RunLock` takes ``fcntl.flock`` on a lock file in the folder (``FOLDER/.climseg-lock``, or
a name of the caller's choice for a single output file): exclusive for a writer, shared for a
reader (``shared=True``). Both are asked for without waiting: a second writer, or a reader of a
folder being written, gets one line at once. The kernel drops the lock when its holder ends, in
whatever way (even ``kill -9``), so a killed run never leaves a folder locked.
"""

import contextlib
import errno
import os

from climseg.errors import OutputError
from climseg.output.files import makedirs, output_error

LOCK_NAME = ".climseg-lock"
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


class RunLock:
    """Exclusive (or, with ``shared``, shared) use of a folder by one process, for the life of a run.

    ``RunLock(folder).acquire()`` creates the folder if needed and takes an exclusive
    ``fcntl.flock`` on ``folder/.climseg-lock`` (``name``: another lock file, e.g.
    ``.OUT.pt.climseg-lock`` for a single output file, removed again on release); a second
    writer, or a writer while a reader holds the folder, gets an :class:`OutputError` at once.
    ``shared=True`` is a reader's lock: it creates nothing, is held by any number of readers
    together, and is refused while a writer holds the folder (a folder that was never locked
    needs none). The kernel releases the lock when the process ends, however it ends.
    ``release()`` (or leaving a ``with`` block) drops it and removes the folder again if
    acquiring created it and nothing else was written there.
    """

    def __init__(self, folder, name=LOCK_NAME, shared=False):
        self.folder = os.path.abspath(os.fspath(folder))
        self.name = name
        self.shared = shared
        self.fd = None
        self.created = False

    @property
    def held(self):
        return self.fd is not None

    @property
    def path(self):
        return os.path.join(self.folder, self.name)

    def acquire(self):
        if self.fd is not None:
            return self
        if self.shared:
            return self._acquire_shared()
        self.created = not os.path.isdir(self.folder)
        makedirs(self.folder)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise output_error(self.path, exc) from None
            try:
                _lock(fd, exclusive=True)
            except OSError as exc:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                readers = exc.errno in _BUSY and _only_readers(fd)
                os.close(fd)
                if exc.errno not in _BUSY:
                    raise output_error(self.path, exc) from None
                if readers:
                    raise OutputError(
                        f"{self.folder}: another climseg run is reading this folder; wait for it or choose "
                        f"another output folder"
                    ) from None
                raise OutputError(
                    f"{self.folder}: another climseg run is writing into this folder"
                    f"{f' (process {holder})' if holder else ''}; wait for it or choose another "
                    f"output folder"
                ) from None
            if _same_file(fd, self.path):  # not a lock file that its last holder removed meanwhile
                break
            os.close(fd)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def _acquire_shared(self):
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return self  # never locked (or not ours to open): no writer can be holding it
        try:
            _lock(fd, exclusive=False)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in _BUSY:
                return self
            raise OutputError(
                f"{self.folder}: a climseg run is writing into this folder"
                f"{f' (process {holder})' if holder else ''}; wait for it to finish"
            ) from None
        self.fd = fd
        return self

    def release(self):
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        if not self.shared:
            with contextlib.suppress(OSError):
                if self.name != LOCK_NAME:  # a single file's lock: not left beside the file
                    os.unlink(self.path)
                elif self.created and os.listdir(self.folder) == [LOCK_NAME]:
                    os.unlink(self.path)
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


def _lock(fd, exclusive):
    import fcntl

    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)


def _only_readers(fd):
    """The lock ``fd`` could not take exclusively is held by readers only (a shared lock is granted)."""
    import fcntl

    try:
        _lock(fd, exclusive=False)
    except OSError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _same_file(fd, path):
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
