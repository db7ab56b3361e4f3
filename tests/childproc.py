"""Run test code in a fresh interpreter, for crash, hang and exit cases."""
import os
import subprocess
import sys
import textwrap

import caffedata.errors

# The checkout whose caffedata the tests import, for the child to import too.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(caffedata.errors.__file__)))

# The child loads the caffedata package without running its __init__ while that
# still imports mxnet (2 s per child); the data path itself never uses mxnet.
PREAMBLE = textwrap.dedent(f"""
    import os, sys, types
    sys.path.insert(0, {ROOT!r})
    if "import mxnet" in open(os.path.join({ROOT!r}, "caffedata", "__init__.py")).read():
        _pkg = types.ModuleType("caffedata")
        _pkg.__path__ = [os.path.join({ROOT!r}, "caffedata")]
        sys.modules["caffedata"] = _pkg
""")


def run_child(code, *args, timeout=60):
    """Run ``code`` (dedented) after PREAMBLE with ``sys.argv[1:] = args``; a CompletedProcess.

    Raises subprocess.TimeoutExpired when it runs past ``timeout``.
    """
    return subprocess.run([sys.executable, "-c", PREAMBLE + textwrap.dedent(code), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
