"""``caffedata demo``: bundled digits -> LMDB -> mean -> the FAQ MLP on mx.io.CaffeDataIter."""


def add_parser(sub):
    p = sub.add_parser(
        "demo", help="build an LMDB from the bundled handwritten digits and train the FAQ MLP",
        description=(
            "Offline end-to-end run: writes the bundled UCI handwritten digits as PNGs, converts "
            "them to Caffe LMDBs (as convert_imageset), computes the mean (as compute_image_mean) "
            "and trains the MXNet FAQ's 10-class MLP through mx.io.CaffeDataIter, validating on a "
            "TEST-phase iterator."))
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where to put images, lists, DBs and prototxts (kept); default: a "
                        "temporary folder removed at the end")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--threads", type=int, default=2, help="iterator preprocess threads")
    p.add_argument("--mxnet-layers", action="store_true",
                   help="use MXNet's FullyConnected instead of CaffeOp layers")
    p.set_defaults(func=cmd_demo)
    return p


def cmd_demo(args):
    from ..tools.demo import run_demo
    from . import CommandError

    if args.epochs < 1 or args.threads < 1:
        raise CommandError("--epochs and --threads must be >= 1", 2)
    result = run_demo(workdir=args.workdir, epochs=args.epochs, keep=args.keep,
                      threads=args.threads, use_caffe_ops=not args.mxnet_layers)
    kept = args.workdir is not None or args.keep
    print(f"validation accuracy {result.val_accuracy:.4f} after {len(result.epochs)} epoch(s); "
          f"{result.seconds:.1f} s in all" + (f"; files in {result.workdir}" if kept else ""))
    return 0
