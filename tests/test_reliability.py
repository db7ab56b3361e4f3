"""Issue 8's faults, each on a real database: no signal, no hang, no silently wrong record.

Signal and hang cases run in a subprocess with a timeout, so that a regression
fails the test instead of killing the run.
"""
import os
import shutil

import cv2
import numpy as np
import pytest
from childproc import run_child
from conftest import data_prototxt, key, raw_datum, record_pixels, write_db

from caffedata.errors import DatabaseError, RecordError
from caffedata.pipeline.engine import CaffePipeline
from caffedata.formats.prototxt import data_layer_spec

def pipeline(source, batch_size, backend="LMDB", **kw):
    return CaffePipeline(data_layer_spec(data_prototxt(source, batch_size, backend)), **kw)


def labelled_db(path, labels, backend="lmdb", c=1, h=4, w=4):
    """Records key(i) whose label and pixels follow ``labels[i]``."""
    items = [(key(i), raw_datum(record_pixels(int(v), c, h, w), int(v))) for i, v in enumerate(labels)]
    return write_db(path, items, backend)


def epoch_labels(pipe):
    return np.concatenate([labels.copy() for (_, labels), _, _ in pipe]).astype(int).tolist()


def rewrite_in_child(path, puts=(), deletes=()):
    """Commit changes with a writer in another process (this one holds the environment)."""
    code = f"""
        import lmdb
        env = lmdb.open({path!r}, map_size=1 << 28)
        with env.begin(write=True) as txn:
            for k, v in {list(puts)!r}:
                txn.put(k, v)
            for k in {list(deletes)!r}:
                txn.delete(k)
        env.close()
    """
    proc = run_child(code)
    assert proc.returncode == 0, proc.stderr


# -- 1. a database rebuilt at the same path ----------------------------------------

def test_database_rebuilt_at_same_path_is_read_afresh(tmp_path):
    path = labelled_db(tmp_path / "db", range(100))
    old = pipeline(path, 10, preprocess_threads=2)
    old.start_epoch()
    old.next_batch()  # the old environment is open and mapped
    shutil.rmtree(path)
    labelled_db(tmp_path / "db", range(1000, 1050))
    new = pipeline(path, 10)
    assert new.num_records == 50
    assert epoch_labels(new) == list(range(1000, 1050))
    new.close()
    old.close()


# -- 2. a writer between epochs ---------------------------------------------------

def test_writer_changing_values_between_epochs_is_seen_next_epoch(tmp_path):
    path = labelled_db(tmp_path / "db", range(200))
    pipe = pipeline(path, 16, preprocess_threads=2)
    assert epoch_labels(pipe) == list(range(200)) + list(range(8))  # padded with the first
    # New values, of another size, for every key: LMDB moves them to other pages.
    rewrite_in_child(path, puts=[(key(i), raw_datum(record_pixels(5000 + i, 2, 6, 6)[:1, :4, :4].copy(), 5000 + i))
                                 for i in range(200)])
    labels = epoch_labels(pipe)
    assert labels == list(range(5000, 5200)) + list(range(5000, 5008))
    pipe.close()


@pytest.mark.parametrize("change", ["delete", "add"])
def test_writer_changing_keys_between_epochs_is_a_clear_error(tmp_path, change):
    path = labelled_db(tmp_path / "db", range(50))
    pipe = pipeline(path, 10, preprocess_threads=2)
    epoch_labels(pipe)
    if change == "delete":
        rewrite_in_child(path, deletes=[key(7)])
    else:
        rewrite_in_child(path, puts=[(key(77), raw_datum(record_pixels(77, 1, 4, 4), 77))])
    with pytest.raises(DatabaseError, match="changed since this iterator read it"):
        epoch_labels(pipe)
    pipe.close()


# -- 3. close while a batch is being built -----------------------------------------

def test_close_never_unmaps_under_a_running_worker(tmp_path):
    path = labelled_db(tmp_path / "db", range(64), c=3, h=256, w=256)
    code = f"""
        import time
        from caffedata.sources import db
        from caffedata.pipeline.engine import CaffePipeline
        from caffedata.formats.prototxt import data_layer_spec
        spec = data_layer_spec({data_prototxt(path, 64, transform="mirror: true")!r})
        for _ in range(3):
            pipe = CaffePipeline(spec, preprocess_threads=2, prefetch_buffer=2)
            pipe.start_epoch()
            pipe.next_batch()
            pipe.close(timeout=0)  # the next batches are still being built
        deadline = time.time() + 20
        while db._handles and time.time() < deadline:
            time.sleep(0.05)
        assert not db._handles, db._handles  # closed once the workers were done
        print("ok")
    """
    proc = run_child(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


# -- 4./5. truncated files ------------------------------------------------------------

def test_truncated_data_mdb_is_a_database_error_not_sigbus(tmp_path):
    path = labelled_db(tmp_path / "db", range(300), c=3, h=16, w=16)
    data = os.path.join(path, "data.mdb")
    os.truncate(data, os.path.getsize(data) // 2)
    code = f"""
        from caffedata.errors import DatabaseError
        from caffedata.pipeline.engine import CaffePipeline
        from caffedata.formats.prototxt import data_layer_spec
        try:
            CaffePipeline(data_layer_spec({data_prototxt(path, 8)!r}))
        except DatabaseError as exc:
            print("DatabaseError:", exc)
    """
    proc = run_child(code)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "DatabaseError:" in proc.stdout and "truncated LMDB" in proc.stdout, proc.stdout


def test_lmdb_truncated_between_epochs_is_a_database_error(tmp_path):
    path = labelled_db(tmp_path / "db", range(300), c=3, h=16, w=16)
    data = os.path.join(path, "data.mdb")
    code = f"""
        import os
        from caffedata.errors import DatabaseError
        from caffedata.pipeline.engine import CaffePipeline
        from caffedata.formats.prototxt import data_layer_spec
        pipe = CaffePipeline(data_layer_spec({data_prototxt(path, 8)!r}), preprocess_threads=2)
        for batch in pipe:
            pass
        os.truncate({data!r}, os.path.getsize({data!r}) // 3)
        try:
            for batch in pipe:
                pass
        except DatabaseError as exc:
            print("DatabaseError:", exc)
    """
    proc = run_child(code)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "DatabaseError:" in proc.stdout and "truncated" in proc.stdout, proc.stdout


def test_leveldb_table_truncated_between_epochs_is_a_database_error(tmp_path):
    path = labelled_db(tmp_path / "db", range(300), backend="leveldb", c=3, h=16, w=16)
    code = f"""
        import os
        from caffedata.errors import DatabaseError
        from caffedata.pipeline.engine import CaffePipeline
        from caffedata.formats.prototxt import data_layer_spec
        pipe = CaffePipeline(data_layer_spec({data_prototxt(path, 8, "LEVELDB")!r}))
        for batch in pipe:
            pass
        tables = [n for n in os.listdir({path!r}) if n.endswith((".ldb", ".sst"))]
        assert tables, os.listdir({path!r})
        for name in tables:
            f = os.path.join({path!r}, name)
            os.truncate(f, os.path.getsize(f) // 3)
        try:
            for batch in pipe:
                pass
        except DatabaseError as exc:
            print("DatabaseError:", exc)
    """
    proc = run_child(code)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "DatabaseError:" in proc.stdout and "truncated" in proc.stdout, proc.stdout


# -- 8. fork in the middle of an epoch ---------------------------------------------

@pytest.mark.parametrize("backend", ["LMDB", "LEVELDB"])
def test_fork_mid_epoch_child_continues_the_epoch(tmp_path, backend):
    path = labelled_db(tmp_path / "db", range(100), backend=backend.lower())
    code = f"""
        import os
        import numpy as np
        from caffedata.pipeline.engine import CaffePipeline
        from caffedata.formats.prototxt import data_layer_spec
        pipe = CaffePipeline(data_layer_spec({data_prototxt(path, 10, backend)!r}),
                             preprocess_threads=2, prefetch_buffer=3)
        pipe.start_epoch()
        first = [pipe.next_batch()[0][1].copy() for _ in range(3)]
        pid = os.fork()
        rest = []
        while True:
            try:
                rest.append(pipe.next_batch()[0][1].copy())
            except StopIteration:
                break
        labels = np.concatenate(first + rest).astype(int).tolist()
        ok = labels == list(range(100))
        if pid == 0:
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        print("parent", ok, "child", os.waitstatus_to_exitcode(status))
    """
    proc = run_child(code, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "parent True child 0" in proc.stdout, proc.stdout


# -- issue 12 #5: a second reader of one LevelDB in one process ----------------------

def test_two_pipelines_on_one_leveldb_in_one_process(tmp_path):
    path = labelled_db(tmp_path / "db", range(30), backend="leveldb")
    first = pipeline(path, 7, "LEVELDB", preprocess_threads=2)
    first.start_epoch()
    first.next_batch()
    second = pipeline(path, 5, "LEVELDB")  # e.g. a notebook cell run again
    assert epoch_labels(second) == list(range(30))
    second.close()
    assert first.next_batch()[0][1].astype(int).tolist() == list(range(7, 14))
    first.close()


# -- 9. hostile encoded images ---------------------------------------------------

def png_claiming(height, width):
    """A real small PNG whose IHDR (with a valid CRC) claims height x width."""
    import struct
    import zlib

    from conftest import png_bytes

    b = bytearray(png_bytes(np.full((8, 8, 3), 99, np.uint8)))
    b[16:24] = struct.pack(">II", width, height)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


def jpeg_claiming(height, width):
    """A real small JPEG whose frame header (SOF0) claims height x width."""
    from conftest import jpeg_bytes

    b = bytearray(jpeg_bytes(np.full((8, 8, 3), 99, np.uint8)))
    sof = b.index(b"\xff\xc0")
    b[sof + 5:sof + 9] = bytes([height >> 8, height & 255, width >> 8, width & 255])
    return bytes(b)


HOSTILE_CHILD = """
    import resource
    from caffedata.errors import RecordError
    from caffedata.pipeline.engine import CaffePipeline
    from caffedata.formats.prototxt import data_layer_spec
    # A full decode of the claimed size needs 2.7 GB: make that fail fast instead.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    spec = data_layer_spec(sys.argv[1])
    try:
        pipe = CaffePipeline(spec, preprocess_threads=1, max_image_pixels=int(sys.argv[2]))
        for batch in pipe:
            pass
    except RecordError as exc:
        print("RecordError:", exc)
"""


@pytest.mark.parametrize("make", [png_claiming, jpeg_claiming])
@pytest.mark.parametrize("position", [0, 1])
def test_image_claiming_huge_size_is_refused_before_decoding(tmp_path, make, position):
    from conftest import encoded_datum, jpeg_bytes

    good = encoded_datum(jpeg_bytes(np.full((32, 32, 3), 7, np.uint8)), 0)
    items = [good, good]
    items[position] = encoded_datum(make(30000, 30000), 1)
    path = write_db(tmp_path / "db", [(key(i), v) for i, v in enumerate(items)])
    proto = data_prototxt(path, 2, transform="crop_size: 16")
    proc = run_child(HOSTILE_CHILD, proto, 1 << 26, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "RecordError:" in proc.stdout and "30000x30000" in proc.stdout, proc.stdout
    assert key(position).decode() in proc.stdout and "max_image_pixels" in proc.stdout


def test_image_over_opencvs_own_limit_is_a_record_error(tmp_path):
    from conftest import encoded_datum

    path = write_db(tmp_path / "db", [(key(0), encoded_datum(png_claiming(40000, 40000), 0))])
    proc = run_child(HOSTILE_CHILD, data_prototxt(path, 1), 1 << 40, timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "RecordError:" in proc.stdout and "OpenCV" in proc.stdout, proc.stdout


def test_image_header_sizes_match_what_opencv_decodes_cut_at_every_length():
    """The size read before decoding (in C, for the pixel limit): OpenCV's decoded shape for real
    headers, the claimed size for hand-made ones, None for other formats and for any header cut
    before its size field."""
    import struct

    from conftest import jpeg_bytes, png_bytes

    from caffedata.pipeline.kernels import image_size

    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    bmp = cv2.imencode(".bmp", image)[1].tobytes()
    fill = jpeg_bytes(image)
    real = {"png": png_bytes(image), "jpeg": jpeg_bytes(image),
            "progressive": cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
            "bmp": bmp, "top-down bmp": bmp[:22] + struct.pack("<i", -5) + bmp[26:],
            "fill bytes": fill[:2] + b"\xff\xff" + fill[2:]}  # fill bytes before the first segment
    for name, data in real.items():
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded.shape[:2] == (5, 7), name
        assert image_size(data) == (5, 7), name
        # the size is known from the byte after its field on: PNG 24, BMP 26, JPEG its SOF + 9
        sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))  # baseline or progressive
        known_from = 24 if name == "png" else 26 if "bmp" in name else sof + 9
        for n in range(min(len(data), known_from + 40)):
            assert image_size(data[:n]) == ((5, 7) if n >= known_from else None), (name, n)
    made = [(png_claiming(30000, 30000), (30000, 30000)), (jpeg_claiming(60000, 65535), (60000, 65535)),
            (bmp[:18] + struct.pack("<ii", -2**31, -2**31) + bmp[26:], (2**31, 2**31)),
            (b"\xff\xd8\xff\xd0\xff\xc2\x00\x11\x08\x00\x03\x00\x04", (3, 4)),  # a restart marker first
            (b"\xff\xd8\xff\xc4\x00\x04\x00\x00\xff\xc0\x00\x11\x08\x00\x03\x00\x04", (3, 4)),  # DHT, then SOF0
            (b"\xff\xd8\xff\xda\x00\x04\x00\x00\xff\xc0\x00\x11\x08\x00\x03\x00\x04", None),  # scan first
            (b"\xff\xd8\x00\xc0\x00\x11\x08\x00\x03\x00\x04", None),  # not a marker
            (b"GIF89a" + bytes(40), None), (b"", None)]
    for data, expected in made:
        assert image_size(data) == expected, data[:16]


# -- 12. the fast Datum parser accepts exactly what protobuf accepts -----------------

def protobuf_accepts(value):
    from caffedata.proto import Datum

    try:
        Datum().ParseFromString(value)
        return True
    except Exception:
        return False


EDGE_RECORDS = [
    bytes([0x88, 0x80, 0x80, 0x80, 0x00, 0x03]),              # tag in 5 bytes (padded)
    bytes([0x88, 0x80, 0x80, 0x80, 0x80, 0x00, 0x03]),        # tag in 6 bytes
    bytes([0x88, 0x80, 0x80, 0x80, 0x10, 0x03]),              # tag over 32 bits
    bytes([0xF8, 0xFF, 0xFF, 0xFF, 0x0F, 0x03]),              # the largest field number
    bytes([0x00, 0x03]),                                      # field number 0
    b"\x08" + bytes([0xFF] * 9 + [0x7F]),                     # 10-byte value varint
    b"\x08" + bytes([0xFF] * 10 + [0x01]),                    # 11-byte value varint
    b"\x22" + bytes([0x83, 0x80, 0x80, 0x80, 0x00]) + b"abc",  # length in 5 bytes
    b"\x22" + bytes([0x83, 0x80, 0x80, 0x80, 0x80, 0x00]) + b"abc",  # length in 6 bytes
    b"\x4a" + bytes([0x83, 0x80, 0x80, 0x80, 0x80, 0x00]) + b"abc",  # unknown field, same
    b"\x5b" + bytes([0x88, 0x80, 0x80, 0x80, 0x80, 0x00, 0x03]) + b"\x5c",  # in a group
    b"\x5b" + bytes([0xDC, 0x80, 0x80, 0x80, 0x80, 0x00]),    # group end tag in 6 bytes
    b"\x5b" * 100 + b"\x5c" * 100,                            # groups 100 deep
    b"\x5b" * 101 + b"\x5c" * 101,                            # and 101
    b"\x5b\x00\x00\x5c",                                     # field 0 inside a group: accepted
    b"\x5b" + bytes([0x88, 0x80, 0x80, 0x80, 0x10, 0x03]) + b"\x5c",  # tag over 32 bits in a group
    b"\x0c", b"\x0e", b"\x32\x03abc",
]


def test_fast_parser_accepts_exactly_what_protobuf_accepts():
    from caffedata import _fast

    for value in EDGE_RECORDS:
        assert (_fast.datum_header(value)[0] == 0) == protobuf_accepts(value), value.hex()


def test_record_protobuf_would_refuse_is_a_record_error(tmp_path):
    import struct

    # float_data in two runs (the protobuf fallback) around a field whose tag is overlong.
    bad = (b"\x08\x01\x10\x01\x18\x02\x35" + struct.pack("<f", 1.5)
           + bytes([0xC8, 0x80, 0x80, 0x80, 0x80, 0x00, 0x00]) + b"\x35" + struct.pack("<f", 2.5))
    assert not protobuf_accepts(bad)
    good = raw_datum(np.zeros((1, 1, 2), np.uint8), 0)
    path = write_db(tmp_path / "db", [(key(0), good), (key(1), bad)])
    pipe = pipeline(path, 1)
    with pytest.raises(RecordError, match=key(1).decode()):
        epoch_labels(pipe)
    pipe.close()
