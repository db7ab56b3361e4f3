"""mx.io.CaffeDataIter as users call it: the FAQ snippet verbatim, Module.fit, lifecycle."""
import gzip
import os
import subprocess
import sys
import textwrap
import traceback

import mxnet as mx
import numpy as np
import pytest
from conftest import data_prototxt, key, raw_datum, record_pixels, write_db

import caffedata  # noqa: F401  (registers mx.io.CaffeDataIter)
from caffedata.errors import RecordError

DIGITS = os.path.join(os.path.dirname(caffedata.__file__), "data", "digits.csv.gz")


def test_import_registers_the_iterator():
    assert mx.io.CaffeDataIter is caffedata.CaffeDataIter
    assert issubclass(mx.io.CaffeDataIter, mx.io.DataIter)


@pytest.mark.parametrize("imports", ["import mxnet as mx\nimport caffedata",
                                     "import caffedata\nimport mxnet as mx"])
def test_adapters_installed_in_either_import_order(tmp_path, imports):
    code = imports + textwrap.dedent("""
        import sys
        assert mx.io.CaffeDataIter.__module__ == "caffedata.mxnet.iterator"
        out = mx.nd.CaffeOp(mx.nd.array([[-1.0, 2.0]]), prototxt='layer{type:"ReLU"}')
        print(out.asnumpy().tolist(), hasattr(mx.sym, "CaffeLoss"))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[[0.0,", "2.0]]", "True"]


def test_faq_snippet_runs_verbatim(tmp_path, monkeypatch, caplog):
    n = 1000
    os.makedirs(tmp_path / "caffe/examples/mnist")
    items = [(key(i), raw_datum(record_pixels(i, 1, 28, 28), i % 10)) for i in range(n)]
    write_db(tmp_path / "caffe/examples/mnist/mnist_test_lmdb", items)
    monkeypatch.chdir(tmp_path)
    flat = True
    # --- the MXNet FAQ's code, verbatim ---
    train = mx.io.CaffeDataIter(
        prototxt =
        'layer { \
            name: "mnist" \
            type: "Data" \
            top: "data" \
            top: "label" \
            include { \
                phase: TEST \
            } \
            transform_param { \
                scale: 0.00390625 \
            } \
            data_param { \
                source: "caffe/examples/mnist/mnist_test_lmdb" \
                batch_size: 100 \
                backend: LMDB \
            } \
        }',
        flat           = flat,
        num_examples   = 60000,
    )
    # --- end of the FAQ's code ---
    assert "wraps around" in caplog.text  # 60000 > 1000 records
    assert train.provide_data == [mx.io.DataDesc("data", (100, 784), np.float32, layout="NC")]
    assert train.provide_label == [mx.io.DataDesc("softmax_label", (100,), np.float32)]
    count = 0
    for batch in train:
        if count == 0:
            want = np.stack([record_pixels(i, 1, 28, 28).ravel() for i in range(100)]) * np.float32(1 / 256)
            np.testing.assert_array_equal(batch.data[0].asnumpy(), want)
            np.testing.assert_array_equal(batch.label[0].asnumpy(), np.arange(100) % 10)
        assert batch.pad == 0
        count += 1
    assert count == 600
    train.close()


def test_provide_data_known_before_reading_and_names(raw_db):
    db = raw_db(n=10, c=3, h=8, w=7)
    it = mx.io.CaffeDataIter(prototxt=data_prototxt(db, 4, transform="crop_size: 5"), data_name="img",
                             label_name="lbl", dtype="float64")
    assert it.provide_data[0].name == "img" and it.provide_data[0].shape == (4, 3, 5, 5)
    assert it.provide_data[0].layout == "NCHW" and it.provide_data[0].dtype == np.float64
    assert it.provide_label[0].name == "lbl" and it.provide_label[0].shape == (4,)
    batch = it.next()
    assert batch.data[0].dtype == np.float64 and batch.label[0].dtype == np.float64
    pads = [batch.pad] + [b.pad for b in it]
    assert pads == [0, 0, 2]
    it.close()


def test_data_iter_contract_iter_next_getters_and_len(raw_db):
    db = raw_db(n=10, c=1, h=2, w=3)
    it = mx.io.CaffeDataIter(prototxt=data_prototxt(db, 4), preprocess_threads=2)
    assert len(it) == 3  # ceil(10 / 4) with 'pad'
    with pytest.raises(mx.base.MXNetError, match="call iter_next"):
        it.getdata()
    seen, pads = [], []
    while it.iter_next():  # DataIter's documented protocol
        data, label = it.getdata(), it.getlabel()
        assert len(data) == 1 and data[0].shape == (4, 1, 2, 3)
        ids = it.getindex().tolist()
        assert label[0].asnumpy().tolist() == ids  # conftest: label = record id
        np.testing.assert_array_equal(data[0].asnumpy()[0], record_pixels(ids[0], 1, 2, 3))
        seen.append(ids)
        pads.append(it.getpad())
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]] and pads == [0, 0, 2]
    assert not it.iter_next()  # stays at the end until reset()
    it.reset()
    assert it.iter_next() and it.getindex().tolist() == [0, 1, 2, 3]
    discard = mx.io.CaffeDataIter(prototxt=data_prototxt(db, 4), last_batch_handle="discard")
    assert len(discard) == len(list(discard)) == 2
    discard.close()
    it.close()


def test_worker_error_reaches_next_with_traceback(tmp_path):
    good = raw_datum(record_pixels(0, 1, 4, 4), 0)
    items = [(key(i), good) for i in range(8)] + [(b"00000008_bad", good[:-3])]
    db = write_db(tmp_path / "bad", items)
    it = mx.io.CaffeDataIter(prototxt=data_prototxt(db, 3), preprocess_threads=2)
    with pytest.raises(RecordError, match="00000008_bad") as info:
        for _ in it:
            pass
    frames = traceback.extract_tb(info.value.__traceback__)
    assert any(f.name == "_build_batch" for f in frames)  # the worker's own frames travel along
    it.close()


def test_interpreter_exit_does_not_hang(raw_db, tmp_path):
    db = raw_db(n=200, h=16, w=16)
    code = textwrap.dedent(f"""
        import mxnet as mx, caffedata
        it = mx.io.CaffeDataIter(prototxt={data_prototxt(db, 2)!r}, preprocess_threads=2,
                                 prefetch_buffer=8)
        it.next()
        print("done")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "done" in out.stdout


def digits_lmdbs(tmp_path):
    """Real handwritten digits (UCI optical digits, bundled) as Caffe LMDBs: 1500 train, 297 val."""
    with gzip.open(DIGITS, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    images = np.clip(table[:, :64] * 16, 0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = table[:, 64].astype(int)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    train = write_db(tmp_path / "digits_train_lmdb",
                     [(key(i), raw_datum(images[i], labels[i])) for i in range(1500)])
    val = write_db(tmp_path / "digits_val_lmdb",
                   [(key(i), raw_datum(images[1500 + i], labels[1500 + i])) for i in range(len(labels) - 1500)])
    return train, val


def test_module_fit_reaches_90_percent_on_real_digits(tmp_path):
    train_db, val_db = digits_lmdbs(tmp_path)
    train = mx.io.CaffeDataIter(prototxt=data_prototxt(train_db, 64, phase="TRAIN",
                                                       transform="scale: 0.00390625"),
                                flat=True, shuffle=True, seed=1, preprocess_threads=2)
    val = mx.io.CaffeDataIter(prototxt=data_prototxt(val_db, 100, transform="scale: 0.00390625"),
                              flat=True)
    data = mx.sym.Variable("data")
    net = mx.sym.FullyConnected(data, num_hidden=64, name="fc1")
    net = mx.sym.Activation(net, act_type="relu")
    net = mx.sym.FullyConnected(net, num_hidden=10, name="fc2")
    net = mx.sym.SoftmaxOutput(net, name="softmax")
    mx.random.seed(0)
    mod = mx.mod.Module(net, context=mx.cpu())
    mod.fit(train, eval_data=val, num_epoch=15, optimizer="sgd",
            optimizer_params={"learning_rate": 0.2, "momentum": 0.9},
            initializer=mx.init.Xavier(), eval_metric="acc")
    acc = dict(mod.score(val, "acc"))["accuracy"]
    train.close(), val.close()
    assert acc >= 0.90, acc


def test_hdf5_layer_through_caffe_data_iter_extra_tops_join_the_data(tmp_path):
    import h5py

    with h5py.File(tmp_path / "a.h5", "w") as h5:
        h5["data"] = np.arange(12, dtype=np.float32).reshape(6, 2)
        h5["label"] = np.arange(6)
        h5["weight"] = np.arange(6, dtype=np.float32)[:, None] * 10
    (tmp_path / "list.txt").write_text(str(tmp_path / "a.h5"))
    text = (f'layer {{ type: "HDF5Data" top: "data" top: "label" top: "weight" '
            f'hdf5_data_param {{ source: "{tmp_path / "list.txt"}" batch_size: 4 }} }}')
    it = mx.io.CaffeDataIter(prototxt=text)
    assert [d.name for d in it.provide_data] == ["data", "weight"]
    assert [(d.name, d.shape) for d in it.provide_label] == [("softmax_label", (4,))]
    batch = next(it)
    np.testing.assert_array_equal(batch.data[0].asnumpy(), np.arange(8).reshape(4, 2))
    np.testing.assert_array_equal(batch.data[1].asnumpy()[:, 0], [0, 10, 20, 30])
    assert batch.label[0].asnumpy().tolist() == [0, 1, 2, 3]
    it.close()


def test_iterator_shard_errors_name_the_database(raw_db):
    from types import SimpleNamespace

    from caffedata.errors import SpecError

    db = raw_db(n=5)
    with pytest.raises(SpecError, match=f"{db}: num_parts=6 is larger than the 5 records"):
        mx.io.CaffeDataIter(prototxt=data_prototxt(db, 2), num_parts=6, part_index=0)
    with pytest.raises(SpecError, match="part_index must be in"):
        mx.io.CaffeDataIter(prototxt=data_prototxt(db, 2), num_parts=2, part_index=2)
    it = mx.io.CaffeDataIter(prototxt=data_prototxt(db, 2), shard=SimpleNamespace(num_workers=2, rank=1))
    labels = [l for b in it for l in b.label[0].asnumpy()[:2 - b.pad].tolist()]
    it.close()
    assert (it.num_parts, it.part_index) == (2, 1) and labels == [3.0, 4.0]
