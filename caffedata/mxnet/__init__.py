"""caffedata's MXNet adapters: ``mx.io.CaffeDataIter`` and ``mx.sym.CaffeOp`` / ``CaffeLoss``.

Importing this package imports mxnet.  ``install()`` is called for you when
mxnet and caffedata are both imported (``caffedata/_mxnet_hook.py``).
"""
from .._mxnet_compat import check_numpy_for_mxnet

check_numpy_for_mxnet()  # a clear error, not an AttributeError deep inside mxnet, under numpy >= 1.24

import mxnet as mx  # noqa: E402

from .iterator import CaffeDataIter  # noqa: E402


def install():
    """Register ``mx.io.CaffeDataIter``, (when the ops library loads) ``mx.sym.CaffeOp``/``CaffeLoss``,
    and Caffe's update rules as ``mx.optimizer.create('caffe_sgd', ...)`` and friends."""
    mx.io.CaffeDataIter = CaffeDataIter
    from . import symbols

    symbols.install()
    from ..solver import optimizers

    if hasattr(optimizers, "register"):  # else mxnet is being imported *by* optimizers, which registers at its end
        optimizers.register()


__all__ = ["CaffeDataIter", "install"]
