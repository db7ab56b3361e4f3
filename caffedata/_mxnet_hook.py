"""Install caffedata's MXNet adapters when mxnet is imported, without importing it ourselves.

``import caffedata`` must stay free of mxnet (seconds of start-up, and no
mxnet at all on Python >= 3.12), yet the FAQ code ``import caffedata; import
mxnet as mx; mx.io.CaffeDataIter(...)`` must work.  So: if mxnet is already
imported, install now; otherwise wrap the loader of the ``mxnet`` module so
that the adapters are installed right after mxnet's own ``__init__`` ran.
"""
import logging
import sys
import threading

# No importlib.abc / importlib.util at import time (they pull in pathlib and
# importlib.resources: ~50 ms of every command's start); the import system
# only needs the methods, duck-typed below.

log = logging.getLogger("caffedata")

_lock = threading.Lock()
_state = {"installed": False}


def install_now():
    """Install the adapters into the (imported) mxnet module; idempotent.

    Importing ``caffedata.mxnet`` installs them.  If that package's own import
    is what brought mxnet in, it is still running: it installs them when done.
    """
    with _lock:
        if _state["installed"]:
            return
        _state["installed"] = True
    import importlib

    importlib.import_module("caffedata.mxnet")


class _InstallAfterExec:
    """Delegates to mxnet's real loader, then installs the adapters."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def __getattr__(self, name):  # anything else the import system asks (get_code, is_package...)
        return getattr(self._loader, name)

    def exec_module(self, module):
        from ._mxnet_compat import check_numpy_for_mxnet

        check_numpy_for_mxnet()  # `import mxnet` under numpy >= 1.24 says what to do
        self._loader.exec_module(module)
        _remove_finder()  # mxnet is in sys.modules now: nothing more to watch
        try:
            install_now()
        except Exception:  # never break `import mxnet` itself
            log.exception("caffedata: installing the MXNet adapters failed")


class _MXNetFinder:
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "mxnet":
            return None
        import importlib.util

        # Ask the other finders for the real spec.  This finder stays installed:
        # find_spec is also called without an import (importlib.util.find_spec).
        index = sys.meta_path.index(self) if self in sys.meta_path else None
        _remove_finder()
        try:
            spec = importlib.util.find_spec("mxnet")
        finally:
            if index is not None and self not in sys.meta_path:
                sys.meta_path.insert(index, self)
        if spec is None or spec.loader is None:
            return spec  # no mxnet here: the core works without it
        spec.loader = _InstallAfterExec(spec.loader)
        return spec


_finder = _MXNetFinder()


def _remove_finder():
    try:
        sys.meta_path.remove(_finder)
    except ValueError:
        pass


def install_when_mxnet_is_imported():
    if "mxnet" in sys.modules:
        install_now()
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
