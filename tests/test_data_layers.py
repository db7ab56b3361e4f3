"""ImageData, HDF5Data, MemoryData and DummyData through caffedata.DataLayer (no MXNet).

Expectations are independent: images are written and re-read by OpenCV itself,
transforms come from the plain-NumPy reference in test_pipeline, random crops
and mirrors from the textbook MT19937 in conftest, HDF5 rows from h5py slicing.
"""
import cv2
import h5py
import numpy as np
import pytest
from conftest import MT19937
from test_pipeline import caffe_transform

import caffedata
from caffedata.errors import RecordError, SpecError


# -- ImageData -------------------------------------------------------------------

def image_layer(listfile, batch, root="", params="", transform="", phase="TEST", tops=("data", "label")):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return (f'layer {{ name: "img" type: "ImageData" {top_text} include {{ phase: {phase} }} '
            f'transform_param {{ {transform} }} image_data_param {{ source: "{listfile}" '
            f'batch_size: {batch} root_folder: "{root}" {params} }} }}')


@pytest.fixture
def image_folder(tmp_path):
    """Seven colour PNGs of 9x7 (two with spaces in their names) and a list file."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "images"
    folder.mkdir()
    names = ["a.png", "b c.png", "d.png", "e f g.png", "h.png", "i.png", "j.png"]
    images = []
    for name in names:
        image = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / name), image)
        images.append(image)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{name} {i * 3}\n" for i, name in enumerate(names)))
    return folder, listing, names, images


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_image_data_matches_opencv_and_the_transform_reference(image_folder, dtype):
    folder, listing, names, _ = image_folder
    transform = "crop_size: 5 mirror: true scale: 0.017 mean_value: 10 mean_value: 20 mean_value: 30"
    text = image_layer(listing, 3, root=f"{folder}/", transform=transform, phase="TRAIN")
    with caffedata.DataLayer(text, seed=9, preprocess_threads=2, dtype=dtype) as layer:
        assert layer.shapes == {"data": (3, 3, 5, 5), "label": (3,)}
        batches = [{k: v.copy() for k, v in b.items()} | {"pad": b.pad} for b in layer]
    rng = MT19937(9)
    order = [i % 7 for i in range(9)]  # 7 images, batch 3: the last batch padded with 0, 1
    got = np.concatenate([b["data"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    for item, i in enumerate(order):
        chw = cv2.imread(str(folder / names[i]), cv2.IMREAD_COLOR).transpose(2, 0, 1)
        expected = caffe_transform(chw, scale=np.float32(0.017), mean_values=(10, 20, 30), crop=5,
                                   train=True, mirror=True, rng=rng, dtype=dtype)  # scale: a float field
        assert got[item].dtype == dtype
        np.testing.assert_array_equal(got[item], expected)
        assert labels[item] == i * 3
    assert [b["pad"] for b in batches] == [0, 0, 2]


def test_image_data_mean_file_and_a_size_the_mean_does_not_fit(image_folder, tmp_path):
    from caffedata.formats.mean import mean_to_blobproto_bytes

    folder, listing, names, _ = image_folder
    mean = (np.random.default_rng(3).random((3, 9, 7)) * 255).astype(np.float32)
    (tmp_path / "mean.binaryproto").write_bytes(mean_to_blobproto_bytes(mean))
    transform = f'crop_size: 5 mirror: true scale: 0.017 mean_file: "{tmp_path}/mean.binaryproto"'
    with caffedata.DataLayer(image_layer(listing, 4, root=f"{folder}/", transform=transform, phase="TRAIN"),
                             seed=5, num_examples=8) as layer:
        got = np.concatenate([b["data"].copy() for b in layer])
    rng = MT19937(5)
    for item in range(8):
        chw = cv2.imread(str(folder / names[item % 7]), cv2.IMREAD_COLOR).transpose(2, 0, 1)
        expected = caffe_transform(chw, scale=np.float32(0.017), mean=mean, crop=5, train=True, mirror=True,
                                   rng=rng)  # the mean at the source pixels, mirrored with them
        np.testing.assert_array_equal(got[item], expected)
    cv2.imwrite(str(folder / "big.png"), np.zeros((12, 7, 3), np.uint8))
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(f"{names[0]} 0\n{names[1]} 1\nbig.png 2\n")
    with caffedata.DataLayer(image_layer(mixed, 3, root=f"{folder}/", transform=transform)) as layer:
        with pytest.raises(RecordError, match=r"line 3: .*big.png.*mean_file is 3x9x7 but the record is 3x12x7"):
            next(iter(layer))


def test_image_data_resize_gray_and_single_top(image_folder):
    folder, listing, names, _ = image_folder
    text = image_layer(listing, 2, root=f"{folder}/", params="new_height: 4 new_width: 6 is_color: false",
                       tops=("data",))
    with caffedata.DataLayer(text, num_examples=4) as layer:
        assert layer.tops == ("data",) and layer.shapes == {"data": (2, 1, 4, 6)}
        got = np.concatenate([b["data"].copy() for b in layer])
    for i in range(4):
        gray = cv2.imread(str(folder / names[i]), cv2.IMREAD_GRAYSCALE)
        expected = cv2.resize(gray, (6, 4), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        np.testing.assert_array_equal(got[i, 0], expected)


def test_image_data_shuffle_covers_every_image_each_epoch(image_folder):
    folder, listing, _, _ = image_folder
    text = image_layer(listing, 7, root=f"{folder}/", params="shuffle: true")
    with caffedata.DataLayer(text, seed=3) as layer:
        epochs = [next(iter(layer))["label"].tolist() for _ in range(3)]
    for labels in epochs:
        assert sorted(labels) == [i * 3 for i in range(7)]
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]  # a fresh permutation per epoch


def test_image_data_errors_name_the_list_line_and_file(image_folder, tmp_path):
    folder, listing, names, _ = image_folder
    bad = tmp_path / "bad.txt"
    bad.write_text("a.png 0\nmissing.png 1\n")
    layer = caffedata.DataLayer(image_layer(bad, 2, root=f"{folder}/"))
    with pytest.raises(RecordError, match=r"bad.txt: record 'line 2: .*missing.png'.*No such file"):
        next(iter(layer))
    layer.close()
    cv2.imwrite(str(folder / "big.png"), np.zeros((12, 7, 3), np.uint8))
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("a.png 0\nbig.png 1\n")
    layer = caffedata.DataLayer(image_layer(mixed, 2, root=f"{folder}/"))
    with pytest.raises(RecordError, match=r"line 2: .*big.png.*3x12x7 but the batch is 3x9x7"):
        next(iter(layer))
    layer.close()
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(SpecError, match="empty"):
        caffedata.DataLayer(image_layer(empty, 2))
    with pytest.raises(SpecError, match="both set or both 0"):
        caffedata.DataLayer(image_layer(listing, 2, params="new_height: 4"))


IMAGE_CHILD = """
    import resource
    import caffedata
    from caffedata.errors import RecordError
    # A full decode of the claimed size needs 2.7 GB: make that fail fast instead.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
    try:
        with caffedata.DataLayer(sys.argv[1], preprocess_threads=1) as layer:
            for batch in layer:
                pass
    except RecordError as exc:
        print("RecordError:", exc)
"""


@pytest.mark.parametrize("position", [0, 1, 2])
def test_image_claiming_huge_size_is_refused_before_decoding_anywhere_in_a_batch(image_folder, tmp_path,
                                                                                position):
    """Item 0 goes through the general path, items 1.. through the fast loop: both refuse it."""
    from childproc import run_child
    from test_reliability import png_claiming

    folder, _, names, _ = image_folder
    (folder / "huge.png").write_bytes(png_claiming(30000, 30000))
    lines = [f"{name} 0" for name in names[:3]]
    lines[position] = "huge.png 1"
    listing = tmp_path / "huge.txt"
    listing.write_text("\n".join(lines) + "\n")
    proc = run_child(IMAGE_CHILD, image_layer(listing, 3, root=f"{folder}/", transform="crop_size: 4"),
                     timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert f"line {position + 1}: " in proc.stdout and "huge.png" in proc.stdout, proc.stdout
    assert "30000x30000" in proc.stdout and "max_image_pixels" in proc.stdout, proc.stdout


def test_image_data_fast_loop_reads_big_files_and_names_the_bad_ones(image_folder, tmp_path):
    """Files over the loop's first 256 KB buffer; an empty file, a folder, a corrupt JPEG, and a
    path with a NUL byte (C would open the good file before it)."""
    folder, _, names, _ = image_folder
    rng = np.random.default_rng(4)
    big = [rng.integers(0, 256, (300 + 40 * k, 310, 3), dtype=np.uint8) for k in range(3)]
    for k, image in enumerate(big):  # noise compresses badly: PNGs of 280-400 KB
        assert cv2.imwrite(str(folder / f"big{k}.png"), image)
    assert (folder / "big0.png").stat().st_size > 1 << 18
    listing = tmp_path / "big.txt"
    listing.write_text("".join(f"big{k}.png {k}\n" for k in (0, 1, 2, 1)))
    with caffedata.DataLayer(image_layer(listing, 4, root=f"{folder}/", transform="crop_size: 300")) as layer:
        batch = next(iter(layer))
        for item, k in enumerate((0, 1, 2, 1)):
            h, w = big[k].shape[:2]
            y, x = (h - 300) // 2, (w - 300) // 2  # TEST: the centred window
            np.testing.assert_array_equal(batch["data"][item], big[k][y:y + 300, x:x + 300].transpose(2, 0, 1))
        assert batch["label"].tolist() == [0, 1, 2, 1]
    (folder / "empty.png").write_bytes(b"")
    (folder / "folder.png").mkdir()
    (folder / "cut.jpg").write_bytes(cv2.imencode(".jpg", big[0])[1].tobytes()[:300])
    for bad, why in [("empty.png", "OpenCV refused"), ("folder.png", r"could not load the image \(a folder\)"),
                     ("cut.jpg", "cannot decode"), (f"{names[2]}\0.txt", "the path holds a NUL byte")]:
        listing.write_text(f"{names[0]} 0\n{names[1]} 1\n{bad} 2\n")
        with caffedata.DataLayer(image_layer(listing, 3, root=f"{folder}/")) as layer:
            with pytest.raises(RecordError, match=rf"record 'line 3: .*{bad}'.*{why}"):
                next(iter(layer))


FIFO_CHILD = """
    import caffedata
    from caffedata.errors import RecordError
    try:
        with caffedata.DataLayer(sys.argv[1], preprocess_threads=2) as layer:
            next(iter(layer))
    except RecordError as exc:
        print("RecordError:", exc)
"""


@pytest.mark.parametrize("position", [0, 2])
def test_a_fifo_in_the_list_is_an_error_not_a_hang(image_folder, tmp_path, position):
    """Opening a FIFO for reading blocks until a writer comes: the layer must refuse it instead."""
    import os

    from childproc import run_child

    folder, _, names, _ = image_folder
    os.mkfifo(folder / "pipe.png")
    lines = [f"{name} 0" for name in names[:3]]
    lines[position] = "pipe.png 1"
    listing = tmp_path / "fifo.txt"
    listing.write_text("\n".join(lines) + "\n")
    proc = run_child(FIFO_CHILD, image_layer(listing, 3, root=f"{folder}/"), timeout=60)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert f"line {position + 1}: " in proc.stdout and "pipe.png" in proc.stdout, proc.stdout
    assert "could not load the image (not a regular file)" in proc.stdout, proc.stdout


# -- HDF5Data --------------------------------------------------------------------

@pytest.fixture
def h5_files(tmp_path):
    """Three files of 5, 2 and 4 rows; tops of rank 1 to 4; every value says its global row."""
    rows = [5, 2, 4]
    start = 0
    names = []
    for f, n in enumerate(rows):
        ids = np.arange(start, start + n, dtype=np.float64)
        name = tmp_path / f"part{f}.h5"
        with h5py.File(name, "w") as h5:
            h5["label"] = ids.astype(np.int32)                                    # rank 1, integer
            h5["vec"] = ids[:, None] * np.ones((1, 3))                            # rank 2
            h5["data"] = (ids[:, None, None, None] * np.ones((1, 2, 3, 2))).astype(np.float32)  # rank 4
        names.append(name.name)
        start += n
    listing = tmp_path / "h5list.txt"
    listing.write_text("\n".join(names) + "\n")  # relative names: found beside the list
    return listing, sum(rows)


def h5_layer(listing, batch, tops=("data", "label", "vec"), params=""):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return (f'layer {{ name: "h5" type: "HDF5Data" {top_text} hdf5_data_param {{ source: "{listing}" '
            f'batch_size: {batch} {params} }} }}')


def test_hdf5_rows_across_files_with_several_tops_and_ranks(h5_files):
    listing, total = h5_files
    with caffedata.DataLayer(h5_layer(listing, 4), preprocess_threads=2) as layer:
        assert layer.shapes == {"data": (4, 2, 3, 2), "label": (4,), "vec": (4, 3)}
        batches = [{k: v.copy() for k, v in b.items()} for b in layer]
    ids = [i % total for i in range(12)]  # 11 rows, batch 4, padded with the first row
    assert np.concatenate([b["label"] for b in batches]).tolist() == ids
    data = np.concatenate([b["data"] for b in batches])
    np.testing.assert_array_equal(data, np.array(ids, np.float32)[:, None, None, None] * np.ones((1, 2, 3, 2)))
    np.testing.assert_array_equal(np.concatenate([b["vec"] for b in batches]),
                                  np.array(ids)[:, None] * np.ones((1, 3)))


def test_hdf5_shuffle_permutes_files_then_rows_and_covers_each_epoch(h5_files):
    listing, total = h5_files
    with caffedata.DataLayer(h5_layer(listing, total, tops=("label",), params="shuffle: true"),
                             seed=4) as layer:
        epochs = [next(iter(layer))["label"].astype(int).tolist() for _ in range(3)]
    files = [set(range(0, 5)), set(range(5, 7)), set(range(7, 11))]
    for order in epochs:
        assert sorted(order) == list(range(total))
        # rows of one file are never interleaved with another's
        runs = [next(k for k, f in enumerate(files) if row in f) for row in order]
        assert [k for i, k in enumerate(runs) if i == 0 or runs[i - 1] != k] == sorted(set(runs), key=runs.index)
        assert len(set(runs)) == 3 and sum(1 for i in range(1, len(runs)) if runs[i] != runs[i - 1]) == 2
    assert len({tuple(o) for o in epochs}) > 1


def test_hdf5_errors_name_the_file(h5_files, tmp_path):
    listing, _ = h5_files
    with pytest.raises(SpecError, match=r"part0.h5: no dataset 'missing'"):
        caffedata.DataLayer(h5_layer(listing, 2, tops=("data", "missing")))
    with h5py.File(tmp_path / "odd.h5", "w") as h5:
        h5["data"] = np.zeros((3, 2))
        h5["label"] = np.zeros(4)
    odd = tmp_path / "odd.txt"
    odd.write_text(str(tmp_path / "odd.h5"))
    with pytest.raises(SpecError, match=r"odd.h5: dataset 'label' has 4 rows but 'data' has 3"):
        caffedata.DataLayer(h5_layer(odd, 2, tops=("data", "label")))
    with pytest.raises(SpecError, match="does not transform"):
        caffedata.DataLayer(h5_layer(listing, 2).replace("hdf5_data_param", "transform_param { scale: 2 } "
                                                          "hdf5_data_param"))
    with pytest.raises(SpecError, match="no such file"):
        caffedata.DataLayer(h5_layer(tmp_path / "nope.txt", 2))


def test_hdf5_file_shrunk_after_the_layer_read_it_names_file_and_rows(h5_files, tmp_path):
    listing, _ = h5_files
    layer = caffedata.DataLayer(h5_layer(listing, 4, tops=("data", "label")), preprocess_threads=1)
    with h5py.File(tmp_path / "part2.h5", "w") as h5:  # rewritten with 1 row instead of 4
        h5["data"] = np.zeros((1, 2, 3, 2), np.float32)
        h5["label"] = np.zeros(1, np.int32)
    with layer, pytest.raises(RecordError, match=r"part2.h5: record 'rows 1\.\.3' \(#8\): cannot read "
                                                  r"rows .*rebuild it"):
        list(layer)  # the last batch is rows 8..10 (part2's rows 1..3), then row 0


# -- MemoryData --------------------------------------------------------------------

def test_memory_data_transforms_the_given_arrays(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (5, 2, 6, 6)).astype(np.float32)
    y = np.arange(5) + 100
    text = ('layer { name: "mem" type: "MemoryData" top: "data" top: "label" include { phase: TEST } '
            'transform_param { crop_size: 4 scale: 0.25 mean_value: 3 } '
            'memory_data_param { batch_size: 2 channels: 2 height: 4 width: 4 } }')
    with caffedata.DataLayer(text, arrays={"data": x, "label": y}) as layer:
        assert layer.shapes == {"data": (2, 2, 4, 4), "label": (2,)}
        batches = [(b["data"].copy(), b["label"].copy()) for b in layer]
    got = np.concatenate([d for d, _ in batches])
    for i, k in enumerate([0, 1, 2, 3, 4, 0]):
        np.testing.assert_array_equal(got[i], caffe_transform(x[k], scale=0.25, mean_values=(3,), crop=4))
    assert np.concatenate([l for _, l in batches]).tolist() == [100, 101, 102, 103, 104, 100]
    with pytest.raises(SpecError, match="needs its arrays"):
        caffedata.DataLayer(text)
    with pytest.raises(SpecError, match=r"memory_data_param's \(2, 4, 4\)"):
        caffedata.DataLayer(text, arrays={"data": x[:, :1], "label": y})


# -- DummyData ---------------------------------------------------------------------

def test_dummy_data_shapes_fillers_and_seeded_batches():
    text = ('layer { name: "dummy" type: "DummyData" top: "x" top: "c" dummy_data_param { '
            'shape { dim: 500 dim: 20 } shape { dim: 500 } '
            'data_filler { type: "gaussian" mean: 2 std: 3 } data_filler { type: "constant" value: 7 } } }')
    with caffedata.DataLayer(text, seed=1, num_examples=1000) as layer:
        assert layer.shapes == {"x": (500, 20), "c": (500,)} and len(layer) == 2
        first = [{k: v.copy() for k, v in b.items()} for b in layer]
    x = np.concatenate([b["x"] for b in first])
    assert abs(x.mean() - 2) < 0.05 and abs(x.std() - 3) < 0.05  # 20,000 draws: 4 standard errors
    assert not np.array_equal(first[0]["x"], first[1]["x"])        # refilled every batch
    assert all((b["c"] == 7).all() for b in first)
    with caffedata.DataLayer(text, seed=1, num_examples=1000, preprocess_threads=1) as again:
        np.testing.assert_array_equal(next(iter(again))["x"], first[0]["x"])
    legacy = ('layer { type: "DummyData" top: "a" dummy_data_param { num: 2 channels: 3 height: 4 width: 5 '
              'shape { dim: 1 } } }')
    with pytest.raises(SpecError, match="not both"):
        caffedata.DataLayer(legacy)


# -- the bad record policy ----------------------------------------------------------

def test_on_error_skip_replaces_bad_records_with_the_next_good_one(tmp_path, image_folder, caplog):
    from conftest import data_prototxt, key, raw_datum, record_pixels, write_db

    good = [(key(i), raw_datum(record_pixels(i, 1, 2, 2), i)) for i in range(9)]
    good[4] = (key(4), good[4][1][:9])   # truncated inside its pixels
    good[5] = (key(5), b"\xff\xff")      # not a Datum
    db = write_db(tmp_path / "db", good)
    strict = caffedata.DataLayer(data_prototxt(db, 3), preprocess_threads=1)
    with pytest.raises(RecordError, match="00000004"):
        list(strict)
    strict.close()
    for threads in (1, 2):
        with caffedata.DataLayer(data_prototxt(db, 3), on_error="skip", preprocess_threads=threads) as layer:
            labels = [b["label"].tolist() for b in layer]
            assert labels == [[0, 1, 2], [3, 6, 6], [6, 7, 8]]  # 4 and 5 -> 6, the next good record
            assert layer.skipped == 2 and sorted(layer.bad_records) == [4, 5]
    folder, _, names, _ = image_folder
    listing = tmp_path / "holes.txt"
    listing.write_text(f"{names[0]} 0\nnot-there.png 1\n{names[2]} 2\n")
    caplog.set_level("WARNING", logger="caffedata")
    with caffedata.DataLayer(image_layer(listing, 3, root=f"{folder}/"), on_error="warn") as layer:
        for _ in range(2):
            assert [b["label"].tolist() for b in layer] == [[0, 2, 2]]
        assert layer.skipped == 1
    assert caplog.text.count("not-there.png") == 1  # logged once, not once per epoch
    with pytest.raises(SpecError, match="on_error must be one of"):
        caffedata.DataLayer(data_prototxt(db, 3), on_error="ignore")


def test_last_batch_policy_enum_and_strings(tmp_path):
    from caffedata.pipeline.sampling import LastBatch
    from conftest import data_prototxt, key, raw_datum, record_pixels, write_db

    db = write_db(tmp_path / "db", [(key(i), raw_datum(record_pixels(i, 1, 1, 1), i)) for i in range(7)])
    for policy in (LastBatch.ROLL_OVER, "roll_over", "ROLL_OVER"):
        with caffedata.DataLayer(data_prototxt(db, 3), last_batch_handle=policy) as layer:
            epochs = [[b["label"].astype(int).tolist() for b in layer] for _ in range(3)]
        # the docstring's worked table
        assert epochs == [[[0, 1, 2], [3, 4, 5]], [[6, 0, 1], [2, 3, 4]], [[5, 6, 0], [1, 2, 3], [4, 5, 6]]]
    with pytest.raises(SpecError, match="last_batch_handle must be one of"):
        caffedata.DataLayer(data_prototxt(db, 3), last_batch_handle="keep")


def test_image_data_rand_skip_rotates_the_list_by_a_seeded_draw(image_folder):
    folder, listing, _, _ = image_folder
    text = image_layer(listing, 7, root=f"{folder}/", params="rand_skip: 5")
    starts = set()
    for seed in range(6):
        with caffedata.DataLayer(text, seed=seed) as layer:
            labels = [int(v) // 3 for v in next(iter(layer))["label"]]
        skip = labels[0]
        assert skip < 5 and labels == [(skip + i) % 7 for i in range(7)]  # a rotation, every line once
        starts.add(skip)
    assert len(starts) > 1
