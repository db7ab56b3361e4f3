"""``python -m benchmarks.bench_dist [--quick]``: the parameter server's overhead on one machine.

One job, three ways, all training the MXNet FAQ's MLP (CaffeOp layers) with
SGD on the bundled digits as a 1x28x28 Caffe LMDB read by ``CaffeDataIter``
(shuffled), with the same global batch, hence the same optimizer steps:

* ``local 1x2``: 1 worker x 2 preprocess threads, ``kvstore='local'``, in
  this process (the baseline);
* ``dist 1x2``: 1 worker x 2 threads under ``caffedata launch -n 1 -s 1``,
  ``kvstore='dist_sync'`` (the parameter server alone);
* ``dist 2x1``: 2 workers x 1 thread under ``caffedata launch -n 2 -s 1``,
  each on its shard with half the batch.

Samples/s are counted by the training loops themselves from the end of the
first (warm-up) epoch to the end of the last, so process start-up and
imports are not included; for 2 workers the job's rate is both workers'
samples over the longer of their times.  Ratios are against the baseline
measured in the same run.  This is not a target: on one machine the
parameter server can only add work.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOTXT = ('layer {{ name: "digits" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }} '
            'transform_param {{ scale: 0.00390625 }} '
            'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}')


def make_db(path):
    """The 1797 bundled digits, resized to MNIST's 28x28, as a Caffe LMDB (caffedata's writer)."""
    import cv2

    from caffedata.tools.convert import DBWriter
    from caffedata.datasets import load_digits
    from caffedata.formats.datum import array_to_datum_bytes

    if os.path.exists(path):
        return path
    images, labels = load_digits()
    writer = DBWriter(path, "lmdb")
    writer.write([(b"%08d" % i, array_to_datum_bytes(cv2.resize(img, (28, 28))[None], int(label)))
                  for i, (img, label) in enumerate(zip(images, labels))])
    writer.close()
    return path


def faq_mlp():
    import mxnet as mx

    def ip(n):
        return 'layer{type:"InnerProduct" inner_product_param{num_output:%d}}' % n

    x = mx.sym.Variable("data")
    for name, n in (("fc1", 128), ("fc2", 64)):
        x = mx.sym.CaffeOp(data_0=x, num_weight=2, name=name, prototxt=ip(n))
        x = mx.sym.CaffeOp(data_0=x, name=f"{name}_tanh", prototxt='layer{type:"TanH"}')
    x = mx.sym.CaffeOp(data_0=x, num_weight=2, name="fc3", prototxt=ip(10))
    return mx.sym.CaffeLoss(data=x, label=mx.sym.Variable("softmax_label"), name="softmax",
                            prototxt='layer{type:"SoftmaxWithLoss"}')


def fit_and_time(db, batch, threads, epochs, kvstore):
    """Train; returns samples (after the warm-up epoch) and the seconds they took."""
    import mxnet as mx

    import caffedata  # noqa: F401  (mx.io.CaffeDataIter, mx.sym.CaffeOp)

    kv = mx.kv.create(kvstore)
    it = mx.io.CaffeDataIter(prototxt=PROTOTXT.format(source=db, batch=batch), flat=True, shuffle=True,
                             seed=1, preprocess_threads=threads,
                             shard=kv if kvstore.startswith("dist") else None)
    batches, ends = [0], []

    def count(param):
        batches[0] += 1

    mx.random.seed(1)
    mod = mx.mod.Module(faq_mlp(), context=mx.cpu())
    mod.fit(it, num_epoch=epochs, kvstore=kv, optimizer="sgd",
            optimizer_params={"learning_rate": 0.1, "momentum": 0.9},
            initializer=mx.init.Xavier(factor_type="in", magnitude=2.34),
            eval_metric=mx.metric.Caffe(), batch_end_callback=count,
            epoch_end_callback=lambda *a: ends.append((time.perf_counter(), batches[0])))
    it.close()
    (t0, b0), (t1, b1) = ends[0], ends[-1]
    return {"rank": kv.rank, "samples": (b1 - b0) * batch, "seconds": t1 - t0}


def launched(n, threads, db, batch, epochs, workdir, timeout):
    """A ``caffedata launch -n N -s 1`` run of this module's worker; the job's samples/s."""
    out = tempfile.mkdtemp(dir=workdir)
    cmd = [sys.executable, "-m", "caffedata.cli", "launch", "-n", str(n), "-s", "1",
           "--timeout", str(timeout), "--", sys.executable, "-m", "benchmarks.bench_dist", "--worker",
           "--db", db, "--batch", str(batch // n), "--threads", str(threads),
           "--epochs", str(epochs), "--out", out]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"launch -n {n} failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                           f"\n{proc.stderr[-3000:]}")
    results = []
    for name in sorted(os.listdir(out)):
        with open(os.path.join(out, name)) as f:
            results.append(json.load(f))
    return sum(r["samples"] for r in results) / max(r["seconds"] for r in results)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_dist", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs (about a minute)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs, the first one untimed (default 8, quick 3)")
    p.add_argument("--batch", type=int, default=64, help="global batch size (default 64)")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "caffedata-bench-dist"))
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 8)
    if args.worker:
        res = fit_and_time(args.db, args.batch, args.threads, epochs, "dist_sync")
        with open(os.path.join(args.out, f"rank{res['rank']}.json"), "w") as f:
            json.dump(res, f)
        return 0
    os.makedirs(args.workdir, exist_ok=True)
    db = make_db(os.path.join(args.workdir, "digits28_lmdb"))
    base = fit_and_time(db, args.batch, 2, epochs, "local")
    rates = {"local 1x2": base["samples"] / base["seconds"]}
    rates["dist 1x2"] = launched(1, 2, db, args.batch, epochs, args.workdir, 600)
    rates["dist 2x1"] = launched(2, 1, db, args.batch, epochs, args.workdir, 600)
    print(f"FAQ MLP on 1797 digits (1x28x28 LMDB), global batch {args.batch}, {epochs - 1} timed "
          f"epochs, {os.cpu_count()} cores")
    print(f"{'job':<12}{'samples/s':>12}{'vs local 1x2':>15}")
    for name, rate in rates.items():
        print(f"{name:<12}{rate:>12.0f}{rate / rates['local 1x2']:>14.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"epochs": epochs, "batch": args.batch, "samples_per_s": rates}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
