"""Checks that MXNet 1.9.1 can run in this environment, made before ``import mxnet`` (by the hook too).

MXNet 1.9.1 uses numpy aliases (``np.bool``, ``np.object``, ...) that numpy 1.24
removed, so with numpy >= 1.24 (numpy 2 included, e.g. pulled in by
scikit-image) ``import mxnet`` fails deep inside MXNet with an AttributeError
that names neither numpy's version nor the fix.  ``check_numpy_for_mxnet``
reads numpy's version from the installed distribution's metadata, without
importing mxnet (nor numpy), and raises an error that says what to do.
"""
import re

from .errors import CaffeDataError

__all__ = ["NumpyVersionError", "check_numpy_for_mxnet", "MXNET_NUMPY_LIMIT"]

MXNET_NUMPY_LIMIT = (1, 24)  # first numpy release MXNet 1.9.1 cannot import with


class NumpyVersionError(CaffeDataError, ImportError):
    """The installed numpy is too new for MXNet 1.9.1."""


def _installed_numpy_version():
    from importlib import metadata

    try:
        return metadata.version("numpy")
    except metadata.PackageNotFoundError:
        return None


def _major_minor(version):
    m = re.match(r"\s*(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_numpy_for_mxnet(numpy_version=None):
    """Raise NumpyVersionError when numpy (``numpy_version``, default: the installed one) is >= 1.24.

    Returns the version checked.  An unparsable or missing version is let
    through: ``import mxnet`` then reports whatever is wrong.
    """
    version = _installed_numpy_version() if numpy_version is None else str(numpy_version)
    if version is None:
        return None
    parsed = _major_minor(version)
    if parsed is not None and parsed >= MXNET_NUMPY_LIMIT:
        raise NumpyVersionError(
            f"numpy {version} is installed, but MXNet 1.9.1 needs numpy < 1.24 (it uses aliases "
            f"such as np.bool that numpy 1.24 removed), so `import mxnet` would fail -- run "
            f"`pip install \"numpy<1.24\"` (if another package pulled in the newer numpy, e.g. "
            f"scikit-image, install a release of it that supports numpy 1.23, or keep it in a "
            f"separate environment)")
    return version
