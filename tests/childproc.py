"""Run test code in a fresh interpreter, for crash, hang and exit cases."""
import subprocess
import sys
import tempfile
import textwrap

from conftest import package_env


def run_child(code, *args, timeout=60):
    """Run ``code`` (dedented) with ``sys.argv[1:] = args`` in a child that imports the caffedata
    under test; a CompletedProcess.  Raises subprocess.TimeoutExpired past ``timeout``.
    """
    code = "import os, sys\n" + textwrap.dedent(code)  # what every child script starts with
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=package_env(),
                          cwd=tempfile.gettempdir())  # not the checkout: its caffedata may be unbuilt
