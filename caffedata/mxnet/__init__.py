"""caffedata's MXNet adapters: ``mx.io.CaffeDataIter`` and ``mx.sym.CaffeOp`` / ``CaffeLoss``.

Importing this package imports mxnet.  ``install()`` is called for you when
mxnet and caffedata are both imported (``caffedata/_mxnet_hook.py``).
"""
import mxnet as mx

from .iterator import CaffeDataIter


def install():
    """Register ``mx.io.CaffeDataIter`` and (when the ops library loads) ``mx.sym.CaffeOp``/``CaffeLoss``."""
    mx.io.CaffeDataIter = CaffeDataIter
    from . import ops

    ops.install()


__all__ = ["CaffeDataIter", "install"]
