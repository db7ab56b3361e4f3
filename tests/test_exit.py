"""Interpreter exit after reading an encoded database: clean, every time, never an abort.

A daemon worker left inside cv2.imdecode (C++) when the interpreter finalises
is unwound by pthread_exit through OpenCV's frames: "terminate called without
an active exception", exit code 134.  Each mode runs in 20 fresh subprocesses,
each with a timeout (a hang at exit fails the test instead of the run).
"""
import subprocess

import numpy as np
import pytest
from childproc import run_child
from conftest import encoded_datum, jpeg_bytes, key, write_db

RUNS = 20

CHILD = """
    db, mode = sys.argv[1:3]
    from caffedata.pipeline.engine import CaffePipeline
    from caffedata.formats.prototxt import data_layer_spec
    spec = data_layer_spec('layer { name: "d" type: "Data" top: "data" top: "label" '
                           'include { phase: TRAIN } transform_param { mirror: true crop_size: 96 } '
                           'data_param { source: "%s" batch_size: 8 backend: LMDB } }' % db)
    pipe = CaffePipeline(spec, preprocess_threads=2, prefetch_buffer=4, shuffle=True)
    if mode == "full_epoch":
        for batch in pipe:
            pass
    else:
        pipe.start_epoch()
        pipe.next_batch()
        pipe.next_batch()
        if mode == "record_error":
            while True:
                pipe.next_batch()  # a corrupt record ahead: RecordError, uncaught
        if mode == "close":
            pipe.close()
"""


@pytest.fixture(scope="module")
def jpeg_db(tmp_path_factory):
    rng = np.random.default_rng(0)
    items = []
    for i in range(96):
        image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        items.append((key(i), encoded_datum(jpeg_bytes(image), i)))
    good = write_db(tmp_path_factory.mktemp("exit") / "jpeg", items)
    # For the error mode: one record that is not an image, after a few good batches.
    items[40] = (key(40), encoded_datum(b"\xff\xd8 not a jpeg", 40))
    bad = write_db(tmp_path_factory.mktemp("exit") / "jpeg_bad", items)
    return good, bad


@pytest.mark.parametrize("mode", ["two_batches", "full_epoch", "record_error", "close"])
def test_exit_is_clean_after_reading_jpeg(jpeg_db, mode):
    good, bad = jpeg_db
    db = bad if mode == "record_error" else good
    expected_rc = 1 if mode == "record_error" else 0
    failures = []
    for run in range(RUNS):
        try:
            proc = run_child(CHILD, db, mode, timeout=60)
        except subprocess.TimeoutExpired:
            failures.append(f"run {run}: hung at exit (killed after 60 s)")
            continue
        if proc.returncode != expected_rc or "terminate called" in proc.stderr:
            failures.append(f"run {run}: exit code {proc.returncode}: {proc.stderr[-300:]}")
        elif mode == "record_error":
            assert "RecordError" in proc.stderr and key(40).decode() in proc.stderr, proc.stderr
    assert not failures, f"{len(failures)} of {RUNS} runs did not exit cleanly:\n" + "\n".join(failures)
