"""`caffedata demo` end to end: build the digits LMDB, train through mx.io.CaffeDataIter."""
import lmdb
import mxnet  # noqa: F401  (the demo trains with MXNet: a hard dependency of these tests)

from test_cli import run_cli


def test_demo_short_run(tmp_path):
    code, out, err = run_cli(["demo", "--epochs", "3", "--workdir", str(tmp_path / "w")])
    assert code == 0, err
    assert "epoch  3:" in out
    acc = float(out.rsplit("validation accuracy ", 1)[1].split()[0])
    assert acc >= 0.9
    w = tmp_path / "w"
    for name in ("digits_train_lmdb", "digits_test_lmdb", "mean.binaryproto", "train.prototxt",
                 "test.prototxt", "train.txt", "test.txt"):
        assert (w / name).exists(), name
    env = lmdb.open(str(w / "digits_test_lmdb"), readonly=True, lock=False)
    assert env.stat()["entries"] == 360  # every 5th of the 1797 digits
    env.close()
