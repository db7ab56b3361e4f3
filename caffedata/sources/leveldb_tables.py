"""A LevelDB's records read straight from its table files, where that is exactly what LevelDB reads.

Why: through plyvel, a W1 record (a 196 KB raw Datum) costs about 4x what
the whole LMDB path costs.  plyvel's wheel bundles a Snappy built without
inlining, LevelDB allocates and faults in a fresh buffer per block, and plyvel
copies every value into a new ``bytes`` (issue 12).  Here a value stored raw
is a view into the memory-mapped table file, with no copy, as LMDB's are, and
a Snappy block is decompressed by ``_leveldb.snappy_decompress_into`` into a
reader's reused buffer (``TableReader``).

When: ``LevelDBSource`` first opens the database with plyvel.  That takes
LevelDB's lock and moves any write-ahead log into a table, as every LevelDB
open does.  Then it asks ``open_tables`` for the live tables.
``open_tables`` answers only where one entry of one table holds each key, so
no merge is needed:
- key ranges of the tables are disjoint;
- there are no deletion markers and no repeated keys;
- the log is empty and the comparator is bytewise;
- no compaction is due, so LevelDB will not rewrite the files under us;
- every block is stored raw or with Snappy.
A database written once, as Caffe's ``convert_imageset`` and
``caffedata convert`` write them, is such a database.  Anything else raises
``Unsupported`` with the reason, and plyvel reads the records as before.

The formats are LevelDB 1.22's: ``doc/table_format.md``,
``doc/log_format.md`` and ``db/version_edit.cc``.
"""
import bisect
import mmap
import os
import re
import struct
import threading
from collections import OrderedDict

import numpy as np

from ..errors import DatabaseError
from . import _leveldb

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48          # two block handles, zero padding to 40 bytes, the magic
BLOCK_TRAILER = 5         # compression type, then a masked CRC32C
RAW, SNAPPY = 0, 1
TYPE_DELETION, TYPE_VALUE = 0, 1  # the low byte of an internal key's 8-byte tag
LOG_BLOCK, LOG_HEADER = 32768, 7
LOG_FULL, LOG_FIRST, LOG_MIDDLE, LOG_LAST = 1, 2, 3, 4
BYTEWISE = b"leveldb.BytewiseComparator"
# When LevelDB compacts (db/version_set.cc, VersionSet::Finalize): 4 files at
# level 0, or more than 10^L MB at level L = 1..5.
L0_COMPACTION_TRIGGER = 4
LEVEL1_MAX_BYTES = 10 * 1048576
COMPACTED_LEVELS = 6
# Table files kept mapped at once; a mapping whose values are still in use
# lives on until they are dropped.
MAX_MAPPED_TABLES = 64


class Unsupported(Exception):
    """These tables cannot be read exactly without LevelDB's merge; plyvel reads them instead."""


# -- the live version: CURRENT -> MANIFEST (a log of VersionEdits) -------------------------

def _varint(buf, pos, what):
    result = shift = 0
    while pos < len(buf) and shift <= 63:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise Unsupported(f"malformed varint in {what}")


def _length_prefixed(buf, pos, what):
    n, pos = _varint(buf, pos, what)
    if pos + n > len(buf):
        raise Unsupported(f"truncated field in {what}")
    return bytes(buf[pos:pos + n]), pos + n


def log_records(data):
    """The records of a LevelDB log file; a torn last record ends it, as LevelDB's reader does."""
    pos, pending = 0, None
    while pos + LOG_HEADER <= len(data):
        room = LOG_BLOCK - pos % LOG_BLOCK
        if room < LOG_HEADER:  # a block's zero-filled trailer
            pos += room
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        start = pos + LOG_HEADER
        if kind == 0 and length == 0:  # preallocated zeros: the rest of the block is empty
            pos += room
            continue
        if length > room - LOG_HEADER or start + length > len(data):
            return
        piece = bytes(data[start:start + length])
        pos = start + length
        if kind == LOG_FULL:
            pending = None
            yield piece
        elif kind == LOG_FIRST:
            pending = [piece]
        elif kind == LOG_MIDDLE and pending is not None:
            pending.append(piece)
        elif kind == LOG_LAST and pending is not None:
            pending.append(piece)
            yield b"".join(pending)
            pending = None
        else:
            raise Unsupported(f"unexpected log record type {kind} in the MANIFEST")


class TableFile:
    __slots__ = ("level", "number", "size", "smallest", "largest", "path", "identity")

    def __init__(self, level, number, size, smallest, largest):
        self.level, self.number, self.size = level, number, size
        # user keys: an internal key is the user key, then an 8-byte tag
        self.smallest, self.largest = smallest[:-8], largest[:-8]
        self.path = None
        self.identity = None  # (inode, size, mtime) when indexed: checked at every mapping


def live_tables(path):
    """(tables, log_numbers) of the version that the MANIFEST named by CURRENT ends with."""
    try:
        with open(os.path.join(path, "CURRENT"), "rb") as f:
            manifest = f.read().decode("ascii", "replace").strip()
        with open(os.path.join(path, manifest), "rb") as f:
            data = f.read()
    except OSError as exc:
        raise Unsupported(f"cannot read CURRENT/MANIFEST ({exc})") from exc
    files, logs, comparator = {}, {}, BYTEWISE
    for record in log_records(data):
        pos = 0
        while pos < len(record):
            tag, pos = _varint(record, pos, "the MANIFEST")
            if tag == 1:
                comparator, pos = _length_prefixed(record, pos, "the MANIFEST")
            elif tag in (2, 9):  # log number, previous log number
                logs[tag], pos = _varint(record, pos, "the MANIFEST")
            elif tag in (3, 4):  # next file number, last sequence
                _, pos = _varint(record, pos, "the MANIFEST")
            elif tag == 5:  # compaction pointer: level, internal key
                _, pos = _varint(record, pos, "the MANIFEST")
                _, pos = _length_prefixed(record, pos, "the MANIFEST")
            elif tag == 6:  # deleted file: level, number
                level, pos = _varint(record, pos, "the MANIFEST")
                number, pos = _varint(record, pos, "the MANIFEST")
                files.pop((level, number), None)
            elif tag == 7:  # new file: level, number, size, smallest, largest
                level, pos = _varint(record, pos, "the MANIFEST")
                number, pos = _varint(record, pos, "the MANIFEST")
                size, pos = _varint(record, pos, "the MANIFEST")
                smallest, pos = _length_prefixed(record, pos, "the MANIFEST")
                largest, pos = _length_prefixed(record, pos, "the MANIFEST")
                files[(level, number)] = TableFile(level, number, size, smallest, largest)
            else:
                raise Unsupported(f"unknown MANIFEST field {tag}")
    if comparator != BYTEWISE:
        raise Unsupported(f"comparator {comparator!r}, not LevelDB's bytewise one")
    return list(files.values()), logs


def _check_readable_without_merge(path, tables, logs):
    """Raise Unsupported unless every key lives in one table and no compaction is due."""
    for name in os.listdir(path):
        m = re.fullmatch(r"(\d+)\.log", name)
        if m and (int(m.group(1)) >= logs.get(2, 0) or int(m.group(1)) == logs.get(9)):
            if os.path.getsize(os.path.join(path, name)) > 0:
                raise Unsupported(f"{name} holds writes not yet in a table")
    level_bytes = [0] * COMPACTED_LEVELS
    level0 = 0
    for t in tables:
        if t.level == 0:
            level0 += 1
        elif t.level < COMPACTED_LEVELS:
            level_bytes[t.level] += t.size
    if level0 >= L0_COMPACTION_TRIGGER or any(
            level_bytes[lv] >= LEVEL1_MAX_BYTES * 10 ** (lv - 1) for lv in range(1, COMPACTED_LEVELS)):
        raise Unsupported("LevelDB has a compaction due, which rewrites table files")
    tables.sort(key=lambda t: t.smallest)
    for a, b in zip(tables, tables[1:]):
        if b.smallest <= a.largest:
            raise Unsupported(f"tables {a.number} and {b.number} overlap in key range "
                              f"(keys written more than once)")
    for t in tables:
        for suffix in (".ldb", ".sst"):
            candidate = os.path.join(path, f"{t.number:06d}{suffix}")
            if os.path.exists(candidate):
                t.path = candidate
                break
        else:
            raise Unsupported(f"table file {t.number:06d}.ldb is missing")


# -- tables ------------------------------------------------------------------------------

def _block_handle(buf, pos, where):
    offset, pos = _varint(buf, pos, where)
    size, pos = _varint(buf, pos, where)
    return offset, size, pos


class LevelDBTables:
    """Every record of a LevelDB, indexed by key: which table, which block, where in it.

    Built by ``open_tables``; read through ``reader()`` objects, one per
    thread, which return values as memoryviews.  Shared by threads (and
    inherited by a fork): the index is read-only once built.
    """

    def __init__(self, path, tables, signature=None):
        self.path = path
        self.tables = tables
        self.signature = signature
        # table index -> mmap, least recently used first.  No lock: each step is
        # one dict operation (atomic under the GIL), and at worst two threads
        # map the same file at once and one mapping wins.
        self._maps = OrderedDict()
        keys, table, block_off, block_size, kind, value_off, value_len = [], [], [], [], [], [], []
        previous = None
        for ti, t in enumerate(tables):
            for boff, bsize, contents, bkind in self._data_blocks(ti):
                try:
                    bkeys, voff, vlen = _leveldb.block_entries(contents)
                except ValueError as exc:
                    raise self.corrupt(ti, boff, str(exc)) from None
                for k in bkeys:
                    tag = int.from_bytes(k[-8:], "little") if len(k) >= 8 else -1
                    user = k[:-8]
                    if tag & 0xFF == TYPE_DELETION:
                        raise Unsupported("the tables hold deletion markers")
                    if tag < 0 or tag & 0xFF != TYPE_VALUE:
                        raise self.corrupt(ti, boff, f"key {k!r} has no valid internal-key tag")
                    if previous is not None and user <= previous:
                        if user == previous:
                            raise Unsupported(f"key {user!r} is stored more than once")
                        raise self.corrupt(ti, boff, f"key {user!r} is out of order")
                    keys.append(user)
                    previous = user
                n = len(bkeys)
                table += [ti] * n
                block_off += [boff] * n
                block_size += [bsize] * n
                kind += [bkind] * n
                value_off.append(voff)
                value_len.append(vlen)
        self.keys = keys  # in bytewise order: found by bisection, no second index
        self._table = np.array(table, dtype=np.int32)
        self._block_off = np.array(block_off, dtype=np.int64)
        self._block_size = np.array(block_size, dtype=np.int64)
        self._kind = np.array(kind, dtype=np.uint8)
        self._value_off = np.concatenate(value_off) if value_off else np.zeros(0, np.int64)
        self._value_len = np.concatenate(value_len) if value_len else np.zeros(0, np.int64)
        self.release_maps()  # the index pass mapped every table; reads map them again as needed

    def __len__(self):
        return len(self.keys)

    def corrupt(self, ti, offset, what):
        return DatabaseError(f"{self.tables[ti].path}: corrupt LevelDB block at byte {offset}: {what} -- "
                             f"the database is damaged; rebuild it (or repair it with LevelDB's RepairDB)")

    def map_table(self, ti):
        m = self._maps.get(ti)
        if m is not None:
            try:
                self._maps.move_to_end(ti)
            except KeyError:  # evicted by another thread meanwhile; `m` stays valid
                pass
            return m
        table = self.tables[ti]
        changed = (f"{table.path}: this LevelDB table changed since the database was indexed -- "
                   f"the database was rebuilt or compacted while open; create a new iterator")
        try:
            with open(table.path, "rb") as f:
                if table.identity is not None and _file_identity(os.fstat(f.fileno())) != table.identity:
                    raise DatabaseError(changed)
                m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # ValueError: an empty file cannot be mapped
            raise DatabaseError(f"{changed} ({exc})") from exc
        m = self._maps.setdefault(ti, m)
        while len(self._maps) > MAX_MAPPED_TABLES:
            # Dropped, not closed: values still viewing a mapping keep it alive.
            try:
                self._maps.popitem(last=False)
            except KeyError:
                break
        return m

    def release_maps(self):
        self._maps.clear()

    def read_block(self, ti, offset, size, buffer_for=bytearray):
        """(contents, kind) of one block: a view of the map when stored raw, else
        decompressed into ``buffer_for(length)`` (a writable buffer at least that long)."""
        m = self.map_table(ti)
        if offset + size + BLOCK_TRAILER > len(m):
            raise self.corrupt(ti, offset, f"the block's {size} bytes run past the file's {len(m)}")
        kind = m[offset + size]
        view = memoryview(m)[offset:offset + size]
        if kind == RAW:
            return view, kind
        if kind == SNAPPY:
            try:
                out = buffer_for(_leveldb.snappy_uncompressed_length(view))
                return memoryview(out)[:_leveldb.snappy_decompress_into(view, out)], kind
            except ValueError as exc:
                raise self.corrupt(ti, offset, f"Snappy: {exc}") from None
        raise Unsupported(f"block compression type {kind} (only raw and Snappy are read directly)")

    def _data_blocks(self, ti):
        """(offset, size, contents, kind) of each data block of table ``ti``, in order."""
        m = self.map_table(ti)
        if len(m) < FOOTER_SIZE or struct.unpack_from("<Q", m, len(m) - 8)[0] != TABLE_MAGIC:
            raise self.corrupt(ti, max(0, len(m) - FOOTER_SIZE), "no table footer (bad magic number)")
        footer = bytes(m[len(m) - FOOTER_SIZE:])
        _, _, pos = _block_handle(footer, 0, "the table footer")  # the metaindex: filters only
        index_off, index_size, _ = _block_handle(footer, pos, "the table footer")
        index, _ = self.read_block(ti, index_off, index_size)
        try:
            _, hoff, hlen = _leveldb.block_entries(index)
        except ValueError as exc:
            raise self.corrupt(ti, index_off, f"index block: {exc}") from None
        scratch = bytearray()

        def scratch_buffer(size):  # each block is parsed before the next is read
            nonlocal scratch
            if len(scratch) < size:
                scratch = bytearray(size)
            return scratch

        for o, n in zip(hoff.tolist(), hlen.tolist()):
            boff, bsize, _ = _block_handle(bytes(index[o:o + n]), 0, "an index entry")
            contents, kind = self.read_block(ti, boff, bsize, scratch_buffer)
            yield boff, bsize, contents, kind

    def stored_blocks(self, kind):
        """(table index, offset, size) of each distinct data block stored as ``kind`` (RAW or SNAPPY)."""
        keys = np.unique(np.stack([self._table, self._block_off, self._block_size])[:, self._kind == kind], axis=1)
        return [(int(t), int(o), int(n)) for t, o, n in keys.T]

    def reader(self):
        return TableReader(self)

    def position(self, key):
        """The record number of ``key``, or None."""
        key = bytes(key)
        r = bisect.bisect_left(self.keys, key)
        return r if r < len(self.keys) and self.keys[r] == key else None

    def locate(self, r):
        """(table, block offset, block size, stored raw, value offset, value length) of record ``r``."""
        return (int(self._table[r]), int(self._block_off[r]), int(self._block_size[r]),
                self._kind[r] == RAW, int(self._value_off[r]), int(self._value_len[r]))


class TableReader:
    """One thread's reader: ``get(key)`` -> the value as a memoryview, or None.

    A value stored raw views the table's map.  A Snappy block is decompressed
    into one of this reader's buffers, reused once no value views it any more
    (fresh 200 KB buffers each cost 50 page faults), and the last block is
    kept, so records read in key order decompress each block once.
    """

    MAX_BUFFERS = 1024  # more than any batch holds at once

    def __init__(self, tables):
        self._tables = tables
        self._last_block = (None, None)  # ((table, offset), contents)
        self._buffers = []

    def _free_buffer(self, size):
        for buf in self._buffers:
            if len(buf) < size:
                continue
            try:  # a bytearray refuses to resize while a view of it (a value) exists
                buf.append(0)
            except BufferError:
                continue
            del buf[-1]
            return buf
        buf = bytearray(size)
        self._buffers.append(buf)
        if len(self._buffers) > self.MAX_BUFFERS:
            del self._buffers[0]  # dropped; values still viewing it keep it alive
        return buf

    def get(self, key):
        tables = self._tables
        r = tables.position(key)
        if r is None:
            return None
        ti, boff, bsize, raw, voff, vlen = tables.locate(r)
        if raw:
            return memoryview(tables.map_table(ti))[boff + voff:boff + voff + vlen]
        where, contents = self._last_block
        if where != (ti, boff):
            contents = None  # with the line below, the last block's buffer may serve this one
            self._last_block = (None, None)
            contents, _ = tables.read_block(ti, boff, bsize, self._free_buffer)
            self._last_block = ((ti, boff), contents)
        if voff + vlen > len(contents):
            raise tables.corrupt(ti, boff, "a value runs past its decompressed block")
        return contents[voff:voff + vlen]

    def close(self):
        self._last_block = (None, None)
        self._buffers = []


# The index of the last databases opened, reused while their table files are
# the same files (number, size, inode, mtime): an iterator opens its database
# once to plan the epoch and again in its workers, and the index pass reads
# every block.
_CACHED_DATABASES = 2
_cache = OrderedDict()  # realpath -> LevelDBTables
_cache_lock = threading.Lock()


def _reset_after_fork():
    # a lock held by another thread at fork time would stay held in the child
    global _cache_lock
    _cache_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _file_identity(st):
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def open_tables(path):
    """The records of the LevelDB at ``path`` as a ``LevelDBTables``; raises Unsupported with the reason.

    Call it with the database open in plyvel, so that its log is in the tables
    and nobody else writes.
    """
    path = os.path.realpath(path)  # the tables are found again later, whatever the working directory
    tables, logs = live_tables(path)
    _check_readable_without_merge(path, tables, logs)
    try:
        for t in tables:
            t.identity = _file_identity(os.stat(t.path))
    except OSError as exc:
        raise Unsupported(f"a table file vanished while being listed ({exc})") from exc
    # Not the MANIFEST's: every LevelDB open appends to it.  Table files are never rewritten.
    signature = tuple((t.number,) + t.identity for t in tables)
    with _cache_lock:  # one index pass per database, even when threads open it together
        cached = _cache.get(path)
        if cached is not None and cached.signature == signature:
            _cache.move_to_end(path)
            return cached
        built = LevelDBTables(path, tables, signature)
        _cache[path] = built
        while len(_cache) > _CACHED_DATABASES:
            _cache.popitem(last=False)[1].release_maps()
        return built
