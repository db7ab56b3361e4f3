"""``caffedata launch`` and sharded CaffeDataIters on MXNet's real parameter server.

Every job here is real: ``python -m caffedata.cli launch`` starts a ps-lite
scheduler, servers and workers on this machine (127.0.0.1 only) and the
workers train with ``kvstore='dist_sync'``.  The launcher runs in a session of
its own, so "no process left behind" means: no process of that session is
alive after the launcher returned (found by scanning /proc, no psutil).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import mxnet  # noqa: F401  (the launched processes run MXNet's parameter server)
import numpy as np
import pytest

from caffedata.tools.convert import DBWriter
from caffedata.datasets import load_digits
from caffedata.formats.datum import array_to_datum_bytes
from caffedata.tools.launch import free_port

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist_train.py")
TRAIN_RECORDS = 790  # 395 per worker: 16 batches of 25, the last padded by 5


# -- /proc scanning ----------------------------------------------------------------

def _stat(pid):
    """(state, pgrp, session) of a process from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return fields[0], int(fields[2]), int(fields[3])


def session_processes(sid):
    """Live processes (not zombies) of session ``sid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st and st[2] == sid and st[0] != "Z":
                found.append(int(name))
    return found


def wait_session_empty(sid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = session_processes(sid)
        if not left:
            return []
        time.sleep(0.1)
    return session_processes(sid)


def listening_addresses(pids):
    """(ip, port) of the TCP sockets in LISTEN state owned by ``pids`` (IPv4 and IPv6)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    hexip, hexport = cols[1].split(":")
                    if len(hexip) == 8:
                        ip = ".".join(str(int(hexip[i:i + 2], 16)) for i in (6, 4, 2, 0))
                    else:
                        ip = "ipv6:" + hexip
                    found.append((ip, int(hexport, 16)))
    return found


# -- running the launcher ------------------------------------------------------------

class Launcher:
    """``caffedata launch ARGS`` in a new session; its output collected line by line."""

    def __init__(self, args, cwd=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "caffedata.cli", "launch", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=cwd)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def text(self):
        return "\n".join(self.lines)

    def wait_for(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in list(self.lines) if predicate(line)]
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        return [line for line in list(self.lines) if predicate(line)]

    def wait(self, timeout):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the launcher did not return within {timeout} s:\n{self.text}")
        self._reader.join(timeout=5)
        return rc

    def kill(self):
        """Test cleanup: whatever is left of the job's session."""
        for pid in session_processes(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


@pytest.fixture
def launcher():
    started = []

    def start(args, cwd=None):
        started.append(Launcher(args, cwd))
        return started[-1]

    yield start
    for job in started:
        if job.proc.poll() is None or session_processes(job.proc.pid):
            job.kill()


@pytest.fixture(scope="module")
def digits_dbs(tmp_path_factory):
    """The bundled digits as LMDBs written by caffedata's own writer.

    Training labels carry the record ids: ``digit + 10 * id`` (the worker trains
    on ``label % 10``); validation labels are plain digits.
    """
    images, labels = load_digits()
    order = np.random.RandomState(0).permutation(len(images))
    root = tmp_path_factory.mktemp("dist_digits")
    train, val = str(root / "train_lmdb"), str(root / "val_lmdb")
    writer = DBWriter(train, "lmdb")
    writer.write([(b"%08d" % i, array_to_datum_bytes(images[j][None], labels[j] + 10 * i))
                  for i, j in enumerate(order[:TRAIN_RECORDS])])
    writer.close()
    writer = DBWriter(val, "lmdb")
    writer.write([(b"%08d" % i, array_to_datum_bytes(images[j][None], labels[j]))
                  for i, j in enumerate(order[1400:])])
    writer.close()
    return train, val


# -- the real thing ----------------------------------------------------------------

def test_two_workers_train_the_faq_mlp_on_disjoint_shards(launcher, digits_dbs, tmp_path):
    train, val = digits_dbs
    job = launcher(["-n", "2", "-s", "1", "--timeout", "240", "--", sys.executable, WORKER, "train",
                    "--train", train, "--val", val, "--out", str(tmp_path), "--epochs", "3",
                    "--batch", "25", "--lr", "0.1"])
    rc = job.wait(timeout=300)
    assert rc == 0, job.text
    assert wait_session_empty(job.proc.pid) == [], "processes left behind"
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["num_workers"] for r in results] == [2, 2]
    for epoch in range(3):
        a, b = results[0]["ids"][epoch], results[1]["ids"][epoch]
        assert results[0]["batches"][epoch] == results[1]["batches"][epoch] == 16
        assert len(a) == len(b) == TRAIN_RECORDS // 2
        assert sorted(a + b) == list(range(TRAIN_RECORDS))  # each record once per epoch
    # shuffle: the same permutation on both workers, a new one every epoch
    assert set(results[0]["ids"][0]) != set(results[0]["ids"][1])
    w0, w1 = (np.load(tmp_path / f"rank{r}.npz") for r in range(2))
    assert sorted(w0.files) == sorted(w1.files) and len(w0.files) == 6
    for name in w0.files:
        np.testing.assert_array_equal(w0[name], w1[name], err_msg=name)
    accuracy = [r["accuracy"] for r in results]
    print("validation accuracy per worker:", accuracy)
    assert min(accuracy) >= 0.90
    # the output came through with role/rank prefixes
    assert any(line.startswith("[worker 0] rank ") for line in job.lines)
    assert any(line.startswith("[worker 1] rank ") for line in job.lines)


def test_killing_a_worker_stops_the_job_and_leaves_nothing(launcher):
    port = free_port()
    job = launcher(["-n", "2", "-s", "1", "--port", str(port), "--grace", "3", "--",
                    sys.executable, WORKER, "spin"])
    spinning = []
    deadline = time.monotonic() + 120
    while len(spinning) < 2 and time.monotonic() < deadline and job.proc.poll() is None:
        spinning = job.wait_for(lambda line: " spinning rank " in line, 1)
    assert len(spinning) == 2, job.text
    pids = session_processes(job.proc.pid)
    # Local runs bind only to 127.0.0.1: scheduler, server and both workers listen there.
    addresses = listening_addresses(pids)
    assert ("127.0.0.1", port) in addresses
    assert len(addresses) >= 4 and {ip for ip, _ in addresses} == {"127.0.0.1"}, addresses
    victim = int(spinning[0].rsplit("pid ", 1)[1])
    os.kill(victim, signal.SIGKILL)
    rc = job.wait(timeout=60)  # the other worker is blocked in a pull: the launcher must stop it
    assert rc == 128 + signal.SIGKILL, job.text
    assert "was killed by SIGKILL; stopping all other processes" in job.text
    assert wait_session_empty(job.proc.pid) == [], "processes left behind"


def test_over_ssh_with_a_hostfile(launcher, tmp_path):
    # A stand-in for ssh that runs the remote command on this machine, as sshd would
    # (the remote login shell gets the command string); no sshd is available here.
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text('#!/bin/bash\n'
                        'while [ $# -gt 0 ]; do\n'
                        '  case "$1" in -o|-p) shift 2;; -*) shift;; *) break;; esac\n'
                        'done\n'
                        'shift\nexec bash -c "$*"\n')
    fake_ssh.chmod(0o755)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two slots on one host\n127.0.0.1\n127.0.0.1:22\n")
    job = launcher(["-n", "2", "-s", "1", "-H", str(hostfile), "--host-ip", "127.0.0.1",
                    "--ssh", str(fake_ssh), "--ps-python", sys.executable, "--grace", "3",
                    "--env", "CAFFEDATA_TEST_MARK=over ssh", "--", sys.executable, WORKER, "spin"],
                   cwd=str(tmp_path))
    spinning = []
    deadline = time.monotonic() + 120
    while len(spinning) < 2 and time.monotonic() < deadline and job.proc.poll() is None:
        spinning = job.wait_for(lambda line: " spinning rank " in line, 1)
    assert len(spinning) == 2, job.text
    assert sorted(line.split("rank ")[1].split()[0] for line in spinning) == ["0", "1"]
    os.kill(int(spinning[1].rsplit("pid ", 1)[1]), signal.SIGKILL)
    rc = job.wait(timeout=60)
    assert rc != 0, job.text
    # the remote wrappers stop their commands when the ssh connection goes
    assert wait_session_empty(job.proc.pid, timeout=15) == [], "processes left behind"


# -- the launcher's own rules, with cheap workers --------------------------------------

PRINT_ENV = ("import os; print(' '.join(os.environ.get(k, '-') for k in ('DMLC_ROLE', 'DMLC_PS_ROOT_URI', "
             "'DMLC_NODE_HOST', 'DMLC_INTERFACE', 'DMLC_NUM_WORKER', 'DMLC_NUM_SERVER', 'DMLC_RANK', "
             "'CAFFEDATA_TEST_MARK')))")


def test_environment_and_shutdown_timeout(launcher, monkeypatch):
    # Workers that never join the parameter server: they print their environment and
    # exit 0; the scheduler and server then wait forever and must be stopped.
    monkeypatch.setenv("DMLC_RANK", "7")  # inherited DMLC_* must not reach the job
    monkeypatch.setenv("CAFFEDATA_TEST_PASS", "passed")
    job = launcher(["-n", "2", "-s", "1", "--shutdown-timeout", "1", "--grace", "2",
                    "--env", "CAFFEDATA_TEST_MARK=x=y", "--", sys.executable, "-c", PRINT_ENV])
    rc = job.wait(timeout=60)
    assert rc == 1, job.text
    for k in range(2):
        assert f"[worker {k}] worker 127.0.0.1 127.0.0.1 lo 2 1 - x=y" in job.lines, job.text
    assert "scheduler, server 0 still running 1 s after the workers finished" in job.text
    assert wait_session_empty(job.proc.pid) == []


def test_a_failing_worker_gives_its_exit_status(launcher):
    job = launcher(["-n", "2", "-s", "1", "--grace", "2", "--", sys.executable, "-c",
                    "import sys; print('bad input', file=sys.stderr); sys.exit(3)"])
    rc = job.wait(timeout=60)
    assert rc == 3, job.text
    assert "[worker 0] bad input" in job.lines or "[worker 1] bad input" in job.lines
    assert "exited with code 3; stopping all other processes" in job.text
    assert wait_session_empty(job.proc.pid) == []


def test_sigterm_to_the_launcher_stops_everything(launcher):
    job = launcher(["-n", "1", "-s", "1", "--grace", "2", "--", sys.executable, "-c",
                    "import time; print('up', flush=True); time.sleep(600)"])
    assert job.wait_for(lambda line: line == "[worker 0] up", 60), job.text
    os.kill(job.proc.pid, signal.SIGTERM)
    rc = job.wait(timeout=30)
    assert rc == 128 + signal.SIGTERM, job.text
    assert wait_session_empty(job.proc.pid) == []


def test_a_killed_launcher_takes_its_processes_along(launcher):
    job = launcher(["-n", "1", "-s", "1", "--", sys.executable, "-c",
                    "import time; print('up', flush=True); time.sleep(600)"])
    assert job.wait_for(lambda line: line == "[worker 0] up", 60), job.text
    os.kill(job.proc.pid, signal.SIGKILL)  # no chance to clean up: PR_SET_PDEATHSIG does it
    job.wait(timeout=30)
    assert wait_session_empty(job.proc.pid) == []


def test_usage_errors_are_one_line(launcher, tmp_path):
    from caffedata.errors import SpecError
    from caffedata.tools.launch import parse_env, plan_tasks

    for kwargs, message in [(dict(num_workers=0), "-n/--num-workers must be >= 1"),
                            (dict(num_servers=0), "ps-lite needs a server"),
                            (dict(hostfile=str(tmp_path / "none")), "hostfile")]:
        with pytest.raises(SpecError, match=message):
            plan_tasks(**{"num_workers": 1, "command": ["true"], **kwargs})
    with pytest.raises(SpecError, match="expected NAME=VALUE"):
        parse_env(["1BAD"])
    # Through the command line: one line on stderr, no traceback, nothing left running.
    for args, message in [(["-n", "2"], "no COMMAND given"),
                          (["-n", "1", "--", str(tmp_path / "missing-program")],
                           "cannot start worker 0")]:
        job = launcher(args)
        rc = job.wait(timeout=60)
        assert rc != 0 and message in job.text and "Traceback" not in job.text, job.text
        assert wait_session_empty(job.proc.pid) == []


def test_hostfile_and_task_plan(tmp_path):
    from caffedata.errors import SpecError
    from caffedata.tools.launch import parse_env, plan_tasks, read_hostfile

    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1\n\n# a comment\n10.0.0.2:2222  # inline\n")
    assert read_hostfile(hosts) == [("10.0.0.1", "22"), ("10.0.0.2", "2222")]
    bad = tmp_path / "bad"
    bad.write_text("10.0.0.1:ssh\n")
    with pytest.raises(SpecError, match="line 1"):
        read_hostfile(bad)
    assert parse_env(["A=1", "B"], environ={"B": "from here"}) == {"A": "1", "B": "from here"}
    with pytest.raises(SpecError, match="not set here"):
        parse_env(["UNSET_NAME"], environ={})
    # As dmlc's ssh tracker: the scheduler here, servers then workers round robin over the hosts.
    tasks = plan_tasks(3, ["python", "train.py", "--lr", "0.1"], num_servers=2, hostfile=hosts,
                       host_ip="10.0.0.9", port=9100, env={"OMP_NUM_THREADS": "2"}, cwd="/data/job")
    assert [(t.label, t.host) for t in tasks] == [
        ("scheduler", None), ("server 0", "10.0.0.1"), ("server 1", "10.0.0.2"),
        ("worker 0", "10.0.0.1"), ("worker 1", "10.0.0.2"), ("worker 2", "10.0.0.1")]
    assert tasks[0].argv == [sys.executable, "-c", "import mxnet"]
    assert tasks[0].env["DMLC_ROLE"] == "scheduler" and tasks[0].env["DMLC_PS_ROOT_URI"] == "10.0.0.9"
    worker = tasks[4]
    assert worker.argv[:2] == ["ssh", "-o"] and worker.argv[-2] == "10.0.0.2"
    assert worker.argv[worker.argv.index("-p") + 1] == "2222"
    remote = worker.argv[-1]
    for export in ("DMLC_ROLE=worker", "DMLC_PS_ROOT_URI=10.0.0.9", "DMLC_PS_ROOT_PORT=9100",
                   "DMLC_NUM_SERVER=2", "DMLC_NUM_WORKER=3", "DMLC_NODE_HOST=10.0.0.2",
                   "OMP_NUM_THREADS=2"):
        assert f"export {export};" in remote
    assert "cd /data/job && exec bash -c" in remote and remote.endswith("python train.py --lr 0.1")
    assert tasks[1].argv[-1].endswith("python3 -c 'import mxnet'")
