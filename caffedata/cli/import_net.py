"""``caffedata import NET.prototxt WEIGHTS.caffemodel PREFIX``: a Caffe net as an MXNet checkpoint."""


def add_parser(sub):
    p = sub.add_parser(
        "import", help="Caffe prototxt + .caffemodel -> MXNet checkpoint (PREFIX-symbol.json, PREFIX-0000.params)",
        description=("Build the Caffe net (V0/V1/V2 prototxt, NetState filtering) with every layer as "
                     "CaffeOp/CaffeLoss, copy the .caffemodel's weights by layer name with Caffe's shape "
                     "checks, and write PREFIX-symbol.json and PREFIX-EPOCH.params. Load them with "
                     "mx.model.load_checkpoint after `import caffedata`."))
    p.add_argument("prototxt", metavar="NET.prototxt", help="the net definition (deploy or train_val)")
    p.add_argument("weights", metavar="WEIGHTS.caffemodel", help="trained weights (V1 or V2 .caffemodel)")
    p.add_argument("prefix", metavar="PREFIX", help="checkpoint prefix")
    p.add_argument("--epoch", type=int, default=0, help="epoch number in the .params name (default 0)")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST", help="NetState phase (default TEST)")
    p.add_argument("--stage", action="append", default=[], metavar="STAGE", help="NetState stage (repeatable)")
    p.add_argument("--level", type=int, default=0, help="NetState level (default 0)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=N,C,H,W",
                   help="shape of an input whose shape the prototxt does not give (repeatable)")
    p.set_defaults(func=cmd_import)
    return p


def parse_shapes(items):
    """['data=1,3,32,32', ...] -> {'data': (1, 3, 32, 32)}."""
    from . import CommandError

    shapes = {}
    for item in items:
        name, _, dims = item.partition("=")
        try:
            shapes[name] = tuple(int(d) for d in dims.split(","))
        except ValueError:
            raise CommandError(f"--shape {item!r}: expected NAME=N,C,H,W with integers", 2) from None
        if not name or not shapes[name]:
            raise CommandError(f"--shape {item!r}: expected NAME=N,C,H,W", 2)
    return shapes


def cmd_import(args):
    import os

    import mxnet as mx

    from ..net.net import Net
    from . import CommandError

    for path in (args.prototxt, args.weights):
        if not os.path.isfile(path):
            raise CommandError(f"{path}: no such file")
    net = Net(args.prototxt, weights=args.weights, phase=args.phase, stages=args.stage, level=args.level)
    shapes = parse_shapes(args.shape)
    if shapes:
        net.reshape(**shapes)
    mx.model.save_checkpoint(args.prefix, args.epoch, net.symbol, net.arg_params, net.aux_params)
    n = sum(v.size for v in net.arg_params.values()) + sum(v.size for v in net.aux_params.values())
    print(f"{args.prefix}-symbol.json, {args.prefix}-{args.epoch:04d}.params: {len(net.params)} layers with "
          f"weights, {n} values; inputs {net.inputs}, outputs {net.outputs}")
    return 0
