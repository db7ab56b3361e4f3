"""convert --overwrite swaps databases atomically; SIGTERM and SIGKILL leave no temporary folders for good."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import package_env

import cv2  # noqa: E402
import lmdb  # noqa: E402
import plyvel  # noqa: E402

from caffedata.tools.convert import _host_tag, convert_imageset, remove_stale_tmp  # noqa: E402
from caffedata.sources.db import open_source  # noqa: E402
from caffedata.proto import Datum  # noqa: E402



def child_env():
    return package_env()


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if "caffedata-tmp" in n)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        cv2.imwrite(str(folder / f"im{i}.png"), rng.integers(0, 256, (4, 3, 3), dtype=np.uint8))
    return folder


def write_version(tmp_path, version):
    """A list whose version v has 2 + v lines, every label v: a reader can tell versions apart."""
    lst = tmp_path / f"list{version}.txt"
    lst.write_text("".join(f"im{i}.png {version}\n" for i in range(2 + version)))
    return lst


def labels_lmdb(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [Datum.FromString(v).label for _, v in txn.cursor()]
    finally:
        env.close()


READER = textwrap.dedent("""
    import json, os, sys, threading
    target, stop, ready, backend = sys.argv[1:5]
    from caffedata.sources.db import open_source
    from caffedata.proto import Datum
    if backend == "lmdb":
        import lmdb
    else:
        import plyvel
    errors, seen, busy, stats = [], set(), 0, [0, 0]

    def check(labels, how):
        if not labels or len(set(labels)) != 1 or len(labels) != 2 + labels[0]:
            errors.append(f"{how}: inconsistent DB {labels}")
        else:
            seen.add(labels[0])

    def stat_loop():  # the target must never be missing, not even for a microsecond
        name = os.path.join(target, "data.mdb" if backend == "lmdb" else "CURRENT")
        while not os.path.exists(stop):
            for _ in range(1000):
                stats[0] += 1
                if not os.path.exists(name):
                    stats[1] += 1

    t = threading.Thread(target=stat_loop)
    t.start()
    open(ready, "w").close()
    while not os.path.exists(stop):
        try:
            if backend == "lmdb":
                env = lmdb.open(target, readonly=True, lock=False)
                with env.begin() as txn:
                    check([Datum.FromString(v).label for _, v in txn.cursor()], "lmdb")
                env.close()
            else:
                db = plyvel.DB(target)
                check([Datum.FromString(v).label for _, v in db.iterator()], "plyvel")
                db.close()
            with open_source(target, "auto") as src:
                check([Datum.FromString(bytes(v)).label for _, v in src.items()], "open_source")
        except Exception as exc:
            if backend == "leveldb" and "lock" in str(exc).lower():
                busy += 1  # LevelDB: the swap holds the old DB's LOCK for a moment
            else:
                errors.append(f"{type(exc).__name__}: {exc}")
    t.join()
    print(json.dumps({"errors": errors[:10], "seen": sorted(seen), "busy": busy,
                      "stats": stats[0], "missing": stats[1]}))
""")


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_overwrite_is_atomic_for_a_concurrent_reader(tmp_path, images, backend):
    target = tmp_path / "db"
    convert_imageset(images, write_version(tmp_path, 0), target, backend=backend, progress=False)
    stop, ready = tmp_path / "stop", tmp_path / "ready"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(target), str(stop), str(ready),
                               backend], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=child_env())
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert reader.poll() is None, reader.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for version in range(1, 9):
            convert_imageset(images, write_version(tmp_path, version), target, backend=backend,
                             overwrite=True, progress=False, threads=1)
            time.sleep(0.05)
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err
    report = json.loads(out)
    assert report["errors"] == []
    assert report["missing"] == 0 and report["stats"] > 0
    assert len(report["seen"]) >= 2, report  # the reader really ran across swaps
    assert labels_lmdb(target) == [8] * 10 if backend == "lmdb" else True
    assert leftovers(tmp_path) == []


def test_symlinked_target_is_swapped_and_readers_follow_symlinks(tmp_path, images):
    real = tmp_path / "v0"
    convert_imageset(images, write_version(tmp_path, 0), real, progress=False)
    link = tmp_path / "db"
    os.symlink(real, link)
    # readers follow a symlinked DB folder: py-lmdb, caffedata's detection, plyvel
    assert labels_lmdb(link) == [0, 0]
    with open_source(str(link), "auto") as src:
        assert type(src).__name__ == "LMDBSource" and len(src) == 2
    convert_imageset(images, write_version(tmp_path, 1), tmp_path / "lv", backend="leveldb",
                     progress=False)
    os.symlink(tmp_path / "lv", tmp_path / "lvlink")
    with open_source(str(tmp_path / "lvlink"), "auto") as src:
        assert type(src).__name__ == "LevelDBSource" and len(src) == 3
    db = plyvel.DB(str(tmp_path / "lvlink"))
    assert len(list(db.iterator())) == 3
    db.close()
    # overwriting the link puts the new DB there and keeps the folder it pointed to
    convert_imageset(images, write_version(tmp_path, 2), link, overwrite=True, progress=False)
    assert not os.path.islink(link) and labels_lmdb(link) == [2] * 4
    assert labels_lmdb(real) == [0, 0]
    assert leftovers(tmp_path) == []


SLOW_CONVERT = textwrap.dedent("""
    import sys
    from caffedata.cli import main
    sys.exit(main(["convert", sys.argv[1], sys.argv[2], sys.argv[3], "--quiet", "--threads", "1"]))
""")


def start_slow_convert(tmp_path):
    """A convert of 40000 lines in a subprocess, returned once its temporary DB holds data."""
    folder = tmp_path / "big"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((32, 32, 3), 7, np.uint8))
    (tmp_path / "big.txt").write_text("a.png 1\n" * 40000)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, str(folder),
                             str(tmp_path / "big.txt"), str(tmp_path / "db")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())
    deadline = time.monotonic() + 90
    while True:
        tmp = leftovers(tmp_path)
        if tmp and os.path.exists(tmp_path / tmp[0] / "data.mdb"):
            # at least one 1000-record commit has landed
            if os.path.getsize(tmp_path / tmp[0] / "data.mdb") > 200_000:
                return proc, tmp[0]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the conversion never started"
        time.sleep(0.02)


def test_sigterm_removes_the_temporary_db(tmp_path):
    proc, tmp = start_slow_convert(tmp_path)
    assert f"-{_host_tag()}-{proc.pid}-" in tmp  # the owner's pid is in the name
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["caffedata: terminated (SIGTERM); nothing was written at "
                                        "the target"]
    assert leftovers(tmp_path) == [] and not (tmp_path / "db").exists()


def test_next_convert_removes_temporary_folders_of_killed_runs(tmp_path, images):
    proc, tmp = start_slow_convert(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert leftovers(tmp_path) == [tmp]  # SIGKILL cannot be handled: the folder stays...
    # ...but a live process's folder (this one's pid) and another target's are never touched
    live = tmp_path / f".db.caffedata-tmp-{_host_tag()}-{os.getpid()}-00000000"
    other = tmp_path / f".other.caffedata-tmp-{_host_tag()}-{proc.pid}-00000000"
    live.mkdir()
    other.mkdir()
    res = convert_imageset(images, write_version(tmp_path, 1), tmp_path / "db", progress=False)
    assert res.count == 3 and labels_lmdb(tmp_path / "db") == [1, 1, 1]
    assert leftovers(tmp_path) == sorted([live.name, other.name])
    assert remove_stale_tmp(tmp_path / "other") == [other.name]


DEFERRED = textwrap.dedent("""
    import os, signal, sys
    from caffedata.tools.convert import Terminated, atomic_db
    target = sys.argv[1]
    building = atomic_db(target, overwrite=True)
    try:
        with building as tmp:
            os.mkdir(tmp)
            open(os.path.join(tmp, "data.mdb"), "w").close()
            building._term.defer = True      # as during the swap: the signal is only noted
            os.kill(os.getpid(), signal.SIGTERM)
            building._term.defer = False
    except Terminated as exc:
        print("terminated", exc.completed, os.path.exists(os.path.join(target, "data.mdb")))
""")


def test_sigterm_during_the_swap_lets_the_swap_finish(tmp_path):
    proc = subprocess.run([sys.executable, "-c", DEFERRED, str(tmp_path / "db")],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["terminated", "True", "True"]
    assert leftovers(tmp_path) == []
