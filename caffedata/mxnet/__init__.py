"""caffedata's MXNet adapters: ``mx.io.CaffeDataIter``, ``mx.sym.CaffeOp`` / ``CaffeLoss``, Caffe's optimizers.

Importing this package imports mxnet and installs the adapters into it (once).
``caffedata/_mxnet_hook.py`` imports it for you as soon as mxnet and caffedata
are both imported, in either order.
"""
import sys

from .._mxnet_compat import check_numpy_for_mxnet

check_numpy_for_mxnet()  # a clear error, not an AttributeError deep inside mxnet, under numpy >= 1.24

import mxnet as mx  # noqa: E402

from .iterator import CaffeDataIter  # noqa: E402

_installed = False


def install():
    """Register ``mx.io.CaffeDataIter``, (when the ops library loads) ``mx.sym.CaffeOp``/``CaffeLoss``,
    and Caffe's update rules as ``mx.optimizer.create('caffe_sgd', ...)`` and friends.  Idempotent."""
    global _installed
    if _installed:
        return
    _installed = True
    mx.io.CaffeDataIter = CaffeDataIter
    from . import symbols

    symbols.install()
    # The optimizers register themselves when their module is imported; if that import is
    # what brought mxnet in, it is still running and finishes the job itself.
    if "caffedata.solver.optimizers" not in sys.modules:
        from ..solver import optimizers  # noqa: F401


install()

__all__ = ["CaffeDataIter", "install"]
