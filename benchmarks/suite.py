"""Issue 5's workloads against their baselines, A/B/A/B in one process, medians reported.

Every figure that matters is a ratio of two rates measured back to back in
the same round, so a noisy or shared machine moves both alike; the median
over rounds is kept.  caffedata's rates come from ``caffedata.bench.measure``
(the loop behind ``caffedata bench``): the CaffeDataIter pipeline (read,
decode, fused transform, threaded prefetch) with the main thread consuming.
"""
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

from caffedata.tools import bench
from caffedata.formats.mean import load_mean_file

from . import baselines
from .data import make_workloads

log = logging.getLogger("benchmarks")

TARGETS = {  # name: (threshold, what it means)
    "w1_vs_naive_1t": (3.0, "W1 >= 3x naive reader, 1 thread"),
    "w1_vs_naive_2t": (5.0, "W1 >= 5x naive reader with 2 threads"),
    "w2_vs_decode_1t": (0.9, "W2 >= 0.9x decode bound, 1 thread"),
    "w2_vs_decode_2t": (0.9, "W2 >= 0.9x decode bound, 2 threads"),
    "w2_vs_imagerecorditer_1t": (2.0, "W2 >= 2x ImageRecordIter, 1 thread"),
    "w2_vs_imagerecorditer_2t": (2.0, "W2 >= 2x ImageRecordIter, 2 threads"),
    "w3_vs_naive_1t": (6.0, "W3 >= 6x naive reader"),
    "w1_scaling_2t": (1.8, "W1: 2 threads >= 1.8x 1 thread"),
    "w1_leveldb_vs_lmdb_1t": (0.7, "W1 on LevelDB >= 0.7x W1 on LMDB, 1 thread"),
    "w1_leveldb_scaling_2t": (1.6, "W1 on LevelDB: 2 threads >= 1.6x 1 thread"),
    "w2_scaling_2t": (1.8, "W2: 2 threads >= 1.8x 1 thread"),
    "w4_epoch_vs_ndarrayiter": (1.05, "W4 epoch <= 1.05x NDArrayIter epoch (lower is better)"),
    "memory_peak_over_budget_mb": (0.0, "peak RSS <= prefetch buffers + 150 MB (MB over; <= 0 meets)"),
}
LOWER_IS_BETTER = {"w4_epoch_vs_ndarrayiter", "memory_peak_over_budget_mb"}


class Config:
    def __init__(self, quick=False, threads=(1, 2), rounds=None, workdir=None):
        self.quick = quick
        self.threads = tuple(sorted(set(int(t) for t in threads) | {1}))
        self.rounds = rounds or (3 if quick else 5)
        self.n_colour = 256 if quick else 512
        self.n_digits = 20000 if quick else 60000
        self.w1_batches = 6 if quick else 12
        self.w2_batches = 4 if quick else 8
        self.w3_batches = 30 if quick else 60
        self.naive_w1_batches = 3 if quick else 6
        self.naive_w3_batches = 10 if quick else 20
        self.memory_epochs = 20
        self.w4_examples = 20000 if quick else 60000
        self.workdir = workdir or os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "caffedata-bench")


def _median(xs):
    return float(statistics.median(xs)) if xs else float("nan")


def _naive_rate(path, batch_size, batches, **kw):
    reader = baselines.NaiveReader(path, batch_size, **kw)
    try:
        reader.next_batch()
        t = time.perf_counter()
        for _ in range(batches):
            reader.next_batch()
        return batches * batch_size / (time.perf_counter() - t)
    finally:
        reader.close()


def _iri_rate(paths, threads, batches, batch_size=64, crop=227):
    it = baselines.image_record_iter(paths["rec"], paths["idx"], batch_size, crop, paths["mean_nd"],
                                     threads)
    try:
        def one():
            try:
                b = it.next()
            except StopIteration:
                it.reset()
                b = it.next()
            b.data[0].wait_to_read()
        for _ in range(2):
            one()
        t = time.perf_counter()
        for _ in range(batches):
            one()
        return batches * batch_size / (time.perf_counter() - t)
    finally:
        del it


def _cd(spec, threads, batches, record_bytes, warmup=None):
    """Steady-state images/s: the warm-up lets the buffer pool fill (prefetch depth + threads +
    the consumer's batches), as it is after the first batches of a training run."""
    if warmup is None:
        warmup = 4 + threads + 4
    p = bench.measure(spec, threads, batches=batches, warmup=warmup, repeats=1,
                      record_bytes=record_bytes)
    return p.images_per_second


def _record_bytes(path):
    import lmdb

    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        n = txn.stat()["entries"]
        total = sum(len(v) for _, v in txn.cursor())
    env.close()
    return total / n


def leveldb_copy(lmdb_path, leveldb_path):
    """The same records in a LevelDB (written once, reused), for W1 on Caffe's other backend."""
    import lmdb
    import plyvel

    env = lmdb.open(lmdb_path, readonly=True, lock=False)
    try:
        # the marker names the record count: a copy made for --quick has fewer records
        ready = os.path.join(leveldb_path, f"READY-{env.stat()['entries']}")
        if os.path.exists(ready):
            return leveldb_path
        import shutil

        shutil.rmtree(leveldb_path, ignore_errors=True)
        db = plyvel.DB(leveldb_path, create_if_missing=True)
        with env.begin() as txn, db.write_batch() as wb:
            for k, v in txn.cursor():
                wb.put(k, v)
        db.close()
    finally:
        env.close()
    open(ready, "w").close()
    return leveldb_path


def run(cfg, progress=print):
    logging.getLogger("caffedata").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    paths = make_workloads(cfg.workdir, cfg.n_colour, cfg.n_digits)
    progress(f"data ready in {cfg.workdir} ({time.perf_counter() - t0:.1f}s)")
    mean = load_mean_file(paths["mean"])
    w1 = bench.spec_for_db(paths["w1"], 64, crop_size=227, mean_file=paths["mean"], mirror=True)
    w2 = bench.spec_for_db(paths["w2"], 64, crop_size=227, mean_file=paths["mean"], mirror=True)
    w3 = bench.spec_for_db(paths["w3"], 256, scale=0.00390625)
    w1_ldb = bench.spec_for_db(leveldb_copy(paths["w1"], os.path.join(cfg.workdir, "w1_leveldb")), 64,
                               backend="LEVELDB", crop_size=227, mean_file=paths["mean"], mirror=True)
    rb = {k: _record_bytes(paths[k]) for k in ("w1", "w2", "w3")}
    out_bytes = {"w1": 3 * 227 * 227 * 4, "w2": 3 * 227 * 227 * 4, "w3": 28 * 28 * 4}
    in_bytes = {"w1": 3 * 256 * 256, "w2": 3 * 256 * 256, "w3": 28 * 28}
    payloads = baselines._jpeg_payloads(paths["w2"], cfg.n_colour)
    T = cfg.threads
    rates = {k: [] for k in (
        ["w1_naive", "w3_naive", "w3_cd_1t", "w3_cd_1t_first_epoch", "w1_memcpy", "w3_memcpy"]
        + [f"w1_cd_{t}t" for t in T] + [f"w1_leveldb_cd_{t}t" for t in T] + [f"w2_cd_{t}t" for t in T]
        + [f"w2_decode_{t}t" for t in T] + [f"w2_iri_{t}t" for t in T])}
    ratios = {k: [] for k in (
        ["w3_vs_naive_1t"] + [f"w1_vs_naive_{t}t" for t in T] + [f"w2_vs_decode_{t}t" for t in T]
        + [f"w2_vs_imagerecorditer_{t}t" for t in T]
        + [f"w1_scaling_{t}t" for t in T if t > 1] + [f"w2_scaling_{t}t" for t in T if t > 1]
        + [f"w1_leveldb_vs_lmdb_{t}t" for t in T] + [f"w1_leveldb_scaling_{t}t" for t in T if t > 1]
        + ["w1_vs_memcpy_1t", "w3_vs_memcpy_1t"])}
    for r in range(cfg.rounds):
        # W1: naive and caffedata back to back.
        naive = _naive_rate(paths["w1"], 64, cfg.naive_w1_batches, crop=227, mean=mean, mirror=True)
        rates["w1_naive"].append(naive)
        cd = {t: _cd(w1, t, cfg.w1_batches, rb["w1"]) for t in T}
        for t in T:
            rates[f"w1_cd_{t}t"].append(cd[t])
            ratios[f"w1_vs_naive_{t}t"].append(cd[t] / naive)
            if t > 1:
                ratios[f"w1_scaling_{t}t"].append(cd[t] / cd[1])
        # W1 on LevelDB, right after W1 on LMDB
        cdl = {t: _cd(w1_ldb, t, cfg.w1_batches, rb["w1"]) for t in T}
        for t in T:
            rates[f"w1_leveldb_cd_{t}t"].append(cdl[t])
            ratios[f"w1_leveldb_vs_lmdb_{t}t"].append(cdl[t] / cd[t])
            if t > 1:
                ratios[f"w1_leveldb_scaling_{t}t"].append(cdl[t] / cdl[1])
        mc = baselines.memcpy_bound(in_bytes["w1"], out_bytes["w1"], 300 if cfg.quick else 600)
        rates["w1_memcpy"].append(mc)
        ratios["w1_vs_memcpy_1t"].append(cd[1] / mc)
        # W2: decode bound and ImageRecordIter at each thread count, then caffedata.
        cd2 = {}
        for t in T:
            dec = baselines.decode_bound(payloads, t, 64 * cfg.w2_batches)
            cd2[t] = _cd(w2, t, cfg.w2_batches, rb["w2"])
            iri = _iri_rate(paths, t, cfg.w2_batches)
            rates[f"w2_decode_{t}t"].append(dec)
            rates[f"w2_cd_{t}t"].append(cd2[t])
            rates[f"w2_iri_{t}t"].append(iri)
            ratios[f"w2_vs_decode_{t}t"].append(cd2[t] / dec)
            ratios[f"w2_vs_imagerecorditer_{t}t"].append(cd2[t] / iri)
            if t > 1:
                ratios[f"w2_scaling_{t}t"].append(cd2[t] / cd2[1])
        # W3
        naive3 = _naive_rate(paths["w3"], 256, cfg.naive_w3_batches, scale=0.00390625)
        # Steady state is the second epoch on: the first resolves each record's place in the map.
        cd3 = _cd(w3, 1, cfg.w3_batches, rb["w3"], warmup=-(-cfg.n_digits // 256) + 2)
        rates["w3_cd_1t_first_epoch"].append(_cd(w3, 1, cfg.w3_batches, rb["w3"], warmup=2))
        mc3 = baselines.memcpy_bound(in_bytes["w3"], out_bytes["w3"], 20000)
        rates["w3_naive"].append(naive3)
        rates["w3_cd_1t"].append(cd3)
        rates["w3_memcpy"].append(mc3)
        ratios["w3_vs_naive_1t"].append(cd3 / naive3)
        ratios["w3_vs_memcpy_1t"].append(cd3 / mc3)
        progress(f"round {r + 1}/{cfg.rounds}: W1 {cd[1]:,.0f} img/s ({cd[1] / naive:.2f}x naive), "
                 f"W2 {cd2[1]:,.0f} ({ratios['w2_vs_decode_1t'][-1]:.2f}x decode), "
                 f"W3 {cd3:,.0f} ({cd3 / naive3:.2f}x naive)")
    w4 = run_w4(paths["w3"], cfg, progress)
    mem = run_memory(paths["w3"], cfg, progress)
    result = {
        "machine": machine_info(),
        "config": {"quick": cfg.quick, "rounds": cfg.rounds, "threads": list(T),
                   "records": {"w1": cfg.n_colour, "w2": cfg.n_colour, "w3": cfg.n_digits}},
        "record_bytes": rb,
        "images_per_s": {k: _median(v) for k, v in rates.items()},
        "mb_per_s": {},
        "ratios": {k: _median(v) for k, v in ratios.items()},
        "ratio_rounds": ratios,
        "w4": w4,
        "memory": mem,
    }
    for k, v in result["images_per_s"].items():
        w = k[:2]
        if k.endswith("memcpy"):
            result["mb_per_s"][k] = v * (in_bytes[w] + out_bytes[w]) / 1e6
        elif w == "w2" and "decode" in k:
            result["mb_per_s"][k] = v * rb["w2"] / 1e6
        else:
            result["mb_per_s"][k] = v * rb[w] / 1e6  # database bytes consumed
    result["ratios"]["w4_epoch_vs_ndarrayiter"] = w4["ratio"]
    result["ratios"]["memory_peak_over_budget_mb"] = mem.get("over_budget_mb", float("nan"))
    result["targets"] = {k: {"target": thr, "what": what, "value": result["ratios"].get(k),
                             "met": _met(k, result["ratios"].get(k), thr)}
                         for k, (thr, what) in TARGETS.items()}
    result["first_benchmark"] = {  # issue 2 §10: (a) = W1, (b) = W3, naive reader beside
        "a_raw_3x256_crop227_mean_mirror_train": {"caffedata": result["images_per_s"]["w1_cd_1t"],
                                                   "naive": result["images_per_s"]["w1_naive"]},
        "b_1x28x28_scale": {"caffedata": result["images_per_s"]["w3_cd_1t"],
                            "naive": result["images_per_s"]["w3_naive"]},
    }
    return result


def _met(key, value, thr):
    if value is None or value != value:
        return None
    return value <= thr if key in LOWER_IS_BETTER else value >= thr


def run_w4(db, cfg, progress=print):
    """One Module.fit epoch of a small MLP: CaffeDataIter vs the same data in an NDArrayIter."""
    import mxnet as mx

    import caffedata  # noqa: F401

    B, n = 256, cfg.w4_examples
    proto = ('layer { type: "Data" top: "data" top: "label" transform_param { scale: 0.00390625 } '
             f'data_param {{ source: "{db}" batch_size: {B} backend: LMDB }} }}')
    # The same records, preloaded (read by the naive reader, already scaled).
    reader = baselines.NaiveReader(db, B, scale=0.00390625)
    xs, ys = [], []
    reader.cursor.first()
    reader.cursor.prev()  # next_batch starts with next(): land on the first record
    for _ in range(-(-n // B)):
        x, y = reader.next_batch()
        xs.append(x.reshape(B, -1))
        ys.append(y)
    reader.close()
    X, Y = np.concatenate(xs)[:n], np.concatenate(ys)[:n]

    def net():
        data = mx.sym.Variable("data")
        h = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=128), act_type="relu")
        h = mx.sym.Activation(mx.sym.FullyConnected(h, num_hidden=64), act_type="relu")
        return mx.sym.SoftmaxOutput(mx.sym.FullyConnected(h, num_hidden=10), name="softmax")

    def epoch(it):
        mod = mx.mod.Module(net(), context=mx.cpu())
        mx.random.seed(0)
        it.reset()
        t = time.perf_counter()
        mod.fit(it, num_epoch=1, optimizer="sgd", optimizer_params={"learning_rate": 0.1},
                initializer=mx.init.Xavier(), eval_metric="acc")
        mx.nd.waitall()
        return time.perf_counter() - t

    cd_it = mx.io.CaffeDataIter(prototxt=proto, flat=True, num_examples=n, preprocess_threads=1)
    nd_it = mx.io.NDArrayIter(X, Y, batch_size=B, last_batch_handle="pad", label_name="softmax_label")
    epoch(cd_it)
    epoch(nd_it)  # warm-up both
    t_cd, t_nd = [], []
    for _ in range(3 if cfg.quick else 5):
        t_cd.append(epoch(cd_it))
        t_nd.append(epoch(nd_it))
    cd_it.close()
    ratios = [a / b for a, b in zip(t_cd, t_nd)]
    progress(f"W4: Module.fit epoch {statistics.median(t_cd):.2f}s CaffeDataIter vs "
             f"{statistics.median(t_nd):.2f}s NDArrayIter ({statistics.median(ratios):.3f}x)")
    return {"examples": n, "epoch_s_caffedataiter": _median(t_cd), "epoch_s_ndarrayiter": _median(t_nd),
            "ratio": _median(ratios), "ratio_rounds": ratios}


def run_memory(db, cfg, progress=print):
    cmd = [sys.executable, "-m", "benchmarks.memory", db, str(cfg.memory_epochs), "1"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=900)
    try:
        mem = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        progress(f"memory run failed: {proc.stderr[-2000:]}")
        return {"error": proc.stderr[-2000:]}
    per = mem["rss_per_epoch_mb"]
    mem["budget_mb"] = mem["prefetch_buffers_mb"] + 150
    mem["over_budget_mb"] = mem["peak_growth_mb"] - mem["budget_mb"]
    mem["drift_mb_epoch2_to_last"] = per[-1] - per[min(1, len(per) - 1)]
    progress(f"memory: peak +{mem['peak_growth_mb']:.0f} MB over the {mem['base_rss_mb']:.0f} MB "
             f"baseline (budget {mem['budget_mb']:.0f} MB), RSS drift epoch 2 -> "
             f"{len(per)}: {mem['drift_mb_epoch2_to_last']:+.1f} MB")
    return mem


def machine_info():
    import cv2
    import mxnet as mx

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "mxnet": mx.__version__, "numpy": np.__version__, "opencv": cv2.__version__,
            "platform": platform.platform()}


def format_table(res):
    ips, mbs, rat = res["images_per_s"], res["mb_per_s"], res["ratios"]
    lines = [f"machine: {res['machine']['cpu']}, {res['machine']['cores']} cores; "
             f"medians of {res['config']['rounds']} A/B rounds",
             "",
             f"{'rate':<26}{'images/s':>12}{'MB/s':>10}"]
    for k in ips:
        lines.append(f"{k:<26}{ips[k]:>12,.0f}{mbs[k]:>10,.0f}")
    lines += ["", f"{'target':<58}{'value':>8}  {'met':>4}"]
    for k, t in res["targets"].items():
        v = t["value"]
        vs = "n/a" if v is None or v != v else f"{v:.2f}"
        met = {True: "yes", False: "NO", None: "-"}[t["met"]]
        lines.append(f"{t['what']:<58}{vs:>8}  {met:>4}")
    extra = [k for k in rat if k not in res["targets"]]
    if extra:
        lines += ["", "other ratios: " + ", ".join(f"{k} {rat[k]:.2f}" for k in extra)]
    fb = res["first_benchmark"]
    lines += ["", "issue 2 first benchmark (1 thread, images/s): "
              f"(a) {fb['a_raw_3x256_crop227_mean_mirror_train']['caffedata']:,.0f} vs naive "
              f"{fb['a_raw_3x256_crop227_mean_mirror_train']['naive']:,.0f}; "
              f"(b) {fb['b_1x28x28_scale']['caffedata']:,.0f} vs naive {fb['b_1x28x28_scale']['naive']:,.0f}"]
    return "\n".join(lines)
