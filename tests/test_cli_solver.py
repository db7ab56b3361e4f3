"""`caffedata train | test | time` end to end, in subprocesses: a LeNet on the bundled digits.

The digits (8x8) are written to real LMDBs; the LeNet train_val follows Caffe's
examples/mnist one (conv 20, pool, conv 50, pool, ip 500, relu, ip 10, softmax
loss, accuracy in TEST) with 3x3 pad-1 kernels for the small images.  Log lines
are read with the regular expressions of Caffe's tools/extra/parse_log.py,
re-implemented here.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import key, package_env, raw_datum, write_db

# Caffe's tools/extra/parse_log.py
REGEX_ITERATION = re.compile(r"Iteration (\d+)")
REGEX_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
REGEX_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
REGEX_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
GLOG = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ")

TRAIN_VAL = """name: "LeNet"
layer { name: "digits" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "digits" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "val_lmdb" batch_size: 100 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 20 kernel_size: 3 pad: 1 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 50 kernel_size: 3 pad: 1 stride: 1
                      weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
LAYERS = ["digits", "conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2", "loss"]

# Caffe's lenet_solver values (lr 0.01, momentum 0.9, decay 5e-4, inv policy), fewer iterations
SOLVER = """net: "lenet_train_val.prototxt"
test_iter: 4
test_interval: 100
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 50
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 1
"""


def caffedata(args, cwd, timeout=120, env=None, **kwargs):
    """``python -m caffedata ARGS`` in ``cwd``; (returncode, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "caffedata"] + args, cwd=cwd, env=env or package_env(),
                          capture_output=True, text=True, timeout=timeout, **kwargs)
    return proc.returncode, proc.stdout, proc.stderr


def without_thread_pins(**extra):
    """The child's environment (the caffedata under test) without a user's thread count."""
    env = package_env(**extra)
    for name in ("OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS"):
        if name not in extra:
            env.pop(name, None)
    return env


def parse_test_outputs(stderr):
    """[(iteration, {name: value})] of the test blocks, read as parse_log.py reads them."""
    tests, iteration = [], None
    for line in stderr.splitlines():
        m = REGEX_ITERATION.search(line)
        if m and "Testing net" in line:
            iteration = int(m.group(1))
            tests.append((iteration, {}))
        m = REGEX_TEST_OUTPUT.search(line)
        if m:
            tests[-1][1][m.group(2)] = float(m.group(3))
    return tests


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from caffedata.datasets import load_digits

    images, labels = load_digits()
    order = np.random.RandomState(0).permutation(len(images))
    images, labels = images[order], labels[order]
    root = tmp_path_factory.mktemp("lenet")
    records = [(key(i), raw_datum(images[i][None], int(labels[i]))) for i in range(len(images))]
    write_db(root / "train_lmdb", records[:1400])
    write_db(root / "val_lmdb", records[1400:])
    (root / "lenet_train_val.prototxt").write_text(TRAIN_VAL)
    (root / "lenet_solver.prototxt").write_text(SOLVER.format(max_iter=300, snapshot=150, prefix="snap/lenet"))
    (root / "snap").mkdir()
    return root


@pytest.fixture(scope="module")
def trained(workdir):
    """One `caffedata train` run (300 iterations) shared by the tests below.

    One OpenMP thread, set in the environment (kept by the command): on a busy CI machine
    threads that wait for a core cost more than they give on this small net.
    """
    code, out, err = caffedata(["train", "--solver", "lenet_solver.prototxt", "--log-json", "train.jsonl"],
                               cwd=workdir, env=without_thread_pins(OMP_NUM_THREADS="1"))
    assert code == 0, err
    return err


def test_lenet_train_reaches_97_percent(workdir, trained):
    tests = parse_test_outputs(trained)
    assert [it for it, _ in tests] == [0, 100, 200, 300]
    assert tests[0][1]["accuracy"] < 0.5  # it did learn
    assert tests[-1][1]["accuracy"] >= 0.97, tests
    assert set(tests[-1][1]) == {"accuracy", "loss"}
    lines = [line for line in trained.splitlines() if GLOG.match(line)]
    assert any(line.endswith("Starting Optimization") for line in lines)
    assert sum(line.endswith("Optimization Done.") for line in lines) == 2  # Solve's and caffe train's
    lrs = [float(REGEX_LEARNING_RATE.search(line).group(1)) for line in lines if "] Iteration " in line
           and REGEX_LEARNING_RATE.search(line)]
    assert len(lrs) == 6 and lrs[0] == 0.01  # display 50: iterations 0..250
    train_losses = [float(m.group(3)) for m in map(REGEX_TRAIN_OUTPUT.search, lines) if m]
    assert len(train_losses) == 6 and train_losses[-1] < train_losses[0] / 5
    # a set OMP_NUM_THREADS is kept; Caffe's empty default stage is in the train state
    assert "Using 1 OpenMP threads (OMP_NUM_THREADS set in the environment)" in trained
    assert 'stage: ""' in trained.split("Solver scaffolding done.")[0]
    assert "\r" not in trained  # stderr is no terminal: no progress bar


def test_snapshots_and_mxnet_checkpoints(workdir, trained, monkeypatch):
    import mxnet as mx

    from caffedata.net.net import Net
    from caffedata.solver.state import read_solver_state

    for it in (150, 300):
        base = workdir / "snap" / f"lenet_iter_{it}"
        assert read_solver_state(f"{base}.solverstate").iter == it
        assert f"Snapshotting MXNet checkpoint to snap/lenet_iter_{it}-symbol.json" in trained
    monkeypatch.chdir(workdir)  # the prototxt's LMDB sources are relative, as in Caffe's examples
    net = Net(str(workdir / "lenet_train_val.prototxt"), phase="TEST",
              weights=str(workdir / "snap" / "lenet_iter_300.caffemodel"))
    sym, arg_params, aux_params = mx.model.load_checkpoint(str(workdir / "snap" / "lenet_iter_300"), 0)
    assert "ip2" in [n.rsplit("_", 2)[0] for n in arg_params]
    for layer in ("conv1", "conv2", "ip1", "ip2"):
        np.testing.assert_array_equal(arg_params[f"{layer}_0_weight"].asnumpy(), net.params[layer][0])
        np.testing.assert_array_equal(arg_params[f"{layer}_1_bias"].asnumpy(), net.params[layer][1])
    assert "loss" in sym.list_outputs()[0]


def test_caffedata_test_scores_the_snapshot_like_the_solver(workdir, trained):
    code, _, err = caffedata(["test", "--model", "lenet_train_val.prototxt", "--weights",
                              "snap/lenet_iter_300.caffemodel", "--iterations", "4", "--threads", "1"], cwd=workdir)
    assert code == 0, err
    lines = [GLOG.sub("", line) for line in err.splitlines() if GLOG.match(line)]
    assert "Running for 4 iterations." in lines
    batches = [line for line in lines if line.startswith("Batch ")]
    assert len(batches) == 8 and batches[-2].startswith("Batch 3, accuracy = ")
    mean = {line.split(" = ")[0]: line.split(" = ", 1)[1] for line in lines
            if re.match(r"^(accuracy|loss) = ", line)}
    accuracy = float(mean["accuracy"])
    # the solver's last test pass: the same weights on the same first 4 TEST batches
    final = parse_test_outputs(trained)[-1][1]
    assert accuracy == pytest.approx(final["accuracy"], abs=1e-6) and accuracy >= 0.97
    loss_value = float(mean["loss"].split(" ")[0])
    assert mean["loss"].endswith(f"(* 1 = {mean['loss'].split(' ')[0]} loss)")
    assert loss_value == pytest.approx(final["loss"], rel=1e-4)
    # the mean of the per-batch lines is the printed mean
    per_batch = [float(b.split(" = ")[1]) for b in batches if ", accuracy = " in b]
    assert np.mean(per_batch) == pytest.approx(accuracy, abs=1e-6)
    assert [line for line in lines if line.startswith("Loss: ")] == [f"Loss: {mean['loss'].split(' ')[0]}"]


def test_log_json_lines(workdir, trained):
    records = [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()]
    iterations = [r for r in records if r["event"] == "iteration"]
    assert [r["iter"] for r in iterations] == list(range(300))
    for r in iterations:
        # Caffe's inv policy, by hand: base_lr * (1 + gamma * iter) ^ -power
        assert r["lr"] == pytest.approx(0.01 * (1 + 0.0001 * r["iter"]) ** -0.75, rel=1e-6)
        assert r["outputs"] == {"loss": r["loss"]} and np.isfinite(r["loss"])
    tests = [r for r in records if r["event"] == "test"]
    assert [(r["iter"], r["test_net"]) for r in tests] == [(0, 0), (100, 0), (200, 0), (300, 0)]
    for record, (it, values) in zip(tests, parse_test_outputs(trained)):
        assert record["test_outputs"]["accuracy"] == pytest.approx(values["accuracy"], rel=1e-5)
    snapshots = [r for r in records if r["event"] == "snapshot"]
    assert [(r["iter"], r["caffemodel"], r["mxnet_params"]) for r in snapshots] == [
        (150, "snap/lenet_iter_150.caffemodel", "snap/lenet_iter_150-0000.params"),
        (300, "snap/lenet_iter_300.caffemodel", "snap/lenet_iter_300-0000.params")]


def test_snapshot_resume_continues_at_its_iteration(workdir, trained):
    (workdir / "resume").mkdir()
    (workdir / "resume_solver.prototxt").write_text(SOLVER.format(max_iter=300, snapshot=150,
                                                                  prefix="resume/lenet"))
    code, _, err = caffedata(["train", "--solver", "resume_solver.prototxt", "--snapshot",
                              "snap/lenet_iter_150.solverstate", "--log-json", "resume.jsonl", "--threads", "1"],
                             cwd=workdir)
    assert code == 0, err
    assert "Resuming from snap/lenet_iter_150.solverstate" in err
    assert "Using 1 OpenMP threads (--threads)" in err
    assert [it for it, _ in parse_test_outputs(err)] == [200, 300]
    records = [json.loads(line) for line in (workdir / "resume.jsonl").read_text().splitlines()]
    iterations = [r for r in records if r["event"] == "iteration"]
    assert [r["iter"] for r in iterations] == list(range(150, 300))
    first = [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()]
    lr_150 = next(r["lr"] for r in first if r["event"] == "iteration" and r["iter"] == 150)
    assert iterations[0]["lr"] == lr_150
    # the restored weights, not fresh fillers: the first loss is a trained net's
    assert iterations[0]["loss"] < 0.5
    assert (workdir / "resume" / "lenet_iter_300.caffemodel").is_file()
    assert not (workdir / "resume" / "lenet_iter_150.caffemodel").exists()


def test_native_train_gives_the_losses_of_the_exact_run(workdir, trained):
    """`caffedata train --native`: oneDNN operators, the same first iterations as the CaffeOp run."""
    (workdir / "native").mkdir()
    (workdir / "native_solver.prototxt").write_text(SOLVER.format(max_iter=20, snapshot=0, prefix="native/lenet"))
    code, _, err = caffedata(["train", "--solver", "native_solver.prototxt", "--native", "--log-json",
                              "native.jsonl", "--threads", "1"], cwd=workdir)
    assert code == 0, err
    native = [json.loads(line) for line in (workdir / "native.jsonl").read_text().splitlines()]
    exact = [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()]
    losses = [[r["loss"] for r in records if r["event"] == "iteration"][:20] for records in (native, exact)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    assert (workdir / "native" / "lenet_iter_20.caffemodel").is_file()


def test_sigint_snapshots_and_stops(workdir):
    (workdir / "sig").mkdir()
    (workdir / "long_solver.prototxt").write_text(
        SOLVER.format(max_iter=1000000, snapshot=0, prefix="sig/lenet").replace("display: 50", "display: 10"))
    env = without_thread_pins(OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "caffedata", "train", "--solver", "long_solver.prototxt"],
                            cwd=workdir, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        deadline = time.monotonic() + 90
        for line in proc.stderr:
            seen.append(line)
            if "] Iteration 20 (" in line:
                break
            assert time.monotonic() < deadline, "".join(seen)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen) + rest
    assert proc.returncode == 0, err
    assert "Optimization stopped early." in err
    m = re.search(r"Snapshotting to binary proto file sig/lenet_iter_(\d+)\.caffemodel", err)
    assert m, err
    stopped = int(m.group(1))
    assert 20 < stopped < 1000000
    from caffedata.solver.state import read_solver_state

    assert read_solver_state(str(workdir / "sig" / f"lenet_iter_{stopped}.solverstate")).iter == stopped
    assert (workdir / "sig" / f"lenet_iter_{stopped}-0000.params").is_file()
    assert "Traceback" not in err


def test_progress_bar_only_on_a_terminal(workdir):
    import fcntl
    import pty
    import struct
    import termios

    (workdir / "short_solver.prototxt").write_text(
        SOLVER.format(max_iter=20, snapshot=0, prefix="short/lenet").replace("test_interval: 100", "test_interval: 0")
        .replace("test_iter: 4", "").replace("display: 50", "display: 10"))
    (workdir / "short").mkdir()
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    env = without_thread_pins()
    proc = subprocess.Popen([sys.executable, "-m", "caffedata", "train", "--solver", "short_solver.prototxt"],
                            cwd=workdir, env=env, stderr=slave, stdout=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=60)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, text
    assert re.search(r"\r *\d+%\|.*\| 20/20 \[.*iter/s", text)  # tqdm's bar, redrawn in place
    assert "Iteration 10, lr = " in text and "Optimization Done." in text  # log lines still there
    # no thread setting given: every usable core, as caffe
    assert f"Using {len(os.sched_getaffinity(0))} OpenMP threads (all usable cores" in text


def test_time_prints_a_line_per_layer(workdir):
    code, out, err = caffedata(["time", "--model", "lenet_train_val.prototxt", "--iterations", "3", "--threads", "1"],
                               cwd=workdir)
    assert code == 0, err
    lines = [GLOG.sub("", line) for line in err.splitlines() if GLOG.match(line)]
    assert lines.index("Performing Forward") < lines.index("Performing Backward") < lines.index(
        "*** Benchmark begins ***")
    assert re.search(r"^Initial loss: 2\.\d+$", "\n".join(lines), re.M)  # 10 classes, random weights: ~ln 10
    assert "Testing for 3 iterations." in lines
    assert sum(line.startswith("Iteration: ") and "forward-backward time: " in line for line in lines) == 3
    forward, backward = {}, {}
    for line in lines:
        m = re.match(r"^ *(\S+)\t(forward|backward): ([\d.e+-]+) ms\.$", line)
        if m:
            assert len(line.split("\t")[0]) >= 10  # right-aligned in 10 characters
            (forward if m.group(2) == "forward" else backward)[m.group(1)] = float(m.group(3))
    assert list(forward) == LAYERS and list(backward) == LAYERS
    assert all(forward[name] > 0 for name in LAYERS)  # every layer runs an operator (the data layer: a read)
    assert backward["digits"] == 0 and all(backward[name] > 0 for name in LAYERS[1:])
    averages = {m.group(1): float(m.group(2)) for m in
                (re.match(r"^(Average Forward pass|Average Backward pass|Average Forward-Backward|Total Time): "
                          r"([\d.e+-]+) ms\.$", line) for line in lines) if m}
    assert len(averages) == 4 and lines[-1] == "*** Benchmark ends ***"
    # per-layer spans lie inside the timed passes (profiler and wall clock: 1 us slack per operator)
    assert sum(forward.values()) <= averages["Average Forward pass"] + 0.1
    assert sum(backward.values()) <= averages["Average Backward pass"] + 0.1
    assert averages["Total Time"] == pytest.approx(3 * averages["Average Forward-Backward"], rel=1e-4)


def test_time_in_test_phase_names_the_layers_it_cannot_run(workdir):
    code, out, err = caffedata(["time", "--model", "lenet_train_val.prototxt", "--iterations", "1", "--phase", "TEST",
                                "--threads", "1", "--profiler-table"], cwd=workdir)
    assert code == 0, err
    # Accuracy feeds no loss and has no backward: MXNet cannot run backward through it, so it is left out
    assert "Not run (no operator; MXNet runs only what feeds a loss): accuracy" in err
    assert re.search(r"  accuracy\tforward: 0 ms\.$", err, re.M)
    assert "_backward__caffedata_op" in out  # MXNet's own aggregate table, by operator type


@pytest.mark.parametrize("args, message", [
    (["train"], "the following arguments are required: --solver"),
    (["train", "--solver", "missing.prototxt"], "--solver missing.prototxt: no such file"),
    (["train", "--solver", "lenet_solver.prototxt", "--weights", "a.caffemodel", "--snapshot", "b.solverstate"],
     "Give a snapshot to resume training or weights to finetune but not both."),
    (["train", "--solver", "lenet_solver.prototxt", "--weights", "snap/none.caffemodel"],
     "--weights snap/none.caffemodel: no such file"),
    (["train", "--solver", "lenet_solver.prototxt", "--threads", "0"], "--threads: must be >= 1"),
    (["test", "--model", "lenet_train_val.prototxt", "--weights", "w.caffemodel"], "--weights w.caffemodel: no such"),
    (["test", "--model", "lenet_train_val.prototxt", "--weights", "lenet_solver.prototxt", "--iterations", "0"],
     "--iterations: must be >= 1"),
    (["time", "--model", "lenet_train_val.prototxt", "--phase", "VAL"], "invalid choice: 'VAL'"),
    (["time"], "the following arguments are required: --model"),
])
def test_bad_arguments_give_one_line_errors(workdir, args, message):
    code, out, err = caffedata(args, cwd=workdir, timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("caffedata: ") and message in lines[0], err


def test_broken_solver_file_is_an_error_naming_its_line(workdir):
    (workdir / "broken_solver.prototxt").write_text('net: "lenet_train_val.prototxt"\nbase_lr: fast\n')
    code, out, err = caffedata(["train", "--solver", "broken_solver.prototxt"], cwd=workdir, timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in err
    # the error, then the offending line quoted (caffedata's SpecError format); no log line before it
    assert lines[0].startswith("caffedata: broken_solver.prototxt:2:") and "Couldn't parse float" in lines[0]
    assert lines[1:] == ["  line 2: base_lr: fast -- fix the text (protobuf text format of caffe.SolverParameter)"]


def test_the_commands_import_mxnet_only_when_they_run(tmp_path):
    """The CLI modules load without mxnet (the thread count must be set before it loads)."""
    probe = ("import sys\nfrom caffedata.cli import build_parser, train, test, time\n"
             "parser = build_parser()\n"
             "for verb in ('train', 'test', 'time'):\n"
             "    try:\n        parser.parse_args([verb, '--help'])\n    except SystemExit:\n        pass\n"
             "print('mxnet imported:', 'mxnet' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env=package_env())
    assert r.returncode == 0, r.stderr
    assert "--log-json" in r.stdout and "--iterations" in r.stdout
    assert r.stdout.strip().endswith("mxnet imported: False")


def test_configure_threads_rules():
    from caffedata.cli import CommandError
    from caffedata.cli.runtime import configure_threads, stages_from, usable_cores

    # run in a child: this process may have imported mxnet already (then nothing is changed)
    code = ("from caffedata.cli.runtime import configure_threads as c\n"
            "e = {}; print(c(None, e), e)\n"
            "e = {'OMP_NUM_THREADS': '3'}; print(c(None, e), e)\n"
            "e = {'MXNET_OMP_MAX_THREADS': '5'}; print(c(4, e), e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=package_env())
    out = r.stdout.splitlines()
    assert r.returncode == 0, r.stderr
    cores = usable_cores()
    assert out[0].startswith(f"Using {cores} OpenMP threads (all usable cores") and f"'{cores}'" in out[0]
    assert out[1].startswith("Using 3 OpenMP threads (OMP_NUM_THREADS set") and "{'OMP_NUM_THREADS': '3'}" in out[1]
    assert out[2].startswith("Using 4 OpenMP threads (--threads)")
    assert "'MXNET_OMP_MAX_THREADS': '4'" in out[2] and "'OMP_NUM_THREADS': '4'" in out[2]
    with pytest.raises(CommandError, match="--threads: must be >= 1"):
        configure_threads(0, {})
    assert stages_from([]) == ("",) and stages_from(["a,b", "c"]) == ("a", "b", "c")
