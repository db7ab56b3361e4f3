"""The ``caffedata`` command line: one subcommand per job, each a thin ``cmd_*`` over a public API.

``caffedata convert | mean | inspect | bench | demo | import | export | launch | train | test | time``; ``caffedata <verb> --help``
for each.  Every ``cmd_*`` function takes the parsed arguments and returns an
exit code; user errors (a missing file, a bad record, a bad flag) end in one
line on stderr, ``caffedata: <message>``, and a non-zero exit, never a
traceback.
"""
import argparse
import sys

from ..errors import CaffeDataError

__all__ = ["main", "build_parser", "die", "CommandError"]

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """Raised by a command for a user error; ``main`` prints it as one line."""

    def __init__(self, message, code=EXIT_ERROR):
        super().__init__(message)
        self.code = code


def die(message, code=EXIT_ERROR):
    """Print ``caffedata: <message>`` to stderr and exit with ``code``."""
    print(f"caffedata: {message}", file=sys.stderr)
    raise SystemExit(code)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors."""

    def error(self, message):
        die(f"{message} (see `{self.prog} --help`)", EXIT_USAGE)


def build_parser():
    from . import bench, convert, demo, export_net, import_net, inspect, launch, mean
    from . import test as test_cmd
    from . import time as time_cmd
    from . import train

    parser = _Parser(prog="caffedata", description=(
        "Caffe datasets for MXNet: convert images to a Caffe LMDB/LevelDB, compute its mean, "
        "look inside it, benchmark the reader, or run the demo."))
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"caffedata {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (convert, mean, inspect, bench, demo, import_net, export_net, launch, train, test_cmd,
                   time_cmd):
        module.add_parser(sub)
    return parser


def main(argv=None):
    """Entry point of the ``caffedata`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        die(str(exc), exc.code)
    except CaffeDataError as exc:
        die(str(exc))
    except KeyboardInterrupt:
        die("interrupted", EXIT_INTERRUPTED)
    except SystemExit as exc:
        from ..tools.convert import Terminated

        if isinstance(exc, Terminated):  # SIGTERM during convert: its temporary DB is gone
            die("terminated (SIGTERM); " + ("the new database was already in place" if exc.completed
                                            else "nothing was written at the target"), exc.code)
        raise
    except BrokenPipeError:  # e.g. `caffedata inspect DB | head`
        return 0
