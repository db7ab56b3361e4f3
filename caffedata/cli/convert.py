"""``caffedata convert ROOT/ LISTFILE DB``: Caffe's convert_imageset."""
import sys

MAX_LISTED_FAILURES = 20


def add_parser(sub):
    p = sub.add_parser(
        "convert", help="images + list file -> Caffe LMDB/LevelDB (as convert_imageset)",
        description=(
            "Convert the images named in LISTFILE (`path label` per line, split at the last space "
            "as Caffe does, or at the last tab when that gives the integer label: tab-separated "
            "lists work; paths relative to ROOT, which is prefixed as is) into a new Caffe DB of Datums, "
            "record for record as Caffe's convert_imageset writes it. The DB is built beside DB "
            "and renamed into place at the end; an existing DB is only replaced with --overwrite."))
    p.add_argument("root", metavar="ROOT/", help="folder the list's paths are relative to")
    p.add_argument("listfile", metavar="LISTFILE",
                   help="text file: `path label` per line, space- or tab-separated")
    p.add_argument("db", metavar="DB", help="the database folder to create")
    p.add_argument("--backend", choices=("lmdb", "leveldb"), default="lmdb",
                   help="output format (default lmdb, as convert_imageset)")
    p.add_argument("--gray", action="store_true", help="read images as 1-channel grayscale")
    p.add_argument("--resize-height", type=int, default=0, metavar="H",
                   help="resize to H rows (only when --resize-width is also > 0)")
    p.add_argument("--resize-width", type=int, default=0, metavar="W",
                   help="resize to W columns (only when --resize-height is also > 0)")
    p.add_argument("--shuffle", action="store_true",
                   help="shuffle the list (Caffe's algorithm; reproducible with --seed)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seed for --shuffle (Caffe had none; without it one is drawn and printed)")
    p.add_argument("--encoded", action="store_true",
                   help="store compressed images (the original file when its type matches)")
    p.add_argument("--encode-type", default="", metavar="jpg|png",
                   help="re-encode every image as this type (implies --encoded)")
    p.add_argument("--check-size", action="store_true",
                   help="fail unless every image has the first image's size")
    p.add_argument("--strict", action="store_true",
                   help="refuse a list with a non-integer or missing label (default: warn per "
                        "line and store Caffe's atoi of it, e.g. 0)")
    p.add_argument("--overwrite", action="store_true", help="replace DB if it exists")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="decode/encode threads (default: CPU count, at most 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_convert)
    return p


def cmd_convert(args):
    from ..tools.convert import convert_imageset
    from . import CommandError

    if args.seed is not None and not args.shuffle:
        raise CommandError("--seed only applies with --shuffle -- add --shuffle or drop --seed", 2)
    if args.encode_type and not args.encoded:
        print("caffedata: --encode-type given: assuming --encoded", file=sys.stderr)
    result = convert_imageset(
        args.root, args.listfile, args.db, backend=args.backend, gray=args.gray,
        resize_height=args.resize_height, resize_width=args.resize_width, shuffle=args.shuffle,
        seed=args.seed, encoded=args.encoded, encode_type=args.encode_type,
        check_size=args.check_size, overwrite=args.overwrite, threads=args.threads,
        progress=not args.quiet, strict=args.strict)
    print(result.summary())
    if result.failures:
        print(f"caffedata: {len(result.failures)} image(s) could not be read and were skipped "
              f"(their line numbers are still used in the keys):", file=sys.stderr)
        for f in result.failures[:MAX_LISTED_FAILURES]:
            print(f"  {f}", file=sys.stderr)
        if len(result.failures) > MAX_LISTED_FAILURES:
            print(f"  ... and {len(result.failures) - MAX_LISTED_FAILURES} more", file=sys.stderr)
    return 0
