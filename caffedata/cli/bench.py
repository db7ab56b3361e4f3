"""``caffedata bench``: images/s and MB/s of the CaffeDataIter pipeline for 1..K threads."""
import os


def add_parser(sub):
    p = sub.add_parser(
        "bench", help="images/s and MB/s of the CaffeDataIter pipeline for 1..K threads",
        description=("Time the reader (read, decode, transform, prefetch) over N batches after a "
                     "warm-up, for 1..K threads. Give a data-layer prototxt, or a DB plus "
                     "transform flags."))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prototxt", metavar="FILE", help="a Data layer (its source DB is read)")
    src.add_argument("--db", metavar="DB", help="an LMDB/LevelDB (with the transform flags below)")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default=None,
                   help="with --prototxt: which data layer; with --db: the transform phase "
                        "(default TRAIN)")
    g = p.add_argument_group("transform flags (with --db)")
    g.add_argument("--backend", choices=("auto", "lmdb", "leveldb"), default="auto")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--scale", type=float, default=1.0)
    g.add_argument("--mirror", action="store_true")
    g.add_argument("--crop-size", type=int, default=0)
    g.add_argument("--mean-file", default=None, metavar="FILE.binaryproto")
    g.add_argument("--mean-value", type=float, action="append", default=None, metavar="V",
                   help="repeat for several channels")
    g.add_argument("--force-color", action="store_true")
    g.add_argument("--force-gray", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, metavar="K",
                   help="measure 1..K threads (default: CPU count)")
    p.add_argument("--batches", type=int, default=50, help="timed batches per window")
    p.add_argument("--warmup", type=int, default=5,
                   help="batches before timing (then the prefetch queue is filled once and drained, untimed)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (median is kept)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--json", metavar="OUT.json", default=None, help="save the results as JSON")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args):
    import json
    import sys

    from ..tools import bench
    from ..formats.prototxt import data_layer_spec
    from ..formats.spec import Phase
    from . import CommandError

    if args.threads < 1 or args.batches < 1 or args.repeats < 1 or args.warmup < 0:
        raise CommandError("--threads, --batches and --repeats must be >= 1, --warmup >= 0", 2)
    if args.prototxt:
        spec = data_layer_spec(args.prototxt, Phase[args.phase] if args.phase else None)
    else:
        spec = bench.spec_for_db(args.db, batch_size=args.batch_size, backend=args.backend,
                                 phase=args.phase or "TRAIN", scale=args.scale, mirror=args.mirror,
                                 crop_size=args.crop_size, mean_file=args.mean_file,
                                 mean_value=args.mean_value or (), force_color=args.force_color,
                                 force_gray=args.force_gray)
    print(f"{spec.source}: batch {spec.batch_size}, phase {spec.phase.name}, {args.batches} "
          f"batches x {args.repeats} after {args.warmup} warm-up, threads 1..{args.threads}",
          file=sys.stderr)
    points = bench.run_bench(spec, threads=range(1, args.threads + 1), batches=args.batches,
                             warmup=args.warmup, repeats=args.repeats, dtype=args.dtype)
    print(f"data {points[0].data_shape}")
    print(bench.format_table(points))
    if args.json:
        payload = {"source": spec.source, "batch_size": spec.batch_size, "phase": spec.phase.name,
                   "transform": {k: (list(v) if isinstance(v, tuple) else
                                     (v.name if hasattr(v, "name") else v))
                                 for k, v in vars(spec.transform).items()},
                   "results": [p.as_dict() for p in points]}
        try:
            with open(args.json, "w") as f:
                json.dump(payload, f, indent=2)
        except OSError as exc:
            raise CommandError(f"{args.json}: cannot write ({exc.strerror}) -- check the folder")
        print(f"saved {args.json}")
    return 0
