"""The README's code runs as written: every ```python block, and the ```bash blocks' `caffedata` lines.

Each block runs in a subprocess, in a fresh folder holding what the README's
snippets name: ``mnist_test_lmdb`` (the bundled digits as 1x8x8 raw Datums;
the snippets need only its records, not MNIST's 28x28 size), ``train_val.prototxt``
(TRAIN and TEST Data layers over it), and ``images/`` with ``train.txt`` (small
colour PNGs) for the dataset tools.  Lines that need
a network (``pip install``) are not run; ``caffedata demo`` is run by
test_cli.py's short demo.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

import lmdb
import mxnet  # noqa: F401  (most README blocks use MXNet: a hard dependency of this file)
import numpy as np
import pytest

import cv2  # noqa: E402
from conftest import package_env, wire_raw_datum  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
NOT_RUN = {"demo": "test_demo.py runs it (10 epochs here would take too long)",
           "launch": "test_dist.py runs the launcher with this recipe (real ps-lite processes)"}
# Python blocks that are scripts for other processes, by their first line, and what runs them instead.
PYTHON_NOT_RUN = {"# train.py -- the same script runs on every worker":
                  "test_dist.py runs this recipe under `caffedata launch` (tests/dist_train.py)"}


def code_blocks(language):
    """(line number, code) of each fenced block of ``language`` in the README."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for m in re.finditer(r"^```(\w+)\n(.*?)^```", text, re.S | re.M):
        if m.group(1) == language:
            blocks.append((text.count("\n", 0, m.start()) + 1, m.group(2)))
    return blocks


def caffedata_lines():
    """The `caffedata ...` commands of the bash blocks (continuation lines joined)."""
    commands = []
    for _, code in code_blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            if line.strip().startswith("caffedata "):
                commands.append(line.strip())
    return commands


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """What the snippets name: mnist_test_lmdb, images/ and train.txt."""
    from caffedata.datasets import load_digits

    base = tmp_path_factory.mktemp("readme")
    images, labels = load_digits()
    env = lmdb.open(str(base / "mnist_test_lmdb"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i, (img, label) in enumerate(zip(images, labels)):
            txn.put(b"%08d" % i, wire_raw_datum(img[np.newaxis], int(label)))
    env.close()
    (base / "images").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        cv2.imwrite(str(base / "images" / f"{i}.png"),
                    rng.integers(0, 256, (32, 30, 3), dtype=np.uint8))
        lines.append(f"{i}.png {i % 3}\n")
    (base / "train.txt").write_text("".join(lines))
    data = ('layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: {phase} }} '
            'transform_param {{ scale: 0.00390625 }} data_param {{ source: "mnist_test_lmdb" batch_size: 64 '
            'backend: LMDB }} }}\n')
    (base / "train_val.prototxt").write_text(
        data.format(phase="TRAIN") + data.format(phase="TEST")
        + 'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
          'inner_product_param { num_output: 10 } }\n')
    # "Caffe's solvers": a solver over a small train/test net on the same LMDB
    (base / "lenet_solver.prototxt").write_text(SOLVER)
    (base / "lenet_train_test.prototxt").write_text(TRAIN_TEST)
    # "Whole Caffe nets": a small LeNet-style deploy net and weights written by caffedata itself
    (base / "deploy.prototxt").write_text(DEPLOY)
    import caffedata

    caffedata.Net(str(base / "deploy.prototxt")).save(str(base / "weights.caffemodel"))
    return base


SOLVER = """
net: "lenet_train_test.prototxt"
test_iter: 2  test_interval: 10
base_lr: 0.05  momentum: 0.9  weight_decay: 0.0005
lr_policy: "inv"  gamma: 0.0001  power: 0.75
display: 10  max_iter: 20  snapshot: 10  snapshot_prefix: "lenet"
"""

TRAIN_TEST = """
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 } data_param { source: "mnist_test_lmdb" batch_size: 32 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 } data_param { source: "mnist_test_lmdb" batch_size: 50 backend: LMDB } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include { phase: TEST } }
"""

DEPLOY = """
name: "LeNet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""


def fresh_copy(workdir, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(workdir, run_dir)
    return run_dir


def child_env():
    return package_env()


def test_readme_has_the_blocks_this_test_runs():
    assert len(code_blocks("python")) >= 4
    verbs = [shlex.split(c)[1] for c in caffedata_lines()]
    assert {"convert", "mean", "inspect", "bench", "demo"} <= set(verbs)


def test_blocks_not_run_here_are_the_documented_ones():
    scripts = [code.splitlines()[0] for _, code in code_blocks("python")
               if code.splitlines()[0] in PYTHON_NOT_RUN]
    assert scripts == list(PYTHON_NOT_RUN)  # each exception stands for a real block, once


@pytest.mark.parametrize("line, code", [pytest.param(line, code, id=f"README.md:{line}")
                                        for line, code in code_blocks("python")
                                        if code.splitlines()[0] not in PYTHON_NOT_RUN])
def test_python_block_runs(workdir, tmp_path, line, code):
    run_dir = fresh_copy(workdir, tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], cwd=run_dir, env=child_env(),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"README.md line {line}:\n{code}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr


RUN_COMMANDS = """
import json, shlex, sys
from caffedata.cli import main
for command in json.loads(sys.argv[1]):
    try:
        code = main(shlex.split(command)[1:])
    except SystemExit as exc:
        code = exc.code
    if code:
        sys.exit(f"README command failed with exit code {code}: {command}")
"""


def test_bash_caffedata_lines_run(workdir, tmp_path):
    import json

    run_dir = fresh_copy(workdir, tmp_path)
    commands = [c for c in caffedata_lines() if shlex.split(c)[1] not in NOT_RUN]
    ran = [shlex.split(c)[1] for c in commands]
    # one interpreter runs them in order through the console script's own entry point
    proc = subprocess.run([sys.executable, "-c", RUN_COMMANDS, json.dumps(commands)], cwd=run_dir,
                          env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"convert", "mean", "inspect", "bench"} <= set(ran)
    # what the lines promise exists and has the right shape
    assert (run_dir / "train_lmdb" / "data.mdb").exists()
    assert np.load(run_dir / "mean.npy").shape == (3, 28, 28)
    assert cv2.imread(str(run_dir / "grid.png")) is not None
