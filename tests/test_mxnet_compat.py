"""The numpy check made before `import mxnet`: numpy >= 1.24 gets an error that names the fix."""
import os
import subprocess
import sys
import textwrap

import mxnet  # noqa: F401  (the check guards mxnet's environment: an MXNet test file)
import pytest

from caffedata.errors import CaffeDataError
from caffedata._mxnet_compat import NumpyVersionError, check_numpy_for_mxnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("version", ["1.24.0", "1.26.4", "2.0.0", "2.1.0rc1", "10.0"])
def test_numpy_too_new_for_mxnet_says_what_to_do(version):
    with pytest.raises(NumpyVersionError) as info:
        check_numpy_for_mxnet(version)
    message = str(info.value)
    assert message.startswith(f"numpy {version} is installed, but MXNet 1.9.1 needs numpy < 1.24")
    assert 'pip install "numpy<1.24"' in message
    assert isinstance(info.value, CaffeDataError) and isinstance(info.value, ImportError)


@pytest.mark.parametrize("version", ["1.23.5", "1.16.0", "1.23.0.dev0+1", "garbage"])
def test_numpy_mxnet_can_import_passes(version):
    assert check_numpy_for_mxnet(version) == version


def test_installed_numpy_is_read_without_importing_mxnet():
    import numpy

    # Load the real modules under a package object whose __init__ (which may import mxnet) is not run.
    code = textwrap.dedent(f"""
        import sys, types
        pkg = types.ModuleType("caffedata")
        pkg.__path__ = [{os.path.join(REPO, "caffedata")!r}]
        sys.modules["caffedata"] = pkg
        from caffedata._mxnet_compat import check_numpy_for_mxnet
        print(check_numpy_for_mxnet())
        assert "mxnet" not in sys.modules and "numpy" not in sys.modules, sorted(sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == numpy.__version__
