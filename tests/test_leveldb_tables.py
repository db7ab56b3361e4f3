"""LevelDB's table files read directly (sources/leveldb_tables.py, sources/_leveldb.pyx).

The independent expectation is LevelDB itself: every database here is
written by plyvel (LevelDB 1.22 with its own Snappy), and what the direct
reader returns must equal what plyvel reads, key for key and byte for byte.
The Snappy decoder is also checked against streams built by hand in this
file, element by element, from the format description.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import plyvel
import pytest

import caffedata
from caffedata.errors import DatabaseError
from caffedata.sources import _leveldb, leveldb_tables
from caffedata.sources.db import open_source
from caffedata.sources.leveldb_tables import Unsupported, open_tables

from conftest import data_prototxt


def _image_like(i, size):
    """Bytes that Snappy compresses the way it compresses photos: runs, repeats, noise."""
    rng = np.random.default_rng(i)
    row = np.repeat(rng.integers(0, 256, size // 64 + 1, dtype=np.uint8), 64)[:size]
    noise = rng.integers(0, 4, size, dtype=np.uint8) * (rng.random(size) < 0.2)
    return (row + noise).astype(np.uint8).tobytes()


def _write(path, items, one_batch=True, **options):
    db = plyvel.DB(str(path), create_if_missing=True, **options)
    if one_batch:
        with db.write_batch() as wb:
            for k, v in items:
                wb.put(k, v)
    else:  # record by record: memtables flushed, tables compacted while writing
        for k, v in items:
            db.put(k, v)
        # finish the compactions now: one still due when a reader opens the database
        # sends that reader to plyvel (test_a_compaction_due_is_read_through_plyvel)
        db.compact_range()
    db.close()
    return str(path)


MANY_TABLES = {"one_batch": False, "write_buffer_size": 64 << 10, "max_file_size": 64 << 10}


def _plyvel_items(path):
    db = plyvel.DB(str(path))
    try:
        return list(db.iterator())
    finally:
        db.close()


def _direct_items(path):
    source = open_source(str(path), "leveldb")
    try:
        assert source.tables is not None, source.plyvel_reason
        reader = source.reader()
        return [(k, bytes(reader.get(k))) for k in source.keys()]
    finally:
        source.close()


@pytest.mark.parametrize("options", [
    {},                                                  # LevelDB's defaults: 4 KB blocks, Snappy
    {"block_size": 65536, "write_buffer_size": 256 << 20},  # what Caffe's convert_imageset opens
    {"compression": None},
    MANY_TABLES,
], ids=["defaults", "caffe", "raw", "many-tables"])
@pytest.mark.parametrize("value_size", [40, 3000, 70000])
def test_direct_reads_equal_plyvel(tmp_path, options, value_size):
    items = [(b"%08d_img%d.jpg" % (i, i), _image_like(i, value_size + i % 7)) for i in range(60)]
    path = _write(tmp_path / "db", items, **options)
    expected = _plyvel_items(path)
    assert expected == sorted(items)
    assert _direct_items(path) == expected


def _partly_compressed(path):
    """40 values of 70 KB, each its own block: 20 image-like (Snappy pays), 20 incompressible."""
    items = [(b"%04d" % i, _image_like(i, 70000)) for i in range(20)]
    items += [(b"r%04d" % i, np.random.default_rng(i).bytes(70000)) for i in range(20)]  # incompressible
    return items, _write(path, items)


def test_snappy_blocks_and_raw_blocks_both_occur(tmp_path):
    """The W1-like data above is stored partly compressed: both decoder paths are exercised."""
    items, path = _partly_compressed(tmp_path / "db")
    expected = _plyvel_items(path)
    db = plyvel.DB(path)
    tables = open_tables(path)
    kinds = {tables.locate(r)[3] for r in range(len(tables))}
    db.close()
    assert kinds == {True, False}
    assert _direct_items(path) == expected


def test_stored_blocks_lists_each_block_once_by_kind(tmp_path):
    """What benchmarks/snappy_decoders.py times: every compressed block, once, and nothing else."""
    items, path = _partly_compressed(tmp_path / "db")
    assert _plyvel_items(path) == sorted(items)  # (LevelDB's own open moves the log into a table)
    tables = open_tables(path)
    raw_records = sum(tables.locate(r)[3] for r in range(len(tables)))
    compressed = tables.stored_blocks(leveldb_tables.SNAPPY)
    assert 0 < len(compressed) == len(tables) - raw_records  # one value a block
    assert len(tables.stored_blocks(leveldb_tables.RAW)) == raw_records
    values = {v for _, v in items}
    for ti, offset, size in compressed:  # each a whole block holding one of the values
        block = _leveldb.snappy_decompress(bytes(tables.map_table(ti)[offset:offset + size]))
        assert any(bytes(block).find(v) >= 0 for v in values)


def test_values_held_by_the_caller_stay_intact(tmp_path):
    """Decompression buffers are reused only when no value views them any more."""
    items = [(b"%04d" % i, _image_like(i, 30000)) for i in range(40)]
    path = _write(tmp_path / "db", items)
    source = open_source(path, "leveldb")
    try:
        reader = source.reader()
        held = [reader.get(k) for k, _ in items]          # all alive at once, as in a batch
        again = [reader.get(k) for k, _ in items[::-1]]   # more reads while they are held
        assert [bytes(v) for v in held] == [v for _, v in items]
        assert [bytes(v) for v in again] == [v for _, v in items[::-1]]
        del held, again
        assert [bytes(reader.get(k)) for k, _ in items] == [v for _, v in items]
    finally:
        source.close()


def test_tables_beyond_the_mapping_limit_are_remapped_and_held_values_survive(tmp_path, monkeypatch):
    """With more table files than stay mapped, the least recently used mapping is dropped; a
    value still viewing it keeps it alive."""
    items = [(b"%05d" % i, _image_like(i, 9000)) for i in range(120)]
    path = _write(tmp_path / "db", items, **MANY_TABLES)
    expected = _plyvel_items(path)
    monkeypatch.setattr(leveldb_tables, "MAX_MAPPED_TABLES", 2)
    source = open_source(path, "leveldb")
    try:
        assert source.tables is not None and len(source.tables.tables) > 4, source.plyvel_reason
        reader = source.reader()
        held = [reader.get(k) for k, _ in expected]  # walks every table: evicts as it goes
        assert len(source.tables._maps) <= 2
        assert [bytes(v) for v in held] == [v for _, v in expected]
        assert [bytes(reader.get(k)) for k, _ in expected[::-1]] == [v for _, v in expected[::-1]]
    finally:
        source.close()


@pytest.mark.parametrize("levels_and_sizes, due", [
    ([(0, 1000)] * 3, False),
    ([(0, 1000)] * 4, True),                    # LevelDB compacts at 4 level-0 files
    ([(1, 9 << 20)], False),
    ([(1, 6 << 20), (1, 5 << 20)], True),       # level 1 over 10 MB
    ([(2, 99 << 20), (6, 1 << 40)], False),     # the last level has no limit
    ([(3, 1001 << 20)], True),                  # level 3 over 1000 MB
])
def test_a_compaction_due_is_read_through_plyvel(tmp_path, levels_and_sizes, due):
    """LevelDB's own rule (VersionSet::Finalize): such a compaction rewrites the table files
    under a direct reader, so the reader declines and plyvel reads the records."""
    tables = []
    for n, (level, size) in enumerate(levels_and_sizes):
        key = b"%04d" % n + b"\x01" * 8  # disjoint ranges, user key + 8-byte tag
        tables.append(leveldb_tables.TableFile(level, n + 1, size, key, key))
        (tmp_path / f"{n + 1:06d}.ldb").write_bytes(b"")
    if due:
        with pytest.raises(Unsupported, match="compaction due"):
            leveldb_tables._check_readable_without_merge(str(tmp_path), tables, {})
    else:
        leveldb_tables._check_readable_without_merge(str(tmp_path), tables, {})


def test_written_twice_or_deleted_is_read_through_plyvel(tmp_path):
    """Keys overwritten or deleted after a first table was written need LevelDB's merge."""
    path = str(tmp_path / "db")
    _write(path, [(b"%04d" % i, b"old%d" % i) for i in range(50)])
    _plyvel_items(path)  # an open moves the log into a table
    db = plyvel.DB(path)
    db.put(b"0007", b"new")
    db.delete(b"0011")
    db.close()
    expected = _plyvel_items(path)
    assert (b"0007", b"new") in expected and b"0011" not in dict(expected)
    source = open_source(path, "leveldb")
    try:
        assert source.tables is None
        assert "overlap" in source.plyvel_reason or "deletion" in source.plyvel_reason \
            or "more than once" in source.plyvel_reason
        assert [(k, bytes(source.get(k))) for k in source.keys()] == expected
    finally:
        source.close()


def test_pipeline_over_leveldb_reads_the_tables_and_matches_lmdb(tmp_path, raw_db):
    lmdb_path = raw_db(n=21, c=3, h=9, w=8)
    ldb_path = raw_db(n=21, c=3, h=9, w=8, backend="leveldb", name="ldb")
    source = open_source(ldb_path, "leveldb")
    assert source.tables is not None, source.plyvel_reason
    source.close()
    out = {}
    for name, path, backend in (("lmdb", lmdb_path, "LMDB"), ("leveldb", ldb_path, "LEVELDB")):
        text = data_prototxt(path, 4, backend=backend, transform="crop_size: 5 mirror: true")
        with caffedata.DataLayer(text, shuffle=True, seed=3, preprocess_threads=2) as layer:
            out[name] = [(b["data"].copy(), b["label"].copy()) for b in list(layer) + list(layer)]
    assert len(out["lmdb"]) == len(out["leveldb"]) == 12
    for (a, la), (b, lb) in zip(out["lmdb"], out["leveldb"]):
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(a, b)


def test_index_is_reused_until_the_files_change(tmp_path):
    path = _write(tmp_path / "db", [(b"%04d" % i, b"a%d" % i) for i in range(30)])
    first = open_source(path, "leveldb")
    second = open_source(path, "leveldb")
    try:
        assert first.tables is second.tables
    finally:
        first.close()
        second.close()
    third = open_source(path, "leveldb")
    assert third.tables is first.tables  # closed and opened again, same files
    third.close()
    import shutil

    shutil.rmtree(path)
    _write(path, [(b"%04d" % i, b"b%d" % i) for i in range(30)])  # rebuilt at the same path
    fourth = open_source(path, "leveldb")
    try:
        assert fourth.tables is not first.tables
        assert bytes(fourth.get(b"0003")) == b"b3"
    finally:
        fourth.close()


def test_a_database_opened_by_a_relative_path_is_found_again_from_anywhere(tmp_path, monkeypatch):
    """Two databases whose table files have the same names: the index of one, opened by a relative
    path, must never read the other's files after the working directory changes."""
    for name in ("A", "B"):
        (tmp_path / name).mkdir()
        _write(tmp_path / name / "db", [(b"%04d" % i, b"%s%04d" % (name.encode(), i)) for i in range(20)])
        _plyvel_items(tmp_path / name / "db")
    monkeypatch.chdir(tmp_path / "A")
    first = open_source("db", "leveldb")
    assert bytes(first.get(b"0003")) == b"A0003"
    first.close()  # the index stays cached, its files unmapped
    monkeypatch.chdir(tmp_path / "B")
    again = open_source(str(tmp_path / "A" / "db"), "leveldb")
    try:
        assert bytes(again.get(b"0003")) == b"A0003"
    finally:
        again.close()


def test_a_table_replaced_under_an_open_reader_is_an_error(tmp_path):
    items = [(b"%04d" % i, b"v%d" % i * 100) for i in range(50)]
    path = _write(tmp_path / "db", items)
    source = open_source(path, "leveldb")
    try:
        table = source.tables.tables[0].path
        source.tables.release_maps()
        with open(table, "rb") as f:
            data = f.read()
        os.remove(table)
        with open(table, "wb") as f:  # the same bytes in a new file: not the file that was indexed
            f.write(data)
        with pytest.raises(DatabaseError, match="changed since the database was indexed"):
            source.get(b"0001")
    finally:
        source.close()


def test_corrupt_snappy_block_names_the_file(tmp_path):
    items = [(b"%04d" % i, _image_like(i, 20000)) for i in range(10)]
    path = _write(tmp_path / "db", items)
    _plyvel_items(path)  # the records are now in a table file
    db = plyvel.DB(path)
    tables = open_tables(path)
    compressed = [r for r in range(len(tables)) if not tables.locate(r)[3]]
    assert compressed
    ti, boff, bsize = tables.locate(compressed[0])[:3]
    table_path = tables.tables[ti].path
    db.close()
    with open(table_path, "r+b") as f:  # the block's Snappy header now claims 5 bytes more
        f.seek(boff)
        true_length = _leveldb.snappy_uncompressed_length(f.read(bsize))
        assert len(_varint(true_length + 5)) == 3
        f.seek(boff)
        f.write(_varint(true_length + 5))
    with pytest.raises(DatabaseError, match=r"corrupt LevelDB block at byte \d+: Snappy: the elements produce fewer") as exc:
        _direct_items(path)
    assert os.path.basename(table_path) in str(exc.value)
    assert "rebuild it" in str(exc.value)


# -- the Snappy decoder against hand-built streams -----------------------------------------

def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _literal(data):
    n = len(data) - 1
    if n < 60:
        return bytes([n << 2]) + data
    size = (n.bit_length() + 7) // 8
    return bytes([(59 + size) << 2]) + n.to_bytes(size, "little") + data


def _copy(offset, length, kind):
    if kind == 1:
        assert 4 <= length <= 11 and offset < 2048
        return bytes([1 | (length - 4) << 2 | (offset >> 8) << 5, offset & 0xFF])
    if kind == 2:
        return bytes([2 | (length - 1) << 2]) + offset.to_bytes(2, "little")
    return bytes([3 | (length - 1) << 2]) + offset.to_bytes(4, "little")


def _expand(elements):
    """What the elements mean, computed byte by byte as the format describes."""
    out = bytearray()
    for kind, arg in elements:
        if kind == "lit":
            out += arg
        else:
            offset, length = arg
            for _ in range(length):
                out.append(out[-offset])
    return bytes(out)


def _random_elements(rng, count):
    elements, produced = [], 0
    for _ in range(count):
        if produced == 0 or rng.random() < 0.4:
            n = int(rng.choice([1, 3, 16, 17, 59, 60, 61, 300, 70000]))
            data = rng.bytes(n)
            elements.append(("lit", data))
            produced += n
        else:
            offset = int(rng.integers(1, min(produced, 70000) + 1))
            kind = int(rng.choice([1, 2, 3])) if offset < 2048 else int(rng.choice([2, 3]))
            if offset >= 65536:
                kind = 3
            length = int(rng.integers(4, 12)) if kind == 1 else int(rng.integers(1, 65))
            elements.append((f"copy{kind}", (offset, length)))
            produced += length
    return elements


def _encode(elements):
    return b"".join(_literal(a) if k == "lit" else _copy(a[0], a[1], int(k[-1])) for k, a in elements)


@pytest.mark.parametrize("seed", range(30))
def test_snappy_decoder_on_hand_built_streams(seed):
    rng = np.random.default_rng(seed)
    elements = _random_elements(rng, int(rng.integers(1, 400)))
    expected = _expand(elements)
    stream = _varint(len(expected)) + _encode(elements)
    assert bytes(_leveldb.snappy_decompress(stream)) == expected
    assert _leveldb.snappy_uncompressed_length(stream) == len(expected)


@pytest.mark.parametrize("offset", range(1, 10))
def test_snappy_short_patterns(offset):
    """Copies overlapping their own output repeat a pattern (a run of one colour is offset 1-4)."""
    lead = bytes(range(1, 100))
    elements = [("lit", lead)] + [("copy2", (offset, n)) for n in (1, 7, 8, 9, 16, 33, 64)] * 5
    elements += [("lit", b"tail")]
    expected = _expand(elements)
    assert bytes(_leveldb.snappy_decompress(_varint(len(expected)) + _encode(elements))) == expected


@pytest.mark.parametrize("stream, reason", [
    (b"", "header"),
    (b"\x80\x80", "header"),
    (_varint(10) + _literal(b"abc"), "fewer bytes"),
    (_varint(2) + _literal(b"abc"), "more bytes"),
    (_varint(20) + _literal(b"abcd") + _copy(5, 8, 1), "before the start"),
    (_varint(20) + _literal(b"abcd") + _copy(0, 8, 2), "before the start"),
    (_varint(5) + bytes([9 << 2]) + b"abc", "ends inside"),
    (_varint(8) + _literal(b"abcd") + b"\x06\x01", "ends inside"),
    (_varint(10 ** 6) + _literal(b"x"), "header"),  # claims far more than 22x the input
    (b"\x81\x80\x80\x80\x10" + _literal(b"x"), "header"),  # a length with bits past 32
])
def test_snappy_malformed_streams_are_refused(stream, reason):
    with pytest.raises(ValueError, match=reason):
        _leveldb.snappy_decompress(stream)


def test_snappy_decoder_survives_random_corruption():
    """Mutated streams come back as ValueError or as bytes, never as a crash (run apart)."""
    script = textwrap.dedent("""
        import numpy as np
        from caffedata.sources import _leveldb, leveldb_tables
        rng = np.random.default_rng(0)
        import test_leveldb_tables as t
        elements = t._random_elements(rng, 300)
        expected = t._expand(elements)
        good = t._varint(len(expected)) + t._encode(elements)
        outcomes = {"error": 0, "ok": 0}
        for i in range(3000):
            s = bytearray(good[: int(rng.integers(1, len(good) + 1))] if i % 3 == 0 else good)
            for _ in range(int(rng.integers(1, 6))):
                s[int(rng.integers(0, len(s)))] = int(rng.integers(0, 256))
            try:
                _leveldb.snappy_decompress(bytes(s))
                outcomes["ok"] += 1
            except ValueError:
                outcomes["error"] += 1
        print(outcomes["error"], outcomes["ok"])
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(__file__)] + [p for p in sys.path if p]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    errors, ok = map(int, done.stdout.split())
    assert errors + ok == 3000 and errors > 1000


# -- block entries -----------------------------------------------------------------------

def _block(entries, restart_interval=2):
    out, restarts, previous = bytearray(), [], b""
    for i, (k, v) in enumerate(entries):
        shared = 0
        if i % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(k), len(previous)) and k[shared] == previous[shared]:
                shared += 1
        out += _varint(shared) + _varint(len(k) - shared) + _varint(len(v)) + k[shared:] + v
        previous = k
    for r in restarts:
        out += r.to_bytes(4, "little")
    return bytes(out + len(restarts).to_bytes(4, "little"))


def test_a_block_without_restart_points_is_empty_as_in_leveldb():
    keys, offsets, lengths = _leveldb.block_entries(b"\x00\x03\x01abcv" + (0).to_bytes(4, "little"))
    assert keys == [] and len(offsets) == 0 and len(lengths) == 0


def test_block_entries_rebuild_prefix_compressed_keys():
    entries = [(b"00000001_cat.jpg", b"v1"), (b"00000002_cat.jpg", b""), (b"00000002_dog.jpg", b"v3" * 50),
               (b"1", b"x")]
    block = _block(entries)
    keys, offsets, lengths = _leveldb.block_entries(block)
    assert keys == [k for k, _ in entries]
    assert [block[o:o + n] for o, n in zip(offsets, lengths)] == [v for _, v in entries]


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:3], "too short"),
    (lambda b: b[:-4] + (10 ** 6).to_bytes(4, "little"), "restart points"),
    (lambda b: b"\x05" + b[1:], "shares 5 bytes"),
    (lambda b: b[:1] + b"\x7f" + b[2:], "runs past"),
])
def test_block_entries_refuse_malformed_blocks(mutate, reason):
    block = _block([(b"abc", b"1"), (b"abd", b"2")])
    with pytest.raises(ValueError, match=reason):
        _leveldb.block_entries(mutate(block))


def test_open_tables_declines_a_database_with_its_log_not_in_a_table(tmp_path):
    path = _write(tmp_path / "db", [(b"a", b"1")])  # closed by its writer: still in the log
    with pytest.raises(Unsupported, match="not yet in a table"):
        open_tables(path)
