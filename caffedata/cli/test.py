"""``caffedata test --model M --weights W --iterations N``: ``caffe test`` (score a model) on MXNet.

Prints caffe's lines on stderr: ``Batch <i>, <output> = <v>`` for every element
of every output, then ``Loss: <mean>`` and ``<output> = <mean>`` (with
``(* w = l loss)`` for loss outputs).
"""
import sys

from . import runtime


def add_parser(sub):
    p = sub.add_parser(
        "test", help="score a model: mean of each net output over N batches (caffe test)",
        description=("Build the net (phase TEST), load --weights, run --iterations forward passes on its "
                     "data layers and print caffe test's per-batch lines and the mean of each output."),
        epilog="example: caffedata test --model lenet_train_val.prototxt --weights lenet_iter_300.caffemodel "
               "--iterations 4")
    p.add_argument("--model", required=True, metavar="NET.prototxt", help="the net definition (train_val)")
    p.add_argument("--weights", required=True, metavar="W.caffemodel", help="trained weights")
    p.add_argument("--iterations", type=int, default=50, help="batches to score (default 50, as caffe)")
    p.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST", help="NetState phase (default TEST)")
    runtime.add_state_flags(p)
    runtime.add_thread_flag(p)
    p.set_defaults(func=cmd_test)
    return p


def cmd_test(args):
    from . import CommandError

    if args.iterations < 1:
        raise CommandError(f"--iterations: must be >= 1, got {args.iterations}", 2)
    runtime.require_files(("--model", args.model), ("--weights", args.weights))
    threads = runtime.configure_threads(args.threads)
    runtime.say(sys.stderr, 0, threads, source="caffedata")
    runtime.say(sys.stderr, 290, "Use CPU.")
    from ..solver.commands import score

    score(args.model, args.weights, iterations=args.iterations, stages=runtime.stages_from(args.stage),
          level=args.level, phase=args.phase, log_stream=sys.stderr)
    return 0
