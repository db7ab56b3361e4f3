"""caffedata.DataLayer: the framework-neutral iterator (no MXNet), as PyTorch/JAX users call it."""
import os

import numpy as np
import pytest
from conftest import data_prototxt, write_db, key, raw_datum, record_pixels

import caffedata
from caffedata.errors import SpecError


def test_import_caffedata_does_not_import_mxnet(tmp_path):
    import subprocess
    import sys

    code = "import sys, caffedata; caffedata.DataLayer; print('mxnet' in sys.modules, 'cv2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]  # the pipeline needs OpenCV, never mxnet


def test_batches_are_dicts_of_tops_with_pad_and_index(raw_db):
    db = raw_db(n=23, c=3, h=6, w=5)
    text = data_prototxt(db, 5).replace('top: "label"', 'top: "target"')
    with caffedata.DataLayer(text, preprocess_threads=2) as layer:
        assert layer.tops == ("data", "target")
        assert layer.shapes == {"data": (5, 3, 6, 5), "target": (5,)}
        assert len(layer) == 5  # ceil(23 / 5) under 'pad'
        batches = list(layer)
        assert len(batches) == 5
        for b, batch in enumerate(batches):
            assert set(batch) == {"data", "target"}
            assert batch["data"].shape == (5, 3, 6, 5) and batch["data"].dtype == np.float32
            expected = [(b * 5 + i) % 23 for i in range(5)]
            assert batch.index.tolist() == expected
            assert batch["target"].tolist() == expected  # conftest labels each record by its id
            np.testing.assert_array_equal(batch["data"][0], record_pixels(expected[0], 3, 6, 5))
        assert [b.pad for b in batches] == [0, 0, 0, 0, 2]


@pytest.mark.parametrize("handle, lengths", [("pad", [5, 5, 5]), ("discard", [4, 4, 4]),
                                              ("roll_over", [4, 5, 4])])
def test_len_is_the_batches_of_each_epoch(raw_db, handle, lengths):
    # 23 records, batch 5: roll_over gives 4 batches and carries 3 into epoch 2 (26 -> 5
    # batches, carry 1), then 24 -> 4... len() always equals the epoch actually run.
    layer = caffedata.DataLayer(data_prototxt(raw_db(n=23), 5), last_batch_handle=handle,
                                preprocess_threads=1)
    seen = []
    for _ in range(3):
        predicted = len(layer)
        got = sum(1 for _ in layer)
        assert predicted == got
        seen.append(got)
    layer.close()
    assert seen == lengths


def test_dlpack_hand_off_shares_memory_and_keeps_the_buffer(raw_db):
    layer = caffedata.DataLayer(data_prototxt(raw_db(n=40), 4), preprocess_threads=2)
    it = iter(layer)
    batch = next(it)
    held = np.from_dlpack(batch["data"])  # what torch.from_dlpack / jax.dlpack receive
    assert np.shares_memory(held, batch["data"])
    expected = held.copy()
    del batch
    for _ in it:  # the pool must not rewrite a buffer a DLPack consumer still holds
        pass
    np.testing.assert_array_equal(held, expected)
    layer.close()


def test_thread_defaults_and_bad_thread_counts(raw_db):
    db = raw_db(n=10)
    layer = caffedata.DataLayer(data_prototxt(db, 5))
    assert layer.preprocess_threads == max(1, min(4, len(os.sched_getaffinity(0))))
    layer.close()
    with pytest.raises(SpecError, match="preprocess_threads must be >= 1"):
        caffedata.DataLayer(data_prototxt(db, 5), preprocess_threads=0)


def test_same_seed_same_batches_with_default_and_one_thread(raw_db):
    db = raw_db(n=17, h=8, w=8)
    transform = "crop_size: 5 mirror: true"
    runs = []
    for threads in (None, 1):
        with caffedata.DataLayer(data_prototxt(db, 4, phase="TRAIN", transform=transform), seed=5,
                                 shuffle=True, preprocess_threads=threads) as layer:
            runs.append([b["data"].copy() for b in layer])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_phase_picks_the_data_layer_of_a_train_val_net(tmp_path):
    for name, n in (("train_db", 12), ("test_db", 6)):
        write_db(tmp_path / name, [(key(i), raw_datum(record_pixels(i, 1, 2, 2), i)) for i in range(n)])
    net = (data_prototxt(tmp_path / "train_db", 4, phase="TRAIN")
           + data_prototxt(tmp_path / "test_db", 3, phase="TEST")
           + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" }')
    path = tmp_path / "train_val.prototxt"
    path.write_text(net)
    with caffedata.DataLayer(str(path), phase="TRAIN") as train, \
            caffedata.DataLayer(str(path), phase="test") as test:
        assert (train.batch_size, train.num_examples) == (4, 12)
        assert (test.batch_size, test.num_examples) == (3, 6)
    with pytest.raises(SpecError, match="phase must be 'TRAIN' or 'TEST'"):
        caffedata.DataLayer(str(path), phase="VAL")


def test_unbuilt_source_folder_names_the_fix(tmp_path):
    import shutil
    import subprocess
    import sys

    # A copy of the package without its compiled core, as a fresh clone is before building.
    shutil.copytree(os.path.dirname(caffedata.__file__), tmp_path / "caffedata",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    code = "import caffedata.pipeline.engine"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=str(tmp_path))
    assert r.returncode == 1
    assert "compiled core (_fast) is missing" in r.stderr and "pip install -e ." in r.stderr


def test_looking_for_mxnet_after_import_caffedata_gives_the_plain_answer(tmp_path):
    # caffedata watches for `import mxnet`; a mere look-up must neither raise (e.g. the
    # numpy check where mxnet is absent) nor change the answer.
    import subprocess
    import sys

    probe = "import importlib.util; print(importlib.util.find_spec('mxnet') is None)"
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                           cwd=str(tmp_path))
    watched = subprocess.run([sys.executable, "-c", "import caffedata; " + probe], capture_output=True,
                             text=True, timeout=120, cwd=str(tmp_path))
    assert plain.returncode == 0 and watched.returncode == 0, watched.stderr
    assert watched.stdout == plain.stdout
