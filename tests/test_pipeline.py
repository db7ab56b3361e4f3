"""The pipeline against a plain-NumPy reference of Caffe's DataTransformer, on real databases."""
import numpy as np
import pytest
from conftest import (MT19937, data_prototxt, encoded_datum, float_datum, jpeg_bytes, key,
                      png_bytes, raw_datum, record_pixels, write_db)

import cv2
from caffedata import _fast
from caffedata.errors import DatabaseError, RecordError, SpecError
from caffedata.formats.mean import mean_to_blobproto_bytes
from caffedata.pipeline.engine import CaffePipeline
from caffedata.formats.prototxt import data_layer_spec


# -- an independent reference ---------------------------------------------------

def test_reference_mt19937_matches_known_outputs():
    mt = MT19937(5489)  # std::mt19937's default seed; known first outputs
    assert [mt(), mt(), mt()] == [3499211612, 581869302, 3890346734]


def caffe_transform(x, *, scale=1.0, mean=None, mean_values=(), crop=0, train=False, mirror=False,
                    rng=None, dtype=np.float32):
    """DataTransformer::Transform for one CHW image, written from Caffe's formulas."""
    c, h, w = x.shape
    do_mirror = bool(mirror and rng() % 2)
    if crop:
        if train:
            h_off = rng() % (h - crop + 1)
            w_off = rng() % (w - crop + 1)
        else:
            h_off, w_off = (h - crop) // 2, (w - crop) // 2
    else:
        h_off, w_off, crop_h, crop_w = 0, 0, h, w
    x = x.astype(dtype)
    if mean is not None:
        y = (x - mean.astype(dtype)) * dtype(scale)
    elif len(mean_values):
        mv = np.array(mean_values if len(mean_values) == c else list(mean_values) * c, dtype)
        y = (x - mv[:, None, None]) * dtype(scale)
    else:
        y = x * dtype(scale)
    if crop:
        y = y[:, h_off:h_off + crop, w_off:w_off + crop]
    if do_mirror:
        y = y[:, :, ::-1]
    return y


def all_batches(pipe):
    return [(d.copy(), l.copy(), pad) for (d, l), pad, _ in pipe]


def pipeline(source, batch_size, backend="LMDB", phase="TEST", transform="", **kw):
    spec = data_layer_spec(data_prototxt(source, batch_size, backend, phase, transform))
    return CaffePipeline(spec, **kw)


# -- transforms -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_crop_mirror_mean_file_scale_match_reference(tmp_path, raw_db, dtype, phase):
    n, c, h, w = 9, 3, 7, 6
    db = raw_db(n=n, c=c, h=h, w=w)
    mean = (np.random.default_rng(1).random((c, h, w)) * 255).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(mean_to_blobproto_bytes(mean))
    seed = 1234
    pipe = pipeline(db, 4, phase=phase, seed=seed, dtype=dtype,
                    transform=f'scale: 0.017 mirror: true crop_size: 4 mean_file: "{tmp_path}/mean.binaryproto"')
    rng = MT19937(seed)
    batches = all_batches(pipe)
    pipe.close()
    got = np.concatenate([b[0] for b in batches])
    for i in range(len(got)):
        rid = i % n  # the padded tail repeats the first records
        want = caffe_transform(record_pixels(rid, c, h, w), scale=np.float32(0.017), mean=mean, crop=4,
                               train=phase == "TRAIN", mirror=True, rng=rng, dtype=dtype)
        np.testing.assert_array_equal(got[i], want, err_msg=f"item {i}")
    assert got.dtype == dtype


def test_mean_values_single_and_per_channel(raw_db):
    db = raw_db(n=5, c=3, h=4, w=4)
    for mv, text in [((100.0,), "mean_value: 100"), ((10.0, 20.0, 30.5), "mean_value: 10 mean_value: 20 mean_value: 30.5")]:
        pipe = pipeline(db, 5, transform=f"scale: 0.5 {text}")
        (data, labels, pad), = all_batches(pipe)
        pipe.close()
        for i in range(5):
            np.testing.assert_array_equal(data[i], caffe_transform(record_pixels(i, 3, 4, 4), scale=0.5,
                                                                   mean_values=mv))
        np.testing.assert_array_equal(labels, np.arange(5, dtype=np.float32))


@pytest.mark.parametrize("packed", [False, True])
def test_float_data_records(tmp_path, packed):
    from caffedata.proto import Datum

    rng = np.random.default_rng(3)
    values = [rng.standard_normal((2, 3, 3)).astype(np.float32) for _ in range(4)]
    items = []
    for i, v in enumerate(values):
        raw = float_datum(v, i)
        if packed:  # rewrite float_data packed (tag 0x32), as some writers do
            d = Datum.FromString(raw)
            body = np.asarray(d.float_data, "<f4").tobytes()
            head = Datum(channels=2, height=3, width=3, label=i).SerializeToString()
            raw = head + b"\x32" + bytes([len(body)]) + body
        items.append((key(i), raw))
    db = write_db(tmp_path / "f", items)
    pipe = pipeline(db, 4, transform="scale: 2 mean_value: 0.5 crop_size: 2")
    (data, labels, _), = all_batches(pipe)
    pipe.close()
    for i, v in enumerate(values):
        np.testing.assert_array_equal(data[i], caffe_transform(v, scale=2, mean_values=(0.5,), crop=2))


def test_uint8_data_wins_over_float_data(tmp_path):
    from caffedata.proto import Datum

    d = Datum(channels=1, height=1, width=2, data=b"\x05\x06", label=1)
    d.float_data.extend([100.0, 200.0])
    db = write_db(tmp_path / "x", [(b"a", d.SerializeToString())])
    pipe = pipeline(db, 1)
    (data, _, _), = all_batches(pipe)
    pipe.close()
    np.testing.assert_array_equal(data.ravel(), [5, 6])


def _image(i, c, h=9, w=8):
    img = np.moveaxis(record_pixels(i, max(c, 1), h, w), 0, -1)
    return img[:, :, 0] if c == 1 else img


@pytest.mark.parametrize("channels, flags, expected_c", [
    (1, "", 1), (3, "", 3), (4, "", 4),
    (1, "force_color: true", 3), (4, "force_color: true", 3), (3, "force_gray: true", 1),
])
def test_encoded_png_decodes_like_imdecode(tmp_path, channels, flags, expected_c):
    files = [png_bytes(_image(i, channels)) for i in range(3)]
    db = write_db(tmp_path / "png", [(key(i), encoded_datum(f, i)) for i, f in enumerate(files)])
    pipe = pipeline(db, 3, transform=f"scale: 0.5 {flags}")
    (data, labels, _), = all_batches(pipe)
    pipe.close()
    flag = 1 if "color" in flags else 0 if "gray" in flags else -1
    for i, f in enumerate(files):
        img = cv2.imdecode(np.frombuffer(f, np.uint8), flag)
        chw = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
        assert chw.shape[0] == expected_c
        np.testing.assert_array_equal(data[i], chw.astype(np.float32) * np.float32(0.5))
    np.testing.assert_array_equal(labels, [0, 1, 2])


def test_encoded_png_is_exact_bgr(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30  # B, G, R
    db = write_db(tmp_path / "bgr", [(b"k", encoded_datum(png_bytes(img), 0))])
    pipe = pipeline(db, 1)
    (data, _, _), = all_batches(pipe)
    pipe.close()
    assert data[0, :, 0, 0].tolist() == [10, 20, 30]  # channel 0 is blue, as in Caffe


def test_encoded_jpeg_with_random_crop_and_mirror(tmp_path):
    files = [jpeg_bytes(_image(i, 3, 12, 11)) for i in range(5)]
    db = write_db(tmp_path / "jpg", [(key(i), encoded_datum(f, i)) for i, f in enumerate(files)])
    pipe = pipeline(db, 5, phase="TRAIN", seed=7, preprocess_threads=2,
                    transform="mirror: true crop_size: 8 mean_value: 104 mean_value: 117 mean_value: 123")
    (data, _, _), = all_batches(pipe)
    pipe.close()
    rng = MT19937(7)
    for i, f in enumerate(files):
        img = np.moveaxis(cv2.imdecode(np.frombuffer(f, np.uint8), -1), -1, 0)
        np.testing.assert_array_equal(data[i], caffe_transform(img, mean_values=(104, 117, 123), crop=8,
                                                               train=True, mirror=True, rng=rng))


def _caffe_window(chw, h_off, w_off, h_out, w_out, mean, values, scale, mirror):
    """DataTransformer's float32 formula for one window of a CHW uint8 image."""
    window = np.s_[:, h_off:h_off + h_out, w_off:w_off + w_out]
    x = chw.astype(np.float32)[window]
    if mean is not None:
        y = (x - mean[window]) * np.float32(scale)
    elif values:
        y = (x - np.array(values, np.float32)[:, None, None]) * np.float32(scale)
    else:
        y = x * np.float32(scale)
    return np.ascontiguousarray(y[:, :, ::-1] if mirror else y)


@pytest.mark.parametrize("mean_kind", ["none", "values", "file"])
def test_decoded_bgr_kernel_bit_exact_over_row_widths_offsets_and_mirror(mean_kind):
    """The float32 kernel for decoded (HWC) images, against Caffe's formulas in NumPy float32.

    Output widths around the 16-pixel steps of the SIMD row kernel (1, 15, 16,
    17, 33, 47), crop windows at both edges, mirror on and off, scales with
    and without rounding.
    """
    rng = np.random.default_rng(11)
    for w_out in (1, 2, 15, 16, 17, 33, 47):
        H, W, h_out = 5, w_out + 3, 4
        hwc = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
        mean = rng.uniform(-10, 270, (3, H, W)).astype(np.float32) if mean_kind == "file" else None
        values = (104.5, 117.25, 123.0) if mean_kind == "values" else ()
        for scale in (1.0, 0.017, 3.0):
            tp = _fast.TransformParams(3, H, W, crop=0, mirror=True, scale=scale, mean=mean,
                                       mean_values=values)
            for h_off, w_off in ((0, 0), (H - h_out, W - w_out), (1, 2)):
                for mirror in (False, True):
                    out = np.full((3, h_out, w_out), np.nan, np.float32)
                    _fast.transform_into(hwc.reshape(-1), _fast.LAYOUT_HWC_U8, tp, h_off, w_off, mirror, out)
                    want = _caffe_window(chw, h_off, w_off, h_out, w_out, mean, values, scale, mirror)
                    assert out.tobytes() == want.tobytes(), (w_out, scale, h_off, w_off, mirror)


@pytest.mark.parametrize("layout", ["decoded HWC", "raw CHW"])
@pytest.mark.parametrize("mean_kind", ["none", "values", "file"])
def test_uint8_kernels_large_planes_exact_and_nothing_written_outside(mean_kind, layout):
    """Planes of >= 16,384 floats (streamed to memory in whole lines) at every alignment.

    The output window starts 0..16 floats past a 64-byte boundary, so each
    plane's first and last lines are shared with its neighbours; the floats
    around the window must stay untouched.  Rows wider than the kernels'
    1,024-pixel chunk are covered too.
    """
    rng = np.random.default_rng(5)
    for h_out, w_out in ((130, 127), (15, 1100), (128, 128)):
        H, W = h_out + 2, w_out + 3
        hwc = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
        mean = rng.uniform(0, 255, (3, H, W)).astype(np.float32) if mean_kind == "file" else None
        values = (104.0, 117.0, 123.0) if mean_kind == "values" else ()
        tp = _fast.TransformParams(3, H, W, mirror=True, scale=0.5, mean=mean, mean_values=values)
        size = 3 * h_out * w_out
        for shift in (0, 1, 7, 15, 16):
            buffer = np.full(size + 64, -7.0, np.float32)
            start = (-buffer.ctypes.data // 4) % 16 + shift  # `shift` floats past a 64-byte line
            out = buffer[start:start + size].reshape(3, h_out, w_out)
            for mirror in (False, True):
                if layout == "raw CHW":
                    _fast.transform_into(chw.reshape(-1), _fast.LAYOUT_CHW_U8, tp, 1, 2, mirror, out)
                else:
                    _fast.transform_into(hwc.reshape(-1), _fast.LAYOUT_HWC_U8, tp, 1, 2, mirror, out)
                want = _caffe_window(chw, 1, 2, h_out, w_out, mean, values, 0.5, mirror)
                assert out.tobytes() == want.tobytes(), (h_out, w_out, shift, mirror)
                assert (buffer[:start] == -7).all() and (buffer[start + size:] == -7).all()


def test_mixed_raw_and_encoded_records(tmp_path):
    items = [(key(0), raw_datum(record_pixels(0, 3, 9, 8), 0)),
             (key(1), encoded_datum(png_bytes(_image(1, 3)), 1)),
             (key(2), raw_datum(record_pixels(2, 3, 9, 8), 2))]
    db = write_db(tmp_path / "mix", items)
    pipe = pipeline(db, 3)
    (data, _, _), = all_batches(pipe)
    pipe.close()
    for i in range(3):
        np.testing.assert_array_equal(data[i], record_pixels(i, 3, 9, 8).astype(np.float32))


# -- epochs, padding, order -------------------------------------------------------------

def ids(batches):
    return [b[1][: len(b[1]) - b[2]].astype(int).tolist() for b in batches]


def test_epoch_coverage_and_pad(raw_db):
    db = raw_db(n=23)
    pipe = pipeline(db, 5)
    for _ in range(3):  # every epoch restarts at the first key
        batches = all_batches(pipe)
        assert [b[2] for b in batches] == [0, 0, 0, 0, 2]
        assert sum(ids(batches), []) == list(range(23))
        assert batches[-1][1].tolist() == [20, 21, 22, 0, 1]  # padded with the epoch's first records
    pipe.close()


def test_discard_and_roll_over(raw_db):
    db = raw_db(n=23)
    pipe = pipeline(db, 5, last_batch_handle="discard")
    assert sum(ids(all_batches(pipe)), []) == list(range(20))
    pipe.close()
    pipe = pipeline(db, 5, last_batch_handle="roll_over")
    first, second = all_batches(pipe), all_batches(pipe)
    pipe.close()
    assert sum(ids(first), []) == list(range(20))
    assert second[0][1].tolist() == [20, 21, 22, 0, 1]  # the leftovers start the next epoch
    assert sum(ids(second), []) == [20, 21, 22] + list(range(22))


def test_num_examples_and_batch_larger_than_db_wrap(raw_db, caplog):
    db = raw_db(n=7)
    pipe = pipeline(db, 10, num_examples=25)
    batches = all_batches(pipe)
    pipe.close()
    assert [b[2] for b in batches] == [0, 0, 5]
    assert sum(ids(batches), []) == [i % 7 for i in range(25)]
    assert "wraps around" in caplog.text


def test_shuffle_is_a_permutation_per_epoch_and_seeded(raw_db):
    db = raw_db(n=23)
    a = pipeline(db, 5, shuffle=True, seed=3)
    b = pipeline(db, 5, shuffle=True, seed=3, preprocess_threads=3)
    ea1, ea2 = ids(all_batches(a)), ids(all_batches(a))
    eb1, eb2 = ids(all_batches(b)), ids(all_batches(b))
    a.close(), b.close()
    assert sorted(sum(ea1, [])) == list(range(23)) and sorted(sum(ea2, [])) == list(range(23))
    assert ea1 != ea2 and sum(ea1, []) != list(range(23))
    assert (ea1, ea2) == (eb1, eb2)


def test_same_seed_same_batches_whatever_the_thread_count(raw_db):
    db = raw_db(n=31, h=9, w=9)
    t = "mirror: true crop_size: 5 scale: 0.25"
    results = []
    for threads, prefetch in [(1, 1), (2, 4), (4, 2)]:
        pipe = pipeline(db, 4, phase="TRAIN", seed=11, preprocess_threads=threads,
                        prefetch_buffer=prefetch, transform=t)
        results.append([all_batches(pipe) for _ in range(2)])
        pipe.close()
    for other in results[1:]:
        for ep_a, ep_b in zip(results[0], other):
            for (da, la, pa), (db_, lb, pb) in zip(ep_a, ep_b):
                np.testing.assert_array_equal(da, db_)
                np.testing.assert_array_equal(la, lb)
    # and the two epochs differ (fresh draws each epoch)
    assert not np.array_equal(results[0][0][0][0], results[0][1][0][0])


def test_reset_mid_epoch_restarts_cleanly(raw_db):
    db = raw_db(n=23)
    pipe = pipeline(db, 5, preprocess_threads=2)
    pipe.start_epoch()
    pipe.next_batch()
    pipe.next_batch()
    assert sum(ids(all_batches(pipe)), []) == list(range(23))
    pipe.close()


def test_leveldb_backend_and_flat(raw_db):
    db = raw_db(n=11, backend="leveldb", name="ldb")
    pipe = pipeline(db, 4, backend="LEVELDB", flat=True)
    batches = all_batches(pipe)
    pipe.close()
    assert batches[0][0].shape == (4, 3 * 6 * 5)
    assert sum(ids(batches), []) == list(range(11))
    np.testing.assert_array_equal(batches[0][0][2], record_pixels(2, 3, 6, 5).ravel())


def test_varying_sizes_with_batch_size_one(tmp_path):
    items = [(key(i), raw_datum(record_pixels(i, 1, 3 + i, 4), i)) for i in range(3)]
    db = write_db(tmp_path / "v", items)
    pipe = pipeline(db, 1)
    shapes = [d.shape for d, _, _ in all_batches(pipe)]
    pipe.close()
    assert shapes == [(1, 1, 3, 4), (1, 1, 4, 4), (1, 1, 5, 4)]


def test_varying_sizes_with_crop(tmp_path):
    items = [(key(i), raw_datum(record_pixels(i, 2, 5 + i, 6 + i), i)) for i in range(4)]
    db = write_db(tmp_path / "vc", items)
    pipe = pipeline(db, 2, transform="crop_size: 4")
    batches = all_batches(pipe)
    pipe.close()
    for i in range(4):
        want = caffe_transform(record_pixels(i, 2, 5 + i, 6 + i), crop=4)
        np.testing.assert_array_equal(batches[i // 2][0][i % 2], want)


# -- bad input ---------------------------------------------------------------------------

def test_missing_path_and_wrong_backend(raw_db, tmp_path):
    with pytest.raises(DatabaseError, match="no such database"):
        pipeline(str(tmp_path / "nope"), 2)
    db = raw_db(n=3)
    with pytest.raises(DatabaseError, match="LMDB database but backend LEVELDB.*backend: LMDB"):
        pipeline(db, 2, backend="LEVELDB")
    ldb = raw_db(n=3, backend="leveldb", name="l")
    with pytest.raises(DatabaseError, match="LEVELDB database but backend LMDB"):
        pipeline(ldb, 2, backend="LMDB")


def test_truncated_record_raises_from_next_with_key(tmp_path):
    good = raw_datum(record_pixels(0, 1, 4, 4), 0)
    items = [(key(i), good) for i in range(6)] + [(b"00000006_broken", good[:-5])]
    db = write_db(tmp_path / "t", items)
    pipe = pipeline(db, 3, preprocess_threads=2)
    with pytest.raises(RecordError, match=r"t: record '00000006_broken' \(#6\).*(truncated|holds)"):
        all_batches(pipe)
    pipe.close()


def test_first_record_corrupt_fails_at_construction(tmp_path):
    db = write_db(tmp_path / "c", [(b"bad", b"\xff\xff\xff")])
    with pytest.raises(RecordError, match="record 'bad'.*corrupt Datum"):
        pipeline(db, 1)


def test_inconsistent_dimensions(tmp_path):
    items = [(key(0), raw_datum(record_pixels(0, 1, 4, 4), 0)),
             (key(1), raw_datum(record_pixels(1, 1, 5, 4), 1))]
    db = write_db(tmp_path / "d", items)
    pipe = pipeline(db, 2)
    with pytest.raises(RecordError, match=r"record '00000001' \(#1\): record is 1x5x4 but the batch is 1x4x4"):
        all_batches(pipe)
    pipe.close()


def test_mean_shape_mismatch_and_crop_too_large(raw_db, tmp_path):
    db = raw_db(n=2, c=3, h=6, w=5)
    (tmp_path / "m.binaryproto").write_bytes(mean_to_blobproto_bytes(np.zeros((3, 4, 4), np.float32)))
    with pytest.raises(RecordError, match="mean_file is 3x4x4 but the record is 3x6x5"):
        pipeline(db, 2, transform=f'mean_file: "{tmp_path}/m.binaryproto"')
    with pytest.raises(RecordError, match="crop_size 7 is larger than the 6x5 image"):
        pipeline(db, 2, transform="crop_size: 7")


def test_bad_options(raw_db):
    db = raw_db(n=2)
    with pytest.raises(SpecError, match="dtype"):
        pipeline(db, 1, dtype="float16")
    with pytest.raises(SpecError, match="last_batch_handle"):
        pipeline(db, 1, last_batch_handle="wrap")


def test_closing_stops_threads(raw_db):
    import threading

    db = raw_db(n=50)
    pipe = pipeline(db, 2, preprocess_threads=3, prefetch_buffer=2)
    pipe.start_epoch()
    pipe.next_batch()
    pipe.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("caffedata-worker")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mean_file_without_crop_or_mirror(tmp_path, raw_db, dtype):
    db = raw_db(n=6, c=3, h=5, w=7)
    mean = (np.random.default_rng(2).random((3, 5, 7)) * 255).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(mean_to_blobproto_bytes(mean))
    pipe = pipeline(db, 3, dtype=dtype, transform=f'scale: 0.3 mean_file: "{tmp_path}/mean.binaryproto"')
    got = np.concatenate([b[0] for b in all_batches(pipe)])
    pipe.close()
    for i in range(6):
        want = caffe_transform(record_pixels(i, 3, 5, 7), scale=np.float32(0.3), mean=mean, dtype=dtype)
        np.testing.assert_array_equal(got[i], want)


def test_prefetcher_wait_until_full_builds_exactly_the_queue_ahead():
    import threading
    import time

    from caffedata.pipeline.prefetch import Prefetcher

    built = []
    lock = threading.Lock()

    def work(job, state):
        time.sleep(0.02)
        with lock:
            built.append(job)
        return job * 10

    p = Prefetcher(list(range(8)), work, threads=1, depth=3)
    assert p.wait_until_full(timeout=30) == 3
    assert sorted(built) == [0, 1, 2]  # the queue is full: nothing more is started
    assert [next(p) for _ in range(3)] == [0, 10, 20]
    p.close()
    short = Prefetcher([5, 6], work, threads=2, depth=4)  # fewer jobs left than the depth
    assert short.wait_until_full(timeout=30) == 2
    assert list(short) == [50, 60]
    short.close()
