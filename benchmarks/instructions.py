"""Instructions per batch of the Data-layer pipeline, two checkouts compared under callgrind.

Wall-clock ratios on a shared VM vary by +-30% between rounds, too much to see a
3% cost.  Instruction counts do not depend on the load: this runs W1 (raw
256x256 -> crop 227, mean file, mirror) and W3 (28x28 digits, scale) at 1 thread
under ``valgrind --tool=callgrind`` for two batch counts per checkout, and takes
the difference, so start-up and warm-up cancel out.  It needs valgrind and the
benchmark datasets (``python -m benchmarks`` makes them).

    python -m benchmarks.instructions BASE_CHECKOUT [NEW_CHECKOUT (default: this one)]

Each checkout must have its compiled core in place (``pip install -e .`` or
``python setup.py build_ext --inplace``).  Prints instructions per batch and
NEW / BASE for each workload.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

from .suite import Config

RUN = r"""
import sys
from caffedata.tools import bench
w, n, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if w == "W1":
    spec = bench.spec_for_db(root + "/w1_lmdb", 64, crop_size=227, mean_file=root + "/mean.binaryproto",
                             mirror=True)
else:
    spec = bench.spec_for_db(root + "/w3_lmdb", 256, scale=0.00390625)
bench.measure(spec, 1, batches=n, warmup=2, repeats=1, record_bytes=1)
"""
BATCHES = {"W1": (3, 9), "W3": (10, 40)}


def instructions(checkout, workload, batches, data_root):
    """Total instructions (all threads) of one run, from callgrind's summary line."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        script = os.path.join(tmp, "run.py")
        with open(script, "w") as f:
            f.write(RUN)
        env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, script,
                        workload, str(batches), data_root], cwd=tmp, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            match = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        return int(match.group(1))


def per_batch(checkout, workload, data_root):
    few, many = BATCHES[workload]
    return (instructions(checkout, workload, many, data_root)
            - instructions(checkout, workload, few, data_root)) / (many - few)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base")
    p.add_argument("new", nargs="?", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--workdir", default=None, help="where `python -m benchmarks` made the datasets")
    args = p.parse_args(argv)
    data_root = Config(workdir=args.workdir).workdir
    if not os.path.isdir(os.path.join(data_root, "w1_lmdb")):
        sys.exit(f"{data_root}: no benchmark datasets -- run `python -m benchmarks` once first")
    for workload in ("W1", "W3"):
        base = per_batch(args.base, workload, data_root)
        new = per_batch(args.new, workload, data_root)
        print(f"{workload}: {base / 1e6:.2f} M instructions per batch (base), {new / 1e6:.2f} M (new): "
              f"new / base = {new / base:.3f}")


if __name__ == "__main__":
    main()
