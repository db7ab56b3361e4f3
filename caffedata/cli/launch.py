"""``caffedata launch -n WORKERS [-s SERVERS] [--hostfile FILE] [--env K=V] -- COMMAND ...``."""
import argparse


def add_parser(sub):
    p = sub.add_parser(
        "launch", help="run COMMAND as the workers of a ps-lite job (kvstore='dist_sync')",
        description=("Start MXNet's parameter server (a scheduler and SERVERS servers, each "
                     "`python -c \"import mxnet\"`) and WORKERS copies of COMMAND with the DMLC_* "
                     "environment ps-lite reads, as MXNet's tools/launch.py does. Locally by "
                     "default, bound to 127.0.0.1 only; with --hostfile over ssh. Output is "
                     "forwarded as '[worker 1] ...'. If any process fails, all the others are "
                     "stopped (SIGTERM, then SIGKILL after --grace seconds) and the exit status "
                     "is the failure's."),
        epilog="example: caffedata launch -n 2 -s 1 -- python train.py --kv-store dist_sync")
    p.add_argument("-n", "--num-workers", type=int, required=True, metavar="WORKERS",
                   help="worker processes to start")
    p.add_argument("-s", "--num-servers", type=int, default=None, metavar="SERVERS",
                   help="server processes (default: WORKERS, as MXNet's launcher)")
    p.add_argument("-H", "--hostfile", default=None, metavar="FILE",
                   help="run servers and workers over ssh on these hosts (host[:ssh_port] per "
                        "line, round robin); the scheduler runs here")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="set K=V for every process (repeatable); a bare K passes this shell's value")
    p.add_argument("--host-ip", default=None, metavar="IP",
                   help="the scheduler's address (default: 127.0.0.1 locally, this host's IP "
                        "with --hostfile)")
    p.add_argument("--port", type=int, default=None, help="the scheduler's port (default: a free one)")
    p.add_argument("--ps-python", default=None, metavar="PYTHON",
                   help="python that runs the remote servers (default: python3)")
    p.add_argument("--ssh", default="ssh", metavar="CMD", help="ssh client to use (default: ssh)")
    p.add_argument("--grace", type=float, default=5.0, metavar="S",
                   help="seconds between SIGTERM and SIGKILL when stopping (default: 5)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop the whole job after S seconds, exit 124 (default: none)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="S",
                   help="seconds the scheduler/servers may outlive the workers, or the other "
                        "way round (default: 30)")
    p.add_argument("worker_command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                   help="the worker command")
    p.set_defaults(func=cmd_launch)
    return p


def cmd_launch(args):
    from ..tools.launch import launch, parse_env
    from . import CommandError

    command = list(args.worker_command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CommandError("no COMMAND given -- e.g. caffedata launch -n 2 -- python train.py", 2)
    return launch(args.num_workers, command, num_servers=args.num_servers, hostfile=args.hostfile,
                  env=parse_env(args.env), host_ip=args.host_ip, port=args.port,
                  ps_python=args.ps_python, ssh=args.ssh, grace=args.grace, timeout=args.timeout,
                  shutdown_timeout=args.shutdown_timeout)
