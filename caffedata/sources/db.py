"""Record sources: Caffe's LMDB and LevelDB databases, read in key order.

LMDB is opened read-only and without a lock file (``lock=False``), so several
processes can read one database and a read-only copy works.  A source is
opened by whoever reads it (a worker thread), never held across a fork:
``RecordSource`` objects are cheap to open and must be closed.
"""
import os
import threading

from ..errors import DatabaseError
from ..formats.spec import Backend


def detect_backend(path):
    """The backend a path plainly is, from the files inside it, or None."""
    if os.path.isdir(path):
        names = set(os.listdir(path))
        if "data.mdb" in names:
            return Backend.LMDB
        if "CURRENT" in names or any(n.startswith("MANIFEST-") for n in names):
            return Backend.LEVELDB
    elif os.path.isfile(path) and path.endswith(".mdb"):
        return Backend.LMDB
    return None


def _check_path(path, backend):
    if not os.path.exists(path):
        raise DatabaseError(f"{path}: no such database -- check data_param.source (relative paths "
                            f"are resolved against the working directory {os.getcwd()})")
    found = detect_backend(path)
    if found is not None and found != backend:
        raise DatabaseError(
            f"{path}: this is a {found.name} database but backend {backend.name} was asked for -- "
            f"set `backend: {found.name}` in data_param (Caffe's default is LEVELDB)")
    if found is None:
        raise DatabaseError(f"{path}: not an LMDB (no data.mdb) nor a LevelDB (no CURRENT file) -- "
                            f"point data_param.source at the database folder")


class RecordSource:
    """Keys and values of one database in Caffe's cursor order (bytewise key order)."""

    path: str

    def __len__(self):
        raise NotImplementedError

    def keys(self):
        """All keys, in order, as a list of bytes."""
        raise NotImplementedError

    def items(self):
        """Iterate (key, value) in order; values are bytes."""
        raise NotImplementedError

    def get(self, key):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# LMDB allows one environment per file per process (py-lmdb refuses a second
# open), so sources of the same file share one, reference-counted.
_lmdb_envs = {}
_lmdb_lock = threading.Lock()


def _acquire_lmdb_env(path):
    import lmdb

    real = os.path.realpath(path)
    with _lmdb_lock:
        entry = _lmdb_envs.get(real)
        if entry is None:
            try:
                # subdir follows the path: Caffe's DBs are folders, but a bare
                # data.mdb copied on its own is readable too.
                env = lmdb.open(path, readonly=True, lock=False, subdir=os.path.isdir(path),
                                readahead=False, max_readers=1024, map_size=0)
            except lmdb.Error as exc:
                if "already open in this process" in str(exc):
                    raise DatabaseError(
                        f"{path}: this LMDB is already open in this process through py-lmdb "
                        f"(an lmdb.open() handle), and py-lmdb refuses a second environment on "
                        f"the same file in one process -- close that handle (env.close()) "
                        f"before reading the database with caffedata") from exc
                raise DatabaseError(f"{path}: cannot open as LMDB ({exc}) -- check that it is an "
                                    f"LMDB folder holding data.mdb and that it is readable") from exc
            entry = _lmdb_envs[real] = [env, 0]
        entry[1] += 1
        return real, entry[0]


def _release_lmdb_env(real):
    with _lmdb_lock:
        entry = _lmdb_envs[real]
        entry[1] -= 1
        if entry[1] == 0:
            del _lmdb_envs[real]
            entry[0].close()


class LMDBSource(RecordSource):
    def __init__(self, path):
        self.path = path
        self._real, self.env = _acquire_lmdb_env(path)
        self._txn = None

    def __len__(self):
        return self.env.stat()["entries"]

    def txn(self):
        """A read transaction for the calling thread's use (one per source)."""
        if self._txn is None:
            self._txn = self.env.begin(buffers=True)
        return self._txn

    def keys(self):
        with self.env.begin() as txn:
            return list(txn.cursor().iternext(keys=True, values=False))

    def items(self):
        with self.env.begin() as txn:
            yield from txn.cursor().iternext()

    def get(self, key):
        with self.env.begin() as txn:
            return txn.get(key)

    def close(self):
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        if self.env is not None:
            self.env = None
            _release_lmdb_env(self._real)


class LevelDBSource(RecordSource):
    def __init__(self, path):
        import plyvel

        self.path = path
        try:
            self.db = plyvel.DB(path, create_if_missing=False)
        except plyvel.IOError as exc:
            raise DatabaseError(f"{path}: cannot open LevelDB ({exc}) -- LevelDB allows one process "
                                f"at a time; close other readers or convert it to LMDB") from exc
        except plyvel.Error as exc:
            raise DatabaseError(f"{path}: cannot open as LevelDB ({exc})") from exc
        self._count = None

    def __len__(self):
        # LevelDB keeps no record count; count keys once.
        if self._count is None:
            self._count = sum(1 for _ in self.db.iterator(include_value=False))
        return self._count

    def keys(self):
        keys = list(self.db.iterator(include_value=False))
        self._count = len(keys)
        return keys

    def items(self):
        yield from self.db.iterator()

    def get(self, key):
        return self.db.get(key)

    def close(self):
        self.db.close()


def open_source(path, backend):
    """Open ``path`` with ``backend`` (a Backend, its name, or "auto")."""
    path = os.fspath(path)
    if isinstance(backend, str):
        if backend.lower() == "auto":
            _exists = os.path.exists(path)
            backend = detect_backend(path) if _exists else None
            if backend is None:
                _check_path(path, Backend.LMDB)  # raises the missing/unknown error
        else:
            try:
                backend = Backend[backend.upper()]
            except KeyError:
                raise DatabaseError(f"unknown backend {backend!r} -- use lmdb or leveldb") from None
    _check_path(path, backend)
    return LMDBSource(path) if backend == Backend.LMDB else LevelDBSource(path)
