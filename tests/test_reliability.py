"""Issue 8's faults, each on a real database: no signal, no hang, no silently wrong record.

Signal and hang cases run in a subprocess with a timeout, so that a regression
fails the test instead of killing the run.
"""
import os
import shutil

import numpy as np
import pytest
from childproc import run_child
from conftest import data_prototxt, key, raw_datum, record_pixels, write_db

from caffedata.errors import DatabaseError, RecordError
from caffedata.pipeline import CaffePipeline
from caffedata.prototxt import data_layer_spec

def pipeline(source, batch_size, backend="LMDB", **kw):
    return CaffePipeline(data_layer_spec(data_prototxt(source, batch_size, backend)), **kw)


def labelled_db(path, labels, backend="lmdb", c=1, h=4, w=4):
    """Records key(i) whose label and pixels follow ``labels[i]``."""
    items = [(key(i), raw_datum(record_pixels(int(v), c, h, w), int(v))) for i, v in enumerate(labels)]
    return write_db(path, items, backend)


def epoch_labels(pipe):
    return np.concatenate([labels.copy() for _, labels, _ in pipe]).astype(int).tolist()


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
        from caffedata import db
        from caffedata.pipeline import CaffePipeline
        from caffedata.prototxt import data_layer_spec
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
        from caffedata.pipeline import CaffePipeline
        from caffedata.prototxt import data_layer_spec
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
        from caffedata.pipeline import CaffePipeline
        from caffedata.prototxt import data_layer_spec
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
        from caffedata.pipeline import CaffePipeline
        from caffedata.prototxt import data_layer_spec
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
        from caffedata.pipeline import CaffePipeline
        from caffedata.prototxt import data_layer_spec
        pipe = CaffePipeline(data_layer_spec({data_prototxt(path, 10, backend)!r}),
                             preprocess_threads=2, prefetch_buffer=3)
        pipe.start_epoch()
        first = [pipe.next_batch()[1].copy() for _ in range(3)]
        pid = os.fork()
        rest = []
        while True:
            try:
                rest.append(pipe.next_batch()[1].copy())
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
    assert first.next_batch()[1].astype(int).tolist() == list(range(7, 14))
    first.close()
