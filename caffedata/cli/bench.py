"""``caffedata bench``: reader throughput (filled in below)."""


def add_parser(sub):
    p = sub.add_parser("bench", help="images/s and MB/s of CaffeDataIter's pipeline")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args):
    from . import CommandError

    raise CommandError("bench is not available yet")
