"""Build both compiled products of caffedata.

1. ``caffedata._fast``: the Cython core (Datum decoding and the fused transform).
2. ``caffedata/libcaffedata_ops.so``: the C++ MXNet extension library built from
   ``ops/*.cc`` plus the ``lib_api.cc`` shipped inside the mxnet wheel.  It is
   not a Python module; ``caffedata.mxnet.library`` loads it with ``mx.library.load``.
   Where mxnet is not installed (Python >= 3.12: no mxnet 1.9.1 runs there)
   the library is skipped with a message and the core is built alone.
"""
import glob
import os
import shutil
import subprocess
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
OPS_LIBRARY = "libcaffedata_ops.so"


def _mxnet_dir():
    """The installed mxnet wheel's folder, found without importing mxnet (slow), or None."""
    import importlib.util

    spec = importlib.util.find_spec("mxnet")  # build requirement on Python < 3.12
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(spec.origin)


def build_ops_library(out_dir):
    """Compile ops/*.cc against the wheel's lib_api.h into out_dir/libcaffedata_ops.so."""
    mx_dir = _mxnet_dir()
    sources = sorted(glob.glob(os.path.join(HERE, "ops", "*.cc")))
    if not sources:
        return None
    if mx_dir is None:
        print("caffedata: mxnet is not installed, so the CaffeOp/CaffeLoss library (ops/) is not "
              "built; the framework-neutral core is. To get the MXNet side, use Python 3.11 with "
              "mxnet==1.9.1 installed.", file=sys.stderr)
        return None
    os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, OPS_LIBRARY)
    cxx = os.environ.get("CXX", "g++")
    cmd = [cxx, "-shared", "-fPIC", "-std=c++17", "-O3", "-fopenmp",
           "-I", os.path.join(mx_dir, "include"), "-I", os.path.join(HERE, "ops"),
           *sources, os.path.join(mx_dir, "src", "lib_api.cc"),
           "-o", target]
    # The GEMM of InnerProduct/Convolution comes from the OpenBLAS that the
    # mxnet wheel already ships, so the library adds no new native dependency.
    cmd += ["-DCAFFEDATA_USE_CBLAS", os.path.join(mx_dir, "libopenblas.so.0"),
            "-Wl,-rpath," + mx_dir]
    print(" ".join(cmd), file=sys.stderr)
    subprocess.check_call(cmd)
    return target


class BuildWithOps(build_ext):
    def run(self):
        super().run()
        out_dir = os.path.join(self.build_lib, "caffedata")
        target = build_ops_library(out_dir)
        if target and self.inplace:
            shutil.copy2(target, os.path.join(HERE, "caffedata", OPS_LIBRARY))


# CAFFEDATA_SANITIZE=1: build the Cython core with AddressSanitizer and UBSan,
# for fuzzing (python -m tests.fuzz.fuzz_datum); run it with the sanitizer
# runtime preloaded: LD_PRELOAD=$(gcc -print-file-name=libasan.so).
SANITIZE = os.environ.get("CAFFEDATA_SANITIZE", "") not in ("", "0")
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fno-omit-frame-pointer", "-g", "-O1"]

extensions = [
    Extension(
        "caffedata._fast",
        ["caffedata/_fast.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=(SANITIZE_FLAGS if SANITIZE else ["-O3"]) + ["-ffp-contract=off"],
        extra_link_args=SANITIZE_FLAGS if SANITIZE else [],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    # LevelDB's Snappy blocks and block entries, for reading table files directly.
    Extension(
        "caffedata.sources._leveldb",
        ["caffedata/sources/_leveldb.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=(SANITIZE_FLAGS if SANITIZE else ["-O3"]),
        extra_link_args=SANITIZE_FLAGS if SANITIZE else [],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
    # The DLPack hand-off to MXNet: links nothing of MXNet, so it builds everywhere.
    Extension(
        "caffedata.mxnet._dlpack",
        ["caffedata/mxnet/_dlpack.pyx"],
        include_dirs=[numpy.get_include()],
        extra_compile_args=["-O2"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(extensions, language_level=3,
                          compiler_directives={"boundscheck": False, "wraparound": False}),
    cmdclass={"build_ext": BuildWithOps},
)
