"""``python -m benchmarks [--quick] [--threads 1,2] [--json OUT]``: issue 5's speed record."""
import argparse
import json
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller data and fewer rounds (about a minute)")
    p.add_argument("--threads", default="1,2", help="thread counts for W1/W2 and scaling (default 1,2)")
    p.add_argument("--rounds", type=int, default=None, help="A/B rounds (default 5, quick 3)")
    p.add_argument("--workdir", default=None, help="where the datasets are made (kept between runs)")
    p.add_argument("--json", default=os.path.join("benchmarks", "results", "latest.json"),
                   help="where to write the JSON (default benchmarks/results/latest.json)")
    args = p.parse_args(argv)
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # no MKLDNN banner per Module.bind
    from .suite import Config, format_table, run

    cfg = Config(quick=args.quick, threads=[int(t) for t in args.threads.split(",") if t.strip()],
                 rounds=args.rounds, workdir=args.workdir)
    res = run(cfg, progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(format_table(res))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
        print(f"saved {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
