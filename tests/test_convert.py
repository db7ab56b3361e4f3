"""convert_imageset: records read back equal the source images, keys and bytes as Caffe writes them."""
import os
import struct

import numpy as np
import pytest

import cv2  # noqa: E402
import lmdb  # noqa: E402
import plyvel  # noqa: E402
from conftest import MT19937, varint  # noqa: E402,F401
from conftest import wire_encoded_datum as encoded_bytes  # noqa: E402
from conftest import wire_raw_datum as raw_datum_bytes  # noqa: E402

from caffedata.tools.convert import (caffe_atoi, caffe_shuffle, convert_imageset, parse_list,  # noqa: E402
                                     parse_list_file)
from caffedata.errors import CaffeDataError, DatabaseError, SpecError  # noqa: E402
from caffedata.proto import Datum  # noqa: E402


# ----------------------------------------------------------------------------- helpers

def read_db(path, backend="lmdb"):
    """All (key, value) pairs, read with the plain libraries."""
    if backend == "lmdb":
        env = lmdb.open(str(path), readonly=True, lock=False)
        with env.begin() as txn:
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor()]
        env.close()
        return items
    db = plyvel.DB(str(path))
    items = list(db.iterator())
    db.close()
    return items








def make_images(folder, n, shape=(12, 10, 3), ext="png", seed=0, params=()):
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    images = []
    for i in range(n):
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        if ext in ("jpg", "jpeg", "JPEG"):
            img = cv2.GaussianBlur(img, (5, 5), 2)  # photo-like, so JPEG error stays small
        cv2.imwrite(str(folder / f"im{i}.{ext}"), img, list(params))
        images.append(img)
    return images


# ----------------------------------------------------------------------------- list parsing

def test_atoi_matches_c():
    assert caffe_atoi(b"7") == 7
    assert caffe_atoi(b"  -3xyz") == -3
    assert caffe_atoi(b"5\r") == 5
    assert caffe_atoi(b"") == 0
    assert caffe_atoi(b"abc") == 0
    assert caffe_atoi(b"+12") == 12
    assert caffe_atoi(b"4294967297") == 1  # strtol then (int): low 32 bits
    assert caffe_atoi(b"99999999999999999999") == -1  # LONG_MAX, truncated


def test_list_parsing_last_space(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_bytes(b"a b/c d.png 3\r\nplain.png\t4\n\nnolabel\nx.png -2")
    assert parse_list_file(lst) == [(b"a b/c d.png", 3), (b"plain.png", 4), (b"", 0),
                                    (b"nolabel", 0), (b"x.png", -2)]


def test_list_labels_warn_per_line_and_tabs_split_only_where_caffe_fails(tmp_path):
    lst = tmp_path / "l.txt"
    # line 2: tab-separated; 3: `zero`; 4: no label; 5: a label Caffe reads (kept, tab inside
    # the path); 6: tab after a valid space-separated label (Caffe's reading wins); 7: over int32
    lst.write_bytes(b"a.png 1\nb c.png\t2\nd.png zero\ne.png\nf\tg.png 5\nh.png 6\t\n"
                    b"i.png 4294967297\n")
    entries, warnings = parse_list(lst)
    assert entries == [(b"a.png", 1), (b"b c.png", 2), (b"d.png", 0), (b"e.png", 0),
                       (b"f\tg.png", 5), (b"h.png", 6), (b"i.png", 1)]
    assert [(w.line, w.text, w.label) for w in warnings] == [
        (3, "zero", 0), (4, "", 0), (7, "4294967297", 1)]
    assert str(warnings[0]) == f"{lst}:3: label 'zero' is not an integer -- stored as 0 (Caffe's atoi)"
    assert str(warnings[1]).startswith(f"{lst}:4: has no label")
    with pytest.raises(SpecError, match=r"l\.txt:3: label 'zero' is not an integer; .*l\.txt:4: has "
                                        r"no label; .*:7: .* -- every line must be .* drop --strict"):
        parse_list(lst, strict=True)


def test_convert_counts_bad_labels_and_strict_refuses(tmp_path, capfd):
    make_images(tmp_path / "img", 3, shape=(3, 3, 3))
    (tmp_path / "l.txt").write_text("im0.png 0\nim1.png zero\nim2.png\t2\n")
    res = convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db", progress=False)
    assert res.count == 3 and [w.line for w in res.label_warnings] == [2]
    assert "1 line(s) with a non-integer or missing label" in res.summary()
    err = capfd.readouterr().err
    assert f"warning: {tmp_path / 'l.txt'}:2: label 'zero' is not an integer" in err
    assert [(k, Datum.FromString(v).label) for k, v in read_db(tmp_path / "db")] == [
        (b"00000000_im0.png", 0), (b"00000001_im1.png", 0), (b"00000002_im2.png", 2)]
    with pytest.raises(SpecError, match=r"l\.txt:2: label 'zero'"):
        convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db2", progress=False,
                         strict=True)
    assert not (tmp_path / "db2").exists() and leftovers(tmp_path) == []


def test_encode_type_opencv_cannot_write_fails_up_front(tmp_path):
    make_images(tmp_path / "img", 1, shape=(3, 3, 3))
    (tmp_path / "l.txt").write_text("im0.png 0\n")
    # (gif was the example, but OpenCV 5 writes GIF; no OpenCV writes "xyz")
    with pytest.raises(SpecError, match=r"--encode-type xyz: OpenCV cannot encode this type -- use "
                                        r"jpg or png"):
        convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db", encode_type="xyz",
                         progress=False)
    assert not (tmp_path / "db").exists()


def test_mt19937_stream_and_shuffle_match_reference():
    assert MT19937(5489)() == 3499211612  # the standard's check value for the 1st output
    items = list(range(50))
    mt = MT19937(1234)
    expect = list(items)
    for i in range(len(expect) - 1, 0, -1):  # boost uniform_int(0, i) over a 32-bit engine
        bucket = 0xFFFFFFFF // (i + 1) + (1 if 0xFFFFFFFF % (i + 1) == i else 0)
        r = mt() // bucket
        while r > i:
            r = mt() // bucket
        expect[i], expect[r] = expect[r], expect[i]
    assert caffe_shuffle(items, 1234) == expect
    assert sorted(caffe_shuffle(items, 99)) == items


# ----------------------------------------------------------------------------- raw records

@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_png_roundtrip_exact_with_key_gap(tmp_path, backend):
    images = make_images(tmp_path / "img", 5)
    # line 2 names a missing file: its id (00000002) is consumed, leaving a gap
    (tmp_path / "list.txt").write_text("im0.png 0\nim1.png 1\nmissing.png 9\nim2.png 2\n"
                                       "im3.png 3\nim4.png 4\n")
    db = tmp_path / "db"
    res = convert_imageset(tmp_path / "img", tmp_path / "list.txt", db, backend=backend,
                           progress=False, threads=2)
    assert (res.count, res.total) == (5, 6)
    assert [(f.line_id, f.name) for f in res.failures] == [(2, "missing.png")]
    items = read_db(db, backend)
    assert [k for k, _ in items] == [b"00000000_im0.png", b"00000001_im1.png",
                                     b"00000003_im2.png", b"00000004_im3.png",
                                     b"00000005_im4.png"]
    for i, (_, value) in enumerate(items):
        chw = images[i].transpose(2, 0, 1).copy()  # BGR as written by imwrite, CHW
        assert value == raw_datum_bytes(chw, i)
        d = Datum.FromString(value)
        got = np.frombuffer(d.data, np.uint8).reshape(d.channels, d.height, d.width)
        np.testing.assert_array_equal(got, chw)


def test_gray_and_resize(tmp_path):
    images = make_images(tmp_path / "img", 2, shape=(16, 20, 3))
    (tmp_path / "l.txt").write_text("im0.png 1\nim1.png 2\n")
    convert_imageset(str(tmp_path / "img") + "/", tmp_path / "l.txt", tmp_path / "g", gray=True,
                     progress=False)
    for (k, v), img in zip(read_db(tmp_path / "g"), images):
        d = Datum.FromString(v)
        assert (d.channels, d.height, d.width) == (1, 16, 20)
        got = np.frombuffer(d.data, np.uint8).reshape(16, 20)
        np.testing.assert_array_equal(got, cv2.imread(str(tmp_path / "img" / k[9:].decode()),
                                                      cv2.IMREAD_GRAYSCALE))
        # libpng's own RGB->gray conversion: within 1 of the BT.601 luma of the source
        luma = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(int)
        assert np.abs(got.astype(int) - luma).max() <= 1

    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "r", resize_height=8,
                     resize_width=6, progress=False)
    for (k, v), img in zip(read_db(tmp_path / "r"), images):
        d = Datum.FromString(v)
        assert (d.channels, d.height, d.width) == (3, 8, 6)
        expect = cv2.resize(img, (6, 8), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 8, 6), expect)

    # only one size given: Caffe resizes nothing
    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "one", resize_height=8,
                     progress=False)
    assert Datum.FromString(read_db(tmp_path / "one")[0][1]).height == 16


def test_jpeg_within_decoder_tolerance(tmp_path):
    images = make_images(tmp_path / "img", 3, shape=(32, 32, 3), ext="jpg")
    (tmp_path / "l.txt").write_text("".join(f"im{i}.jpg {i}\n" for i in range(3)))
    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db", progress=False)
    for (k, v), img in zip(read_db(tmp_path / "db"), images):
        d = Datum.FromString(v)
        got = np.frombuffer(d.data, np.uint8).reshape(3, 32, 32).astype(int)
        err = np.abs(got - img.transpose(2, 0, 1).astype(int))
        assert err.mean() < 4 and err.max() < 48


def test_threads_do_not_change_output(tmp_path):
    make_images(tmp_path / "img", 40, shape=(9, 7, 3))
    (tmp_path / "l.txt").write_text("".join(f"im{i}.png {i % 5}\n" for i in range(40)))
    a = convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "a", threads=1,
                         progress=False)
    b = convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "b", threads=4,
                         progress=False)
    assert a.count == b.count == 40
    assert read_db(tmp_path / "a") == read_db(tmp_path / "b")


def test_shuffle_is_reproducible_and_keys_follow_shuffled_order(tmp_path):
    make_images(tmp_path / "img", 12, shape=(4, 4, 3))
    (tmp_path / "l.txt").write_text("".join(f"im{i}.png {i}\n" for i in range(12)))
    r1 = convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "s1", shuffle=True,
                          seed=7, progress=False)
    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "s2", shuffle=True, seed=7,
                     progress=False)
    assert r1.seed == 7
    a, b = read_db(tmp_path / "s1"), read_db(tmp_path / "s2")
    assert a == b
    order = caffe_shuffle([f"im{i}.png" for i in range(12)], 7)
    assert [k for k, _ in a] == [b"%08d_%s" % (i, n.encode()) for i, n in enumerate(order)]
    assert [Datum.FromString(v).label for _, v in a] == [int(n[2:-4]) for n in order]


# ----------------------------------------------------------------------------- encoded records

def test_encoded_keeps_file_bytes_when_caffe_would(tmp_path):
    make_images(tmp_path / "img", 2, shape=(10, 10, 3), ext="png",
                params=[cv2.IMWRITE_PNG_COMPRESSION, 9])
    make_images(tmp_path / "img", 1, shape=(10, 10, 3), ext="JPEG", seed=5)
    (tmp_path / "l.txt").write_text("im0.png 0\nim1.png 1\nim0.JPEG 2\n")
    files = [(tmp_path / "img" / n).read_bytes() for n in ("im0.png", "im1.png", "im0.JPEG")]

    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "guess", encoded=True,
                     progress=False)
    items = read_db(tmp_path / "guess")
    assert [v for _, v in items] == [encoded_bytes(f, i) for i, f in enumerate(files)]

    # gray + guessed type: Caffe still stores the original (colour) file
    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "gray", encoded=True,
                     gray=True, progress=False)
    assert [v for _, v in read_db(tmp_path / "gray")] == [v for _, v in items]

    # explicit encode_type: ".png" != "png", so Caffe always re-encodes with imencode
    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "png", encode_type="png",
                     progress=False)
    for i, (k, v) in enumerate(read_db(tmp_path / "png")):
        d = Datum.FromString(v)
        assert d.encoded and d.label == i and not d.HasField("channels")
        assert d.data != files[i]
        src = cv2.imread(str(tmp_path / "img" / k[9:].decode()), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(d.data, np.uint8), -1), src)

    # resize + encoded: re-encoded at the new size
    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "rs", encoded=True,
                     resize_height=5, resize_width=4, progress=False)
    d = Datum.FromString(read_db(tmp_path / "rs")[0][1])
    assert d.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert cv2.imdecode(np.frombuffer(d.data, np.uint8), -1).shape == (5, 4, 3)


def test_encoded_without_extension_is_a_clear_error(tmp_path):
    make_images(tmp_path / "img", 1)
    os.rename(tmp_path / "img" / "im0.png", tmp_path / "img" / "noext")
    (tmp_path / "l.txt").write_text("noext 0\n")
    with pytest.raises(SpecError, match=r"line 1: cannot guess the encoding of 'noext'.*--encode-type"):
        convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db", encoded=True,
                         progress=False)
    assert not (tmp_path / "db").exists()


# ----------------------------------------------------------------------------- atomicity

def leftovers(folder):
    return [n for n in os.listdir(folder) if "caffedata-tmp" in n]


def test_failure_mid_write_leaves_no_db(tmp_path):
    # 1200 images of one size, then one of another size: check_size aborts after the
    # first 1000-record commit has already gone to the temporary DB.
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    small = np.zeros((2, 2, 3), np.uint8)
    cv2.imwrite(str(img_dir / "a.png"), small)
    cv2.imwrite(str(img_dir / "b.png"), np.zeros((3, 2, 3), np.uint8))
    (tmp_path / "l.txt").write_text("a.png 0\n" * 1200 + "b.png 1\n" + "a.png 0\n" * 5)
    with pytest.raises(CaffeDataError, match=r"b\.png \(line 1201\): 18 pixel bytes, but the first "
                                             r"image has 12"):
        convert_imageset(img_dir, tmp_path / "l.txt", tmp_path / "db", check_size=True,
                         progress=False)
    assert not os.path.exists(tmp_path / "db")
    assert leftovers(tmp_path) == []


def test_never_overwrites_unless_asked(tmp_path):
    make_images(tmp_path / "img", 2, shape=(3, 3, 3))
    (tmp_path / "l.txt").write_text("im0.png 0\n")
    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db", progress=False)
    before = read_db(tmp_path / "db")
    (tmp_path / "l.txt").write_text("im1.png 1\nim0.png 0\n")
    with pytest.raises(DatabaseError, match=r"already exists -- .*--overwrite"):
        convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db", progress=False)
    assert read_db(tmp_path / "db") == before
    convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db", overwrite=True,
                     progress=False)
    assert [k for k, _ in read_db(tmp_path / "db")] == [b"00000000_im1.png", b"00000001_im0.png"]
    assert leftovers(tmp_path) == []


def test_no_readable_image_is_an_error(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
    (tmp_path / "l.txt").write_text("bad.png 0\nnone.png 1\n")
    with pytest.raises(CaffeDataError, match=r"none of the 2 images could be read \(first: line 1: "
                                             r".*bad\.png: OpenCV cannot decode.* -- check that the "
                                             r"list names image files OpenCV can read"):
        convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db", progress=False)
    assert not (tmp_path / "db").exists() and leftovers(tmp_path) == []
    (tmp_path / "l.txt").write_text("none.png 0\n")
    with pytest.raises(CaffeDataError, match=r"no such file\) -- check ROOT"):
        convert_imageset(tmp_path / "img", tmp_path / "l.txt", tmp_path / "db", progress=False)


def test_float_label_struct_sanity():
    # the hand-built expectation encodes negative labels as 10-byte varints, as protobuf does
    assert raw_datum_bytes(np.zeros((1, 1, 1), np.uint8), -1).endswith(
        b"\x28" + b"\xff" * 9 + b"\x01\x38\x00")
    assert Datum.FromString(raw_datum_bytes(np.zeros((1, 1, 1), np.uint8), -1)).label == -1
    assert struct.calcsize("<f") == 4
