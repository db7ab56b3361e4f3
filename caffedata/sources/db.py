"""Record sources: Caffe's LMDB and LevelDB databases, read in key order.

LMDB is opened read-only and without a lock file (``lock=False``), so several
processes can read one database and a read-only copy works.  A source is
opened by whoever reads it (a worker thread); ``RecordSource`` objects are
cheap to open and must be closed.  Sources of one database share one handle
per process (see ``_acquire``).

What is checked, and what cannot be.  Before an LMDB is mapped, its meta pages
are read with plain file reads and the file size is checked against them
(``lmdb_state``): a truncated copy is a DatabaseError, not a SIGBUS.  The
pipeline repeats that check (and, for LevelDB, that no table file shrank) at
each epoch start.  What no check can catch: a file truncated *while a batch is
being read* from its memory map (the kernel sends SIGBUS on the missing page),
and, without LMDB's lock file, a writer that commits while an epoch is being
read may reuse pages a reader still reads.  Do not truncate or write a
database during an epoch; between epochs a writer may change values.
"""
import logging
import os
import struct
import threading

from ..errors import DatabaseError
from ..formats.spec import Backend
from .leveldb_tables import Unsupported, open_tables

log = logging.getLogger("caffedata")


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
    """The backend ``path`` is, checked against ``backend`` (None: any); DatabaseError if neither."""
    if not os.path.exists(path):
        raise DatabaseError(f"{path}: no such database -- check data_param.source (relative paths "
                            f"are resolved against the working directory {os.getcwd()})")
    found = detect_backend(path)
    if found is None:
        # `convert --overwrite` swaps folders atomically, but a listing that began in the old
        # folder can see it half removed: look once more, at what the path names now.
        found = detect_backend(path)
    if found is not None and backend is not None and found != backend:
        raise DatabaseError(
            f"{path}: this is a {found.name} database but backend {backend.name} was asked for -- "
            f"set `backend: {found.name}` in data_param (Caffe's default is LEVELDB)")
    if found is None:
        raise DatabaseError(f"{path}: not an LMDB (no data.mdb) nor a LevelDB (no CURRENT file) -- "
                            f"point data_param.source at the database folder")
    return found


class RecordSource:
    """Keys and values of one database in Caffe's cursor order (bytewise key order)."""

    path: str
    backend = None  # "lmdb" | "leveldb"
    counts_cheaply = False  # len() from the database's own statistics, no scan
    # The values a reader returns are views that stay valid, at the same address, until
    # the reader closes (LMDB's map): a batch can then be transformed by address in one
    # nogil pass.  Otherwise they are bytes.
    memory_mapped = False

    def reader(self):
        """A reader for one worker thread: ``get(key)`` and ``close()``."""
        return _PlainReader(self)

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


# -- LMDB file checks -----------------------------------------------------------
# An LMDB file starts with two meta pages (0 and 1); the one with the larger
# txnid is current.  Offsets for 64-bit builds (lmdb/mdb.c: MDB_page header of
# 16 bytes, then MDB_meta: magic, version, address, mapsize, two MDB_db of 48
# bytes -- the free DB's md_pad holds the page size --, last_pg, txnid).
_LMDB_MAGIC = 0xBEEFC0DE
_META_MAGIC, _META_PSIZE, _META_LAST_PG, _META_TXNID = 16, 40, 136, 144


def lmdb_data_file(path):
    """The data file of an LMDB given as a folder or as a bare data.mdb."""
    return os.path.join(path, "data.mdb") if os.path.isdir(path) else path


def lmdb_state(path):
    """(st_dev, st_ino, size, mtime_ns, txnid) of an LMDB, read without mapping it.

    Raises DatabaseError when the file is shorter than its own bookkeeping says
    (a truncated copy): mapping it would die with SIGBUS on the first read of a
    missing page.
    """
    data_file = lmdb_data_file(path)
    try:
        with open(data_file, "rb") as f:
            st = os.fstat(f.fileno())
            head = f.read(_META_TXNID + 8)
            metas = []
            if len(head) == _META_TXNID + 8 and struct.unpack_from("<I", head, _META_MAGIC)[0] == _LMDB_MAGIC:
                psize = struct.unpack_from("<I", head, _META_PSIZE)[0]
                metas.append(head)
                if 512 <= psize <= (1 << 16):  # the second meta page sits one page further
                    f.seek(psize)
                    second = f.read(_META_TXNID + 8)
                    if len(second) == _META_TXNID + 8 and struct.unpack_from("<I", second, _META_MAGIC)[0] == _LMDB_MAGIC:
                        metas.append(second)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot read the LMDB data file ({exc}) -- check that it "
                            f"exists and is readable") from exc
    if not metas:
        raise DatabaseError(f"{data_file}: not an LMDB data file (no LMDB meta page) -- "
                            f"check data_param.source and backend")
    psize = struct.unpack_from("<I", metas[0], _META_PSIZE)[0]
    if not 512 <= psize <= (1 << 16):
        raise DatabaseError(f"{data_file}: corrupt LMDB meta page (page size {psize}) -- "
                            f"rebuild or copy the database again")
    last_pg, txnid = max((struct.unpack_from("<Q", m, _META_TXNID)[0],
                          struct.unpack_from("<Q", m, _META_LAST_PG)[0]) for m in metas)[::-1]
    needed = max(2, last_pg + 1) * psize
    if st.st_size < needed:
        raise DatabaseError(f"{data_file}: truncated LMDB: the file holds {st.st_size} bytes but its "
                            f"meta page says {last_pg + 1} pages of {psize} bytes ({needed} bytes) -- "
                            f"the copy is incomplete; copy the database again")
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, txnid)


# -- shared handles -----------------------------------------------------------------
# py-lmdb allows one environment per file (device, inode) per process, and
# LevelDB one handle per folder per process, so the sources of one database
# share one handle, reference-counted.  LMDB is keyed by the data file's
# (st_dev, st_ino): a database rebuilt at the same path is a new file and gets
# a new environment, never the old, deleted copy.

class _SharedHandle:
    __slots__ = ("key", "handle", "users")

    def __init__(self, key, handle):
        self.key, self.handle, self.users = key, handle, 0


_handles = {}
_handles_lock = threading.Lock()


def _reset_after_fork():
    # A lock held by another thread at fork time stays held forever in the child.
    # The handles themselves stay usable there: LMDB is opened without a lock
    # file (no reader table tied to the parent's pid) and its map is inherited;
    # py-lmdb and LevelDB both refuse to open the same files a second time in
    # what they take for the same process.
    global _handles_lock
    _handles_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _acquire(key, open_handle):
    with _handles_lock:
        entry = _handles.get(key)
        if entry is None:
            entry = _handles[key] = _SharedHandle(key, open_handle())
        entry.users += 1
        return entry


def _release(entry):
    """Drop one user of a shared handle; True when that closed it."""
    # Closed under the lock: until it is closed, py-lmdb refuses to open the file again.
    with _handles_lock:
        entry.users -= 1
        if entry.users > 0:
            return False
        if _handles.get(entry.key) is entry:
            del _handles[entry.key]
        entry.handle.close()
        return True


def _open_lmdb_env(path):
    import lmdb

    try:
        # subdir follows the path: Caffe's DBs are folders, but a bare
        # data.mdb copied on its own is readable too.
        return lmdb.open(path, readonly=True, lock=False, subdir=os.path.isdir(path),
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


def _open_leveldb(path):
    import plyvel

    try:
        return plyvel.DB(path, create_if_missing=False)
    except plyvel.IOError as exc:
        raise DatabaseError(f"{path}: cannot open LevelDB ({exc}) -- LevelDB allows one process "
                            f"at a time; close other readers or convert it to LMDB") from exc
    except plyvel.Error as exc:
        raise DatabaseError(f"{path}: cannot open as LevelDB ({exc})") from exc


class _PlainReader:
    def __init__(self, source):
        self.get = source.get

    def close(self):
        self.get = None


class _LMDBReader:
    """One read transaction (``buffers=True``): values are views into the map."""

    def __init__(self, source):
        try:
            self._txn = source.env.begin(buffers=True)
        except Exception as exc:  # e.g. lmdb.MapResizedError: a writer grew the map past ours
            raise DatabaseError(f"{source.path}: cannot start an LMDB read ({exc}) -- the database was grown "
                                f"by a writer while this process holds it open; create a new iterator") from exc
        self.get = self._txn.get

    def close(self):
        if self._txn is not None:
            self._txn.abort()
            self._txn = self.get = None


class LMDBSource(RecordSource):
    backend = "lmdb"
    counts_cheaply = True
    memory_mapped = True

    def __init__(self, path):
        self.path = path
        self.state = lmdb_state(path)  # raises on a truncated file, before any mapping
        self._entry = _acquire(("lmdb",) + self.state[:2], lambda: _open_lmdb_env(path))
        self.env = self._entry.handle

    def __len__(self):
        return self.env.stat()["entries"]

    def reader(self):
        return _LMDBReader(self)

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
        if self.env is not None:
            self.env = None
            _release(self._entry)


def leveldb_state(path):
    """Sizes of a LevelDB's files by name: table files never change once written."""
    try:
        return {e.name: e.stat().st_size for e in os.scandir(path) if e.is_file()}
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot list the LevelDB folder ({exc})") from exc


class LevelDBSource(RecordSource):
    """A LevelDB, read from its table files directly (``leveldb_tables``) or through plyvel.

    The plyvel handle is always open: it holds LevelDB's lock and, on opening,
    moves the write-ahead log into a table.  ``tables`` is the direct reader,
    or None with ``plyvel_reason`` saying why plyvel reads the records.
    """
    backend = "leveldb"

    def __init__(self, path):
        self.path = path
        self._entry = _acquire(("leveldb", os.path.realpath(path)), lambda: _open_leveldb(path))
        self.db = self._entry.handle
        self.state = leveldb_state(path)
        self._count = None
        self.tables, self.plyvel_reason = None, None
        try:
            self.tables = open_tables(path)
        except Unsupported as exc:
            self.plyvel_reason = str(exc)
            log.info("%s: reading LevelDB through plyvel (slower): %s", path, exc)
        except BaseException:
            self.close()
            raise

    def __len__(self):
        if self.tables is not None:
            return len(self.tables)
        # LevelDB keeps no record count; count keys once.
        if self._count is None:
            self._count = sum(1 for _ in self.db.iterator(include_value=False))
        return self._count

    def reader(self):
        return self.tables.reader() if self.tables is not None else _PlainReader(self)

    def keys(self):
        if self.tables is not None:
            return list(self.tables.keys)
        keys = list(self.db.iterator(include_value=False))
        self._count = len(keys)
        return keys

    def items(self):
        if self.tables is not None:
            reader = self.tables.reader()
            for key in self.tables.keys:
                yield key, reader.get(key)
        else:
            yield from self.db.iterator()

    def get(self, key):
        if self.tables is not None:
            return self.tables.reader().get(key)
        # Not through LevelDB's block cache: an epoch reads each record once, and
        # inserting every (large, one-record) block into the 8 MB cache only to
        # evict it again halved the read rate (W1: 1.4k -> 3k records/s without).
        return self.db.get(key, fill_cache=False)

    def close(self):
        if self.db is not None:
            self.db = None
            if _release(self._entry) and self.tables is not None:
                self.tables.release_maps()  # the index stays cached; its files are unmapped


def check_unchanged(path, backend, state):
    """Raise DatabaseError when a database's files no longer match ``state``.

    Returns the current state.  For LMDB a different state means a writer
    committed (or the file was replaced): the caller must re-read what it cached.
    For LevelDB a table file that shrank was truncated under us.
    """
    if backend == Backend.LMDB:
        return lmdb_state(path)
    now = leveldb_state(path)
    for name, size in state.items():
        if name.endswith((".ldb", ".sst")) and name in now and now[name] < size:
            raise DatabaseError(f"{os.path.join(path, name)}: LevelDB table file truncated from "
                                f"{size} to {now[name]} bytes while open -- restore the database")
    return now


def open_source(path, backend):
    """Open ``path`` with ``backend`` (a Backend, its name, or "auto")."""
    path = os.fspath(path)
    if isinstance(backend, str) and backend.lower() == "auto":
        backend = None  # whatever the path is
    elif isinstance(backend, str):
        try:
            backend = Backend[backend.upper()]
        except KeyError:
            raise DatabaseError(f"unknown backend {backend!r} -- use lmdb or leveldb") from None
    backend = _check_path(path, backend)
    return LMDBSource(path) if backend == Backend.LMDB else LevelDBSource(path)
