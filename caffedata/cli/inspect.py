"""``caffedata inspect PATH``: what is inside a DB, a mean .binaryproto or a data-layer prototxt."""


def add_parser(sub):
    p = sub.add_parser(
        "inspect", help="summarise a DB, a mean .binaryproto or a prototxt; draw a sample grid",
        description=(
            "Describe PATH: for a DB the record count, keys, record kinds, shapes, labels and sizes; "
            "for a .binaryproto the mean's shape and per-channel means; for a prototxt the "
            "effective Data-layer settings and the batch shapes CaffeDataIter will provide. "
            "--grid draws a labelled picture of the records (or of the mean)."))
    p.add_argument("path", metavar="PATH", help="DB folder, mean .binaryproto or prototxt")
    p.add_argument("--backend", choices=("auto", "lmdb", "leveldb"), default="auto",
                   help="database format (default: detect)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="examine N records spread over the DB and extrapolate (fast estimate)")
    p.add_argument("--grid", metavar="OUT.png", default=None,
                   help="write a labelled grid of records (or the mean image) to OUT.png")
    p.add_argument("-n", "--count", type=int, default=64, metavar="N",
                   help="records in the grid (default 64)")
    p.add_argument("--random", action="store_true",
                   help="pick random records (for --grid and --sample) instead of the first / "
                        "evenly spaced ones")
    p.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    p.add_argument("--tile", type=int, default=64, metavar="PX", help="grid tile size in pixels")
    p.add_argument("--rgb", action="store_true",
                   help="the DB stores RGB planes (convert_cifar_data), not OpenCV's BGR")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)
    return p


def cmd_inspect(args):
    import json

    from ..tools import inspect_db
    from . import CommandError

    if args.sample is not None and args.sample < 1:
        raise CommandError("--sample must be >= 1", 2)
    if args.count < 1 or args.tile < 8:
        raise CommandError("--count must be >= 1 and --tile >= 8", 2)
    report = inspect_db.inspect(args.path, backend=args.backend, sample=args.sample,
                                random=args.random, seed=args.seed)
    if args.grid:
        if report["kind"] == "db":
            h, w = inspect_db.db_grid(args.path, args.grid, n=args.count, backend=args.backend,
                                      random=args.random, seed=args.seed, tile=args.tile,
                                      rgb=args.rgb)
        elif report["kind"] == "mean":
            h, w = inspect_db.mean_grid(args.path, args.grid, tile=max(args.tile, 128),
                                        rgb=args.rgb)
        else:
            raise CommandError(f"{args.path}: --grid draws a DB or a mean file, not a prototxt -- "
                               f"run it on the layer's data_param.source", 2)
        report["grid"] = {"path": args.grid, "height": h, "width": w}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(inspect_db.format_report(report))
        if args.grid:
            print(f"grid: {args.grid} ({w}x{h} pixels)")
    return 0
