"""What ``caffedata train | test | time`` share: the thread count (set before mxnet loads),
Caffe's ``--stage`` rule, input-file checks and log lines with glog prefixes.

Nothing here imports mxnet: the thread count only takes effect if it is in the
environment when mxnet is first imported (MXNet reads ``OMP_NUM_THREADS`` /
``MXNET_OMP_MAX_THREADS`` once, at load).
"""
import os
import sys

# MXNet 1.9.1 (src/engine/openmp.cc): MXNET_OMP_MAX_THREADS wins, then OMP_NUM_THREADS,
# else half of omp_get_num_procs() on x86 -- half the cores, unlike Caffe's BLAS.
THREAD_VARIABLES = ("MXNET_OMP_MAX_THREADS", "OMP_NUM_THREADS")


def usable_cores():
    """CPUs this process may run on (its affinity mask), as OpenMP's omp_get_num_procs counts them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def configure_threads(threads=None, environ=None):
    """Choose MXNet's OpenMP thread count before mxnet is imported; returns the log text.

    ``threads`` (``--threads``) wins; else a user's ``MXNET_OMP_MAX_THREADS`` or
    ``OMP_NUM_THREADS`` is kept; else every usable core, as ``caffe train`` uses.
    ``MXNET_CPU_WORKER_NTHREADS`` is left alone: one engine worker running one
    layer at a time on all cores is what Caffe does.
    """
    from . import CommandError

    environ = os.environ if environ is None else environ
    if threads is not None and threads < 1:
        raise CommandError(f"--threads: must be >= 1, got {threads}", 2)
    if "mxnet" in sys.modules:  # too late to change (only in-process callers get here)
        pinned = next((f"{v}={environ[v]}" for v in THREAD_VARIABLES if environ.get(v)), "MXNet's default")
        return f"mxnet was imported before the command ran: its thread count stays ({pinned})"
    if threads is not None:
        environ["OMP_NUM_THREADS"] = str(threads)
        if environ.get("MXNET_OMP_MAX_THREADS"):
            environ["MXNET_OMP_MAX_THREADS"] = str(threads)
        return f"Using {threads} OpenMP threads (--threads)"
    for variable in THREAD_VARIABLES:
        if environ.get(variable):
            return f"Using {environ[variable]} OpenMP threads ({variable} set in the environment)"
    cores = usable_cores()
    environ["OMP_NUM_THREADS"] = str(cores)
    return (f"Using {cores} OpenMP threads (all usable cores, as caffe does; "
            f"pin with --threads N or OMP_NUM_THREADS)")


def stages_from(values):
    """``--stage a,b`` (repeatable) -> ('a', 'b'); none given -> ('',), Caffe's one empty stage (§6)."""
    stages = [s for value in values or () for s in value.split(",")]
    return tuple(stages) if stages else ("",)


def require_files(*pairs):
    """Raise a one-line CommandError for the first ``(flag, path)`` whose path is not a file."""
    from . import CommandError

    for flag, path in pairs:
        if path and not os.path.isfile(path):
            raise CommandError(f"{flag} {path}: no such file")


def say(stream, line, text, source="caffe.cpp"):
    """One glog-style INFO line on ``stream``, as the caffe tool prints."""
    from ..solver.log import glog_prefix

    stream.write(glog_prefix((source, line)) + text + "\n")
    stream.flush()


def add_thread_flag(parser):
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="OpenMP threads for MXNet's operators (default: every usable core, as caffe; "
                             "MXNet alone uses half; a set OMP_NUM_THREADS is kept)")


def add_state_flags(parser):
    parser.add_argument("--stage", action="append", default=[], metavar="S[,S2]",
                        help="NetState stages, comma-separated or repeated (default: one empty stage, "
                             "as caffe)")
    parser.add_argument("--level", type=int, default=0, help="NetState level (default 0)")
