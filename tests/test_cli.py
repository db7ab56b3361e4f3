"""The `caffedata` command line: exit codes, one-line errors, and the demo end to end."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import cv2  # noqa: E402
import lmdb  # noqa: E402

from caffedata.cli import main  # noqa: E402
from caffedata.proto import BlobProto, Datum  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(argv):
    """(exit code, stdout, stderr) of main(argv), catching SystemExit like the shell would."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "img"
    folder.mkdir()
    lines = []
    arrays = []
    for i in range(6):
        a = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i}.png"), a)
        arrays.append(a)
        lines.append(f"{i}.png {i % 2}\n")
    lines.insert(2, "gone.png 1\n")
    (tmp_path / "list.txt").write_text("".join(lines))
    return folder, tmp_path / "list.txt", arrays


def one_line_error(err):
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("caffedata: ") and "Traceback" not in err
    return lines[0]


def test_convert_mean_inspect_roundtrip(tmp_path, images):
    folder, listfile, arrays = images
    db = tmp_path / "db"
    code, out, err = run_cli(["convert", str(folder), str(listfile), str(db), "--quiet"])
    assert code == 0
    assert "wrote 6 of 7 images" in out
    assert "1 image(s) could not be read" in err and "line 3:" in err and "gone.png" in err
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        keys = [bytes(k) for k, _ in txn.cursor()]
        first = Datum.FromString(txn.get(b"00000000_0.png"))
    env.close()
    assert keys == [b"00000000_0.png", b"00000001_1.png", b"00000003_2.png", b"00000004_3.png",
                    b"00000005_4.png", b"00000006_5.png"]
    np.testing.assert_array_equal(np.frombuffer(first.data, np.uint8).reshape(3, 5, 4),
                                  arrays[0].transpose(2, 0, 1))

    code, out, err = run_cli(["mean", str(db), str(tmp_path / "m.binaryproto"), "--npy", "--quiet"])
    assert code == 0 and "mean_value channel [2]" in out
    blob = BlobProto.FromString((tmp_path / "m.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 5, 4)
    acc = np.zeros((3, 5, 4), np.float32)
    for a in arrays:
        acc += a.transpose(2, 0, 1)
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), acc / np.float32(6))

    code, out, err = run_cli(["inspect", str(db), "--json"])
    assert code == 0
    report = json.loads(out)
    assert report["count"] == 6 and report["labels"] == {"0": 3, "1": 3}
    assert report["shapes"] == {"3x5x4": 6}


def test_errors_are_one_line_with_exit_codes(tmp_path, images):
    folder, listfile, _ = images
    db = tmp_path / "db"
    assert run_cli(["convert", str(folder), str(listfile), str(db), "--quiet"])[0] == 0

    code, _, err = run_cli(["convert", str(folder), str(listfile), str(db), "--quiet"])
    assert code == 1 and "already exists" in one_line_error(err) and "--overwrite" in err

    code, _, err = run_cli(["convert", str(folder), str(tmp_path / "nolist.txt"), str(tmp_path / "x")])
    assert code == 1 and "nolist.txt: cannot read the list file" in one_line_error(err)

    code, _, err = run_cli(["mean", str(tmp_path / "missing")])
    assert code == 1 and "missing: no such database" in one_line_error(err)

    code, _, err = run_cli(["inspect", str(tmp_path / "missing")])
    assert code == 1 and "no such file or folder" in one_line_error(err)

    code, _, err = run_cli(["convert", "--resize-height", "x"])
    assert code == 2 and "see `caffedata convert --help`" in one_line_error(err)

    code, _, err = run_cli(["convert", str(folder), str(listfile), str(tmp_path / "y"), "--seed", "3"])
    assert code == 2 and "--seed only applies with --shuffle" in one_line_error(err)
    assert not (tmp_path / "y").exists()

    code, _, err = run_cli(["nonsense"])
    assert code == 2 and "invalid choice" in one_line_error(err)


def test_module_entry_point_no_traceback(tmp_path):
    # The installed package (CI), or whatever PYTHONPATH the developer runs the tests with.
    proc = subprocess.run([sys.executable, "-m", "caffedata", "inspect", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"caffedata: {tmp_path / 'nope'}: no such file or folder -- give a DB folder, a "
        f".binaryproto or a prototxt"]


def test_bench_json(tmp_path, images):
    folder, listfile, _ = images
    db = tmp_path / "db"
    assert run_cli(["convert", str(folder), str(listfile), str(db), "--quiet"])[0] == 0
    code, out, err = run_cli(["bench", "--db", str(db), "--batch-size", "4", "--crop-size", "3",
                              "--mirror", "--threads", "2", "--batches", "3", "--warmup", "1",
                              "--repeats", "1", "--json", str(tmp_path / "b.json")])
    assert code == 0, err
    saved = json.loads((tmp_path / "b.json").read_text())
    assert [r["threads"] for r in saved["results"]] == [1, 2]
    assert all(r["images_per_second"] > 0 and r["data_shape"] == [4, 3, 3, 3]
               for r in saved["results"])
    assert "images/s" in out


@pytest.mark.parametrize("command", [["--help"], ["inspect", "DB"], ["mean", "DB", "MEAN"],
                                     ["convert", "ROOT/", "LIST", "OUT"]])
def test_dataset_commands_never_import_mxnet(tmp_path, images, command):
    # The dataset commands must start fast (no multi-second mxnet import), and must work
    # where mxnet is not installed at all.
    root, listing, _ = images
    subs = {"DB": str(tmp_path / "db"), "MEAN": str(tmp_path / "mean.binaryproto"),
            "ROOT/": str(root) + "/", "LIST": str(listing), "OUT": str(tmp_path / "out_db")}
    code, _, err = run_cli(["convert", str(root) + "/", str(listing), subs["DB"]])
    assert code == 0, err
    argv = [subs.get(a, a) for a in command]
    probe = ("import sys\nfrom caffedata.cli import main\n"
             "try:\n    main(%r)\nexcept SystemExit:\n    pass\n"
             "print('mxnet imported:', 'mxnet' in sys.modules)" % (argv,))
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                       cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("mxnet imported: False"), r.stdout


def test_convert_help_names_tabs_and_strict(tmp_path, images):
    code, out, _ = run_cli(["convert", "--help"])
    assert code == 0 and "tab" in out and "--strict" in out
    folder, listfile, _ = images
    listfile.write_text("0.png\tnine\n")
    code, _, err = run_cli(["convert", str(folder), str(listfile), str(tmp_path / "db"), "--quiet",
                            "--strict"])
    assert code == 1 and "list.txt:1: label 'nine' is not an integer" in one_line_error(err)


def test_messages_point_the_right_way(tmp_path, images, monkeypatch):
    from caffedata.errors import DatabaseError, SpecError
    from caffedata.formats.prototxt import data_layer_spec

    monkeypatch.chdir(tmp_path)
    # a prototxt path that does not exist is a missing file, not a malformed prototxt
    for arg in ("no_such_file", "nets/train_val.prototxt", str(tmp_path / "x.pbtxt")):
        with pytest.raises(SpecError, match=rf"^{arg}: no such file -- give the path of a prototxt"):
            data_layer_spec(arg)
    with pytest.raises(SpecError, match=r"is a folder, not a prototxt file"):
        data_layer_spec(str(tmp_path))
    with pytest.raises(SpecError, match="malformed prototxt"):  # text stays text
        data_layer_spec('type: "Data" bogus_field: 1')
    # inspect on a list file says what it is and what to do
    folder, listfile, _ = images
    code, _, err = run_cli(["inspect", str(listfile)])
    line = one_line_error(err)
    assert code == 1 and "looks like an image list" in line and "caffedata convert ROOT/" in line
    (tmp_path / "notes.txt").write_text("just some notes\nabout the data\n")
    code, _, err = run_cli(["inspect", "notes.txt"])
    assert code == 1 and "notes.txt: not a database, a mean .binaryproto or a prototxt" in \
        one_line_error(err)
    # mean on a missing DB speaks of the argument, not of a prototxt
    for argv in (["mean", "no_lmdb"], ["inspect", "--backend", "lmdb", "img"]):
        code, _, err = run_cli(argv)
        line = one_line_error(err)
        assert code == 1 and "data_param" not in line, line
    assert "no_lmdb: no such database -- give the LMDB or LevelDB folder" in \
        one_line_error(run_cli(["mean", "no_lmdb"])[2])
    # an LMDB opened by py-lmdb in this process: say so, and how to fix it
    code, _, err = run_cli(["convert", str(folder), str(listfile), "db", "--quiet"])
    assert code == 0, err
    env = lmdb.open("db", readonly=True)
    try:
        code, _, err = run_cli(["mean", "db"])
        line = one_line_error(err)
        assert code == 1 and "already open in this process through py-lmdb" in line
        assert "close that handle (env.close())" in line and "LMDB folder" not in line
    finally:
        env.close()
    assert run_cli(["mean", "db", "--quiet"])[0] == 0
    from caffedata.tools.compute_mean import open_db_arg

    with pytest.raises(DatabaseError, match="this is an LMDB database, not LevelDB -- drop --backend"):
        open_db_arg("db", "leveldb")
