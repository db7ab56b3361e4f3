"""``caffedata export PREFIX EPOCH NET.prototxt OUT.caffemodel``: an MXNet checkpoint back to Caffe."""


def add_parser(sub):
    p = sub.add_parser(
        "export", help="MXNet checkpoint of an imported net -> .caffemodel",
        description=("Read PREFIX-symbol.json / PREFIX-EPOCH.params (made by `caffedata import` or from "
                     "caffedata.Net's arg_params/aux_params, possibly trained further) and write the "
                     "weights as a .caffemodel for NET.prototxt, the prototxt the net came from, in "
                     "Net::ToProto's layout."))
    p.add_argument("prefix", metavar="PREFIX", help="checkpoint prefix")
    p.add_argument("epoch", metavar="EPOCH", type=int, help="checkpoint epoch")
    p.add_argument("prototxt", metavar="NET.prototxt", help="the prototxt the checkpoint was made from")
    p.add_argument("output", metavar="OUT.caffemodel", help="where to write the weights")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TEST", help="NetState phase (default TEST)")
    p.add_argument("--stage", action="append", default=[], metavar="STAGE", help="NetState stage (repeatable)")
    p.add_argument("--level", type=int, default=0, help="NetState level (default 0)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=N,C,H,W",
                   help="shape of an input whose shape the prototxt does not give (repeatable)")
    p.set_defaults(func=cmd_export)
    return p


def cmd_export(args):
    import os

    import mxnet as mx

    from ..net.net import Net
    from . import CommandError
    from .import_net import parse_shapes

    params_file = f"{args.prefix}-{args.epoch:04d}.params"
    if not os.path.isfile(params_file):
        raise CommandError(f"{params_file}: no such file (PREFIX and EPOCH name PREFIX-EPOCH.params)")
    if not os.path.isfile(args.prototxt):
        raise CommandError(f"{args.prototxt}: no such file")
    loaded = mx.nd.load(params_file)
    arg = {k[4:]: v for k, v in loaded.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in loaded.items() if k.startswith("aux:")}
    net = Net(args.prototxt, phase=args.phase, stages=args.stage, level=args.level)
    shapes = parse_shapes(args.shape)
    if shapes:
        net.reshape(**shapes)
    net.set_mxnet_params(arg, aux)
    net.save(args.output)
    print(f"{args.output}: {len(net.params)} layers with weights")
    return 0
