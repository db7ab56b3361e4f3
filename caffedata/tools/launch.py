"""Start a distributed MXNet job on the ps-lite parameter server (``kvstore='dist_sync'``).

What MXNet's ``tools/launch.py`` with dmlc-core's tracker does (the wheel
ships the former without the latter), for the local and ssh cases:

* one **scheduler** and ``num_servers`` **servers**, each ``python -c "import
  mxnet"`` (importing mxnet with ``DMLC_ROLE`` set to ``scheduler`` or
  ``server`` runs the kvstore server loop until the workers finish), and
  ``num_workers`` **workers** running the user's command;
* each with the environment ps-lite reads: ``DMLC_ROLE``, ``DMLC_PS_ROOT_URI``
  and ``DMLC_PS_ROOT_PORT`` (the scheduler's address), ``DMLC_NUM_SERVER``,
  ``DMLC_NUM_WORKER``, ``DMLC_NODE_HOST`` (the address a node binds and
  announces), ``DMLC_INTERFACE``, plus ``DMLC_JOB_CLUSTER`` and
  ``DMLC_TASK_ID`` as dmlc's tracker sets them.  Ranks (``kv.rank``) are
  assigned by the scheduler, not by the launcher.

Local runs (the default) bind every node to 127.0.0.1 only (``DMLC_PS_ROOT_URI``
and ``DMLC_NODE_HOST`` are 127.0.0.1, ``DMLC_INTERFACE`` is ``lo``).  With a
hostfile (one ``host[:ssh_port]`` per line, as dmlc's ssh tracker reads it)
the scheduler runs here and the servers, then the workers, are started round
robin over the hosts by ssh, in this directory, with only the ``DMLC_*``
variables and the ``--env`` ones exported.

Lifecycle.  Every process gets its own process group and its output (stdout
and stderr) is forwarded line by line as ``[worker 1] ...``.  If any process
exits non-zero, or is killed, all the others are stopped: SIGTERM to each
process group, SIGKILL after ``grace`` seconds, and the launcher returns the
failure's status (128 + N for a signal N).  When all workers have exited 0
the scheduler and servers have ``shutdown_timeout`` seconds to follow (and
the other way round), else they are stopped and the job fails.  A launcher
stopped by SIGINT/SIGTERM/SIGHUP stops everything first; a launcher that
dies outright takes its local children along (``PR_SET_PDEATHSIG``), and
remote commands are stopped when their ssh connection's stdin closes.
"""
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from caffedata.errors import SpecError

__all__ = ["Task", "Job", "launch", "plan_tasks", "read_hostfile", "parse_env",
           "LOCAL_HOST", "EXIT_TIMEOUT"]

LOCAL_HOST = "127.0.0.1"
EXIT_TIMEOUT = 124
PS_IMPORT = "import mxnet"  # a scheduler or server: the kvstore server loop runs on import

# Remote side of an ssh task: run the command ("$@") in its own process group
# and stop that group when the ssh connection's stdin closes (the launcher
# stopped or died), so a lost launcher never leaves remote orphans.
_REMOTE_WRAPPER = r"""
set -m
"$@" </dev/null &
cmd=$!
( cat >/dev/null; kill -TERM -- -$cmd 2>/dev/null
  for i in $(seq {ticks}); do sleep 0.1; kill -0 -- -$cmd 2>/dev/null || exit 0; done
  kill -KILL -- -$cmd 2>/dev/null ) &
watch=$!
wait $cmd
rc=$?
kill -KILL -- -$watch 2>/dev/null
exit $rc
"""


@dataclass
class Task:
    """One process of the job: its role, the launcher's index, its argv and environment."""

    role: str                       # 'scheduler', 'server' or 'worker'
    index: int
    argv: List[str]
    env: Dict[str, str]             # the whole environment (local) or the exports (ssh)
    host: Optional[str] = None      # None: this machine
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)
    reader: Optional[threading.Thread] = field(default=None, repr=False)

    @property
    def label(self):
        return self.role if self.role == "scheduler" else f"{self.role} {self.index}"


def parse_env(pairs, environ=None):
    """``['K=V', 'K2']`` to a dict; a bare name passes this process's value of it."""
    environ = os.environ if environ is None else environ
    out = {}
    for pair in pairs or ():
        name, eq, value = pair.partition("=")
        if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise SpecError(f"--env {pair!r}: expected NAME=VALUE or NAME")
        if not eq:
            if name not in environ:
                raise SpecError(f"--env {name}: the variable is not set here -- give {name}=VALUE")
            value = environ[name]
        out[name] = value
    return out


def read_hostfile(path):
    """``[(host, ssh_port)]`` from a hostfile: ``host`` or ``host:port`` per line, ``#`` comments."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise SpecError(f"hostfile {path}: {exc.strerror} -- give a file listing one host per line")
    hosts = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        host, colon, port = line.rpartition(":") if ":" in line else (line, "", "22")
        if not host or (colon and not port.isdigit()):
            raise SpecError(f"hostfile {path}, line {number}: {line!r} is not host or host:port")
        hosts.append((host, port))
    if not hosts:
        raise SpecError(f"hostfile {path} lists no host -- one host (or host:ssh_port) per line")
    return hosts


def free_port(host=LOCAL_HOST):
    """A TCP port that is free on ``host`` now (the scheduler binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def this_host_ip():
    """This machine's address as the other hosts see it (dmlc's get_host_ip('auto'))."""
    try:
        ip = socket.gethostbyname(socket.getfqdn())
    except OSError:
        ip = LOCAL_HOST
    if ip.startswith("127."):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
            ip = s.getsockname()[0]
    return ip


def _resolve(host):
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def plan_tasks(num_workers, command, num_servers=None, hostfile=None, env=None, host_ip=None,
               port=None, ps_python=None, ssh="ssh", grace=5.0, cwd=None, environ=None):
    """The job's tasks: scheduler, servers, workers (see the module docstring)."""
    if int(num_workers) < 1:
        raise SpecError(f"-n/--num-workers must be >= 1, got {num_workers}")
    num_servers = int(num_workers if num_servers is None else num_servers)
    if num_servers < 1:
        raise SpecError(f"-s/--num-servers must be >= 1 (ps-lite needs a server), got {num_servers}")
    if not command:
        raise SpecError("no command to launch -- put it after --, e.g. "
                        "caffedata launch -n 2 -- python train.py")
    environ = dict(os.environ if environ is None else environ)
    user_env = dict(env or {})
    hosts = read_hostfile(hostfile) if hostfile else None
    root = host_ip or (this_host_ip() if hosts else LOCAL_HOST)
    port = int(port or free_port(root if not hosts else ""))
    common = {"DMLC_PS_ROOT_URI": root, "DMLC_PS_ROOT_PORT": str(port),
              "DMLC_NUM_SERVER": str(num_servers), "DMLC_NUM_WORKER": str(int(num_workers)),
              "DMLC_JOB_CLUSTER": "ssh" if hosts else "local", "PYTHONUNBUFFERED": "1"}
    if not hosts:
        common.update(DMLC_NODE_HOST=LOCAL_HOST, DMLC_INTERFACE="lo")

    def local_env(extra):
        # Inherited DMLC_* could break ps-lite (a set DMLC_RANK stops it assigning ids).
        base = {k: v for k, v in environ.items() if not k.startswith("DMLC_")}
        return {**base, **user_env, **common, **extra}

    ps_local = [sys.executable, "-c", PS_IMPORT]
    tasks = [Task("scheduler", 0, ps_local, local_env({"DMLC_ROLE": "scheduler", "DMLC_TASK_ID": "0"}))]
    roles = [("server", i) for i in range(num_servers)] + [("worker", i) for i in range(int(num_workers))]
    for task_id, (role, index) in enumerate(roles):
        argv = ps_local if role == "server" else list(command)
        extra = {"DMLC_ROLE": role, "DMLC_TASK_ID": str(task_id)}
        if not hosts:
            tasks.append(Task(role, index, argv, local_env(extra)))
            continue
        host, ssh_port = hosts[task_id % len(hosts)]
        if role == "server":
            argv = [ps_python or "python3", "-c", PS_IMPORT]
        exports = {**user_env, **common, **extra, "DMLC_NODE_HOST": _resolve(host)}
        tasks.append(Task(role, index, ssh_argv(ssh, host, ssh_port, exports, argv,
                                                cwd or os.getcwd(), grace),
                          exports, host=host))
    return tasks


def ssh_argv(ssh, host, port, exports, argv, cwd, grace):
    """The local ssh command line that runs ``argv`` on ``host`` under the remote wrapper."""
    script = " ".join(f"export {k}={shlex.quote(v)};" for k, v in exports.items())
    script += (f" cd {shlex.quote(cwd)} && exec bash -c "
               f"{shlex.quote(_REMOTE_WRAPPER.format(ticks=max(1, int(grace * 10))))} caffedata-task "
               + " ".join(shlex.quote(a) for a in argv))
    return shlex.split(ssh) + ["-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes",
                               "-p", str(port), host, script]


def _die_with_parent():
    """preexec_fn: SIGKILL this child when the launcher dies (Linux PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _status(returncode):
    """A process's exit status as a shell reports it (128 + N for signal N)."""
    return 128 - returncode if returncode < 0 else returncode


def _describe(returncode):
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class Job:
    """Run tasks, forward their output, stop them all on the first failure.

    ``run()`` returns the exit status (0 when every process exited 0).
    """

    def __init__(self, tasks, out=None, log=None, grace=5.0, timeout=None, shutdown_timeout=30.0,
                 poll=0.05):
        self.tasks = tasks
        self.out = out if out is not None else sys.stdout.buffer
        self.log = log if log is not None else (lambda m: print(f"caffedata launch: {m}",
                                                               file=sys.stderr, flush=True))
        self.grace, self.timeout = float(grace), timeout
        self.shutdown_timeout, self.poll = float(shutdown_timeout), poll
        self._lock = threading.Lock()
        self._signal = None

    # -- output ---------------------------------------------------------------
    def _forward(self, task):
        prefix = f"[{task.label}] ".encode()
        stream = task.proc.stdout
        for line in iter(stream.readline, b""):
            if not line.endswith(b"\n"):
                line += b"\n"
            with self._lock:
                try:
                    self.out.write(prefix + line)
                    self.out.flush()
                except (BrokenPipeError, ValueError):
                    pass  # our reader went away; keep draining so the child never blocks
        stream.close()

    # -- processes ------------------------------------------------------------
    def _start(self):
        for task in self.tasks:
            try:
                task.proc = subprocess.Popen(
                    task.argv, env=task.env if task.host is None else None,
                    stdin=subprocess.PIPE if task.host else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0,
                    preexec_fn=_die_with_parent)
            except OSError as exc:
                raise SpecError(f"cannot start {task.label}: {task.argv[0]}: {exc.strerror} -- "
                                f"check the command after --") from None
        # Readers start after every fork: preexec_fn and threads do not mix.
        for task in self.tasks:
            task.reader = threading.Thread(target=self._forward, args=(task,),
                                           name=f"launch-{task.label}", daemon=True)
            task.reader.start()

    def _signal_groups(self, sig):
        for task in self.tasks:
            if task.proc is None:
                continue
            try:
                os.killpg(task.proc.pid, sig)  # the group outlives its leader's exit
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self):
        """SIGTERM every process group, SIGKILL after the grace period, reap everything."""
        for task in self.tasks:
            if task.proc is not None and task.proc.stdin:
                try:
                    task.proc.stdin.close()  # an ssh task's remote side stops on EOF
                except OSError:
                    pass
        self._signal_groups(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and any(
                t.proc is not None and t.proc.poll() is None for t in self.tasks):
            time.sleep(self.poll)
        self._signal_groups(signal.SIGKILL)
        for task in self.tasks:
            if task.proc is not None:
                task.proc.wait()
        for task in self.tasks:
            if task.reader is not None:
                task.reader.join(timeout=2.0)

    def _on_signal(self, signum, frame):
        self._signal = signum

    def run(self):
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._start()
            return self._watch()
        finally:
            self.stop()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def _watch(self):
        start = time.monotonic()
        done_at = None  # when one side (workers, or scheduler + servers) had all exited 0
        workers = [t for t in self.tasks if t.role == "worker"]
        others = [t for t in self.tasks if t.role != "worker"]
        while True:
            if self._signal is not None:
                self.log(f"got {signal.Signals(self._signal).name}; stopping all processes")
                return 128 + self._signal
            for task in self.tasks:
                rc = task.proc.poll()
                if rc is not None and rc != 0:
                    self.log(f"{task.label} {_describe(rc)}; stopping all other processes")
                    return _status(rc)
            finished = [all(t.proc.returncode == 0 for t in side) for side in (workers, others)]
            if all(finished):
                return 0
            if any(finished):
                done_at = done_at or time.monotonic()
                if time.monotonic() - done_at > self.shutdown_timeout:
                    late = [t.label for t in self.tasks if t.proc.returncode is None]
                    self.log(f"{', '.join(late)} still running {self.shutdown_timeout:g} s after "
                             f"the {'workers' if finished[0] else 'scheduler and servers'} "
                             f"finished; stopping them")
                    return 1
            if self.timeout and time.monotonic() - start > self.timeout:
                self.log(f"the job ran past --timeout {self.timeout:g} s; stopping all processes")
                return EXIT_TIMEOUT
            time.sleep(self.poll)


def launch(num_workers, command, num_servers=None, hostfile=None, env=None, host_ip=None,
           port=None, ps_python=None, ssh="ssh", grace=5.0, timeout=None, shutdown_timeout=30.0,
           out=None, log=None):
    """Run ``command`` as ``num_workers`` workers of a ps-lite job; returns the exit status.

    ``env`` is a dict (or ``['K=V', 'K']`` strings) added to every process's
    environment.  See the module docstring for the rest.
    """
    if env is not None and not isinstance(env, dict):
        env = parse_env(env)
    tasks = plan_tasks(num_workers, command, num_servers=num_servers, hostfile=hostfile, env=env,
                       host_ip=host_ip, port=port, ps_python=ps_python, ssh=ssh, grace=grace)
    return Job(tasks, out=out, log=log, grace=grace, timeout=timeout,
               shutdown_timeout=shutdown_timeout).run()
