"""``caffedata demo``: the end-to-end job (filled in below)."""


def add_parser(sub):
    p = sub.add_parser("demo", help="build an LMDB from bundled digits and train on it")
    p.set_defaults(func=cmd_demo)
    return p


def cmd_demo(args):
    from . import CommandError

    raise CommandError("demo is not available yet")
