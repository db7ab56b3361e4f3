"""caffedata: Caffe datasets and layers, first-class in Apache MXNet 1.9.

Importing caffedata makes ``mx.io.CaffeDataIter`` available (and, when the
compiled ops library is built, ``mx.sym.CaffeOp`` / ``mx.sym.CaffeLoss``), so
the MXNet FAQ's Caffe examples run verbatim after ``import caffedata``.
"""
import mxnet as _mx

from .errors import CaffeDataError, DatabaseError, OpsLibraryError, RecordError, SpecError
from .iterator import CaffeDataIter
from .pipeline import CaffePipeline
from .prototxt import data_layer_spec
from .spec import Backend, DataLayerSpec, Phase, TransformSpec

__version__ = "0.1.0"

_mx.io.CaffeDataIter = CaffeDataIter

from .mxnet import symbols as _symbols  # noqa: E402

_symbols.install()

__all__ = ["CaffeDataIter", "CaffePipeline", "data_layer_spec", "Backend", "DataLayerSpec", "Phase",
           "TransformSpec", "CaffeDataError", "DatabaseError", "OpsLibraryError", "RecordError",
           "SpecError", "__version__"]
