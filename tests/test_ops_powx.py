"""LRN's powers (ops/powx.cc) against the C library's powf, bit for bit, for every float.

Caffe computes LRN's scale^-beta with powf; the ops library computes it eight at a
time in double precision and calls powf wherever the rounding could differ.  This
builds a small harness with the same source and compares every float in [1/4, 256)
(84 million values) for two exponents.  Needs only a C++ compiler (no MXNet).
"""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
OPS = os.path.join(os.path.dirname(HERE), "ops")


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler on PATH")
    exe = str(tmp_path_factory.mktemp("powx") / "powx_exhaustive")
    subprocess.run([cxx, "-O2", "-std=c++17", "-I", OPS, os.path.join(HERE, "powx_exhaustive.cc"),
                    os.path.join(OPS, "powx.cc"), "-o", exe], check=True, timeout=300)
    return exe


def test_powx_equals_powf_for_every_float_in_a_quarter_to_256(harness):
    # (on a CPU or C library without the vector path, powx_float is powf itself)
    proc = subprocess.run([harness, "0.25", "256", "-0.75", "-1"], capture_output=True, text=True,
                          timeout=600)
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rows == [["-0.75", "83886080", "0"], ["-1", "83886080", "0"]]
