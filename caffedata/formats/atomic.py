"""Write a file so that readers find the old one or the new one, never half of either.

The mean files, .caffemodel weights and .solverstate snapshots all go through
``atomic_path``: the writer fills a temporary file beside the target, which is
synced and renamed over it; on any failure the temporary file is removed.
"""
import contextlib
import os
import tempfile

from ..errors import DatabaseError


def _umask():
    """The process umask, read without changing it (os.umask would, for a moment, in every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


@contextlib.contextmanager
def atomic_path(path, what="file"):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = os.fspath(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                   dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot write the {what} ({exc.strerror}) -- check that the "
                            f"directory exists and is writable") from exc
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
