"""``caffedata time --model M --iterations N``: ``caffe time`` (per-layer forward/backward times) on MXNet.

Prints caffe's lines on stderr (``<layer>\\tforward: x ms.``, ``<layer>\\tbackward: y ms.``,
the averages and the total).  The per-layer times come from MXNet's profiler,
attributed to layers by the executor's node order (see :mod:`caffedata.solver.timing`).
"""
import sys

from . import runtime


def add_parser(sub):
    p = sub.add_parser(
        "time", help="benchmark a model's per-layer forward/backward times (caffe time)",
        description=("Build the net with its fillers' random weights (phase TRAIN by default), run one "
                     "forward/backward pass, then --iterations timed passes, and print caffe time's "
                     "per-layer averages. Times come from MXNet's profiler, run with the NaiveEngine "
                     "and operator bulking off so that each operator is attributed to its layer."),
        epilog="example: caffedata time --model lenet_train_val.prototxt --iterations 10")
    p.add_argument("--model", required=True, metavar="NET.prototxt", help="the net definition")
    p.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50, as caffe)")
    p.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN", help="NetState phase (default TRAIN)")
    p.add_argument("--profiler-table", action="store_true",
                   help="also print MXNet's own aggregate profiler table (times by operator type) on stdout")
    runtime.add_state_flags(p)
    runtime.add_thread_flag(p)
    p.set_defaults(func=cmd_time)
    return p


def cmd_time(args):
    from . import CommandError

    if args.iterations < 1:
        raise CommandError(f"--iterations: must be >= 1, got {args.iterations}", 2)
    runtime.require_files(("--model", args.model))
    threads = runtime.configure_threads(args.threads)
    from ..solver import timing

    if "mxnet" not in sys.modules:
        timing.prepare_environment()
    runtime.say(sys.stderr, 0, threads, source="caffedata")
    runtime.say(sys.stderr, 349, "Use CPU.")
    timing.time_net(args.model, iterations=args.iterations, phase=args.phase,
                    stages=runtime.stages_from(args.stage), level=args.level, log_stream=sys.stderr)
    if args.profiler_table:
        import mxnet as mx

        print(mx.profiler.dumps(reset=True))
    return 0
