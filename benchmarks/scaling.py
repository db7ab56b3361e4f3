"""Thread scaling of W1 and W2: ``python -m benchmarks.scaling --threads 1,2,4,8,16``.

Per round and thread count it measures the caffedata pipeline (``caffedata.bench.measure``)
and, for W2, the decode bound at the same thread count; W1 also has the naive
reader (one thread) beside it.  Medians over rounds; speed-ups are against one
thread in the same round.  It times the framework-neutral pipeline only, so no
MXNet object is involved (on a machine without MXNet, register the ``caffedata``
package path without running its ``__init__`` to use it).
"""
import argparse
import json
import os
import statistics
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling")
    p.add_argument("--threads", default="1,2,4,8,16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=1024, help="records in W1/W2")
    p.add_argument("--seconds", type=float, default=1.5, help="rough time per measurement")
    p.add_argument("--workdir", default="/tmp/caffedata-bench-scaling")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import logging

    from caffedata.tools import bench
    from caffedata.formats.mean import load_mean_file

    from . import baselines
    from .data import make_workloads

    logging.getLogger("caffedata").setLevel(logging.ERROR)
    threads = [int(t) for t in args.threads.split(",")]
    t0 = time.perf_counter()
    paths = make_workloads(args.workdir, args.images, 1000, recordio=False)
    print(f"data ready ({time.perf_counter() - t0:.1f}s); cores: {os.cpu_count()}", file=sys.stderr)
    mean = load_mean_file(paths["mean"])
    w1 = bench.spec_for_db(paths["w1"], 64, crop_size=227, mean_file=paths["mean"], mirror=True)
    w2 = bench.spec_for_db(paths["w2"], 64, crop_size=227, mean_file=paths["mean"], mirror=True)
    payloads = baselines._jpeg_payloads(paths["w2"], args.images)
    rates = {}

    def add(key, v):
        rates.setdefault(key, []).append(v)

    def batches_for(rate):  # about args.seconds of work, at least 6 batches
        return max(6, int(rate * args.seconds / 64))

    est = {}
    for r in range(args.rounds):
        from .suite import _naive_rate

        add("w1_naive_1t", _naive_rate(paths["w1"], 64, 6, crop=227, mean=mean, mirror=True))
        for t in threads:
            for name, spec in (("w1", w1), ("w2", w2)):
                n = batches_for(est.get((name, t), 2000 * t))
                v = bench.measure(spec, t, batches=n, warmup=8 + t, repeats=1).images_per_second
                est[(name, t)] = v
                add(f"{name}_cd_{t}t", v)
            add(f"w2_decode_{t}t", baselines.decode_bound(payloads, t, batches_for(est[("w2", t)]) * 64))
        line = ", ".join(f"{t}t W1 {rates[f'w1_cd_{t}t'][-1]:,.0f} W2 {rates[f'w2_cd_{t}t'][-1]:,.0f}"
                         for t in threads)
        print(f"round {r + 1}: {line}", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = []
    for t in threads:
        rows.append({
            "threads": t,
            "w1_images_per_s": med[f"w1_cd_{t}t"],
            "w1_speedup": statistics.median([a / b for a, b in zip(rates[f"w1_cd_{t}t"], rates["w1_cd_1t"])]),
            "w1_vs_naive_1t": statistics.median([a / b for a, b in zip(rates[f"w1_cd_{t}t"], rates["w1_naive_1t"])]),
            "w2_images_per_s": med[f"w2_cd_{t}t"],
            "w2_speedup": statistics.median([a / b for a, b in zip(rates[f"w2_cd_{t}t"], rates["w2_cd_1t"])]),
            "w2_decode_images_per_s": med[f"w2_decode_{t}t"],
            "w2_vs_decode": statistics.median([a / b for a, b in zip(rates[f"w2_cd_{t}t"], rates[f"w2_decode_{t}t"])]),
        })
    print(f"{'threads':>7} {'W1 img/s':>10} {'speed-up':>8} {'x naive':>8} {'W2 img/s':>10} "
          f"{'speed-up':>8} {'decode':>9} {'x decode':>8}")
    for row in rows:
        print(f"{row['threads']:>7} {row['w1_images_per_s']:>10,.0f} {row['w1_speedup']:>7.2f}x "
              f"{row['w1_vs_naive_1t']:>7.2f}x {row['w2_images_per_s']:>10,.0f} {row['w2_speedup']:>7.2f}x "
              f"{row['w2_decode_images_per_s']:>9,.0f} {row['w2_vs_decode']:>7.2f}x")
    print(f"naive reader (W1, 1 thread): {med['w1_naive_1t']:,.0f} img/s; cores {os.cpu_count()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cores": os.cpu_count(), "rows": rows, "rates": rates}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
