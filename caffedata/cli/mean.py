"""``caffedata mean DB [OUT.binaryproto]``: Caffe's compute_image_mean."""


def add_parser(sub):
    p = sub.add_parser(
        "mean", help="mean image of a DB -> .binaryproto (as compute_image_mean)",
        description=("Compute the mean image of a Caffe DB, byte-identical to Caffe's "
                     "compute_image_mean (float32 accumulation in key order, legacy "
                     "num/channels/height/width BlobProto). Without OUT only the per-channel "
                     "means are printed, as the tool does."))
    p.add_argument("db", metavar="DB", help="LMDB or LevelDB folder")
    p.add_argument("output", metavar="OUT.binaryproto", nargs="?", default=None,
                   help="where to write the mean (optional)")
    p.add_argument("--backend", choices=("auto", "lmdb", "leveldb"), default="auto",
                   help="database format (default: detect; compute_image_mean assumes lmdb)")
    p.add_argument("--npy", nargs="?", const=True, default=None, metavar="FILE.npy",
                   help="also save the (C,H,W) float32 mean as .npy (default: OUT with .npy)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="decoding threads for encoded records")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_mean)
    return p


def cmd_mean(args):
    import os

    from ..tools.compute_mean import compute_image_mean
    from . import CommandError

    npy = args.npy
    if npy is True:
        if not args.output:
            raise CommandError("--npy without a file name needs OUT.binaryproto to name it -- "
                               "give --npy FILE.npy", 2)
        npy = os.path.splitext(args.output)[0] + ".npy"
    result = compute_image_mean(args.db, args.output, backend=args.backend, npy=npy,
                                progress=not args.quiet, threads=args.threads)
    print(result.summary())
    return 0
