"""caffedata: Caffe's datasets, layers and nets, first-class in Apache MXNet 1.9 and beyond.

The package has a framework-neutral core (formats, sources, the pipeline and
the dataset tools: numpy, no MXNet) and MXNet adapters (``caffedata.mxnet``).
``import caffedata`` never imports mxnet.  The MXNet side is installed the
moment both are imported, in either order: ``mx.io.CaffeDataIter``,
``mx.sym.CaffeOp`` and ``mx.sym.CaffeLoss`` then exist, so the MXNet FAQ's
Caffe examples run verbatim after ``import caffedata``.

Heavy submodules are imported on first use (PEP 562), so the command line
starts fast.
"""
import importlib

from . import _mxnet_hook
from .errors import CaffeDataError, DatabaseError, OpsLibraryError, RecordError, SpecError
from .formats.spec import Backend, DataLayerSpec, Phase, TransformSpec

__version__ = "0.1.0"

# name -> (module, attribute) of what is exported lazily
_LAZY = {
    "DataLayer": ("caffedata.pipeline.layer", "DataLayer"),
    "CaffePipeline": ("caffedata.pipeline.engine", "CaffePipeline"),
    "data_layer_spec": ("caffedata.formats.prototxt", "data_layer_spec"),
    "convert": ("caffedata.tools.convert", "convert_imageset"),
    "compute_mean": ("caffedata.tools.compute_mean", "compute_image_mean"),
    "inspect_db": ("caffedata.tools.inspect_db", "inspect"),
    "bench": ("caffedata.tools.bench", "run_bench"),
    "load_digits": ("caffedata.datasets", "load_digits"),
    # MXNet adapters: importing them imports mxnet.
    "CaffeDataIter": ("caffedata.mxnet.iterator", "CaffeDataIter"),
    "Net": ("caffedata.net.net", "Net"),
    "Solver": ("caffedata.solver.solver", "Solver"),
    "get_solver": ("caffedata.solver.solver", "get_solver"),
    "register_layer": ("caffedata.net.python_layer", "register_layer"),
}


def __getattr__(name):
    if name == "_fast":
        try:
            return importlib.import_module("caffedata._fast")
        except ImportError as exc:
            raise ImportError(
                f"caffedata's compiled core (_fast) is missing from {__path__[0]}: this looks like "
                f"an unbuilt source folder shadowing the installed package. Build it in place with "
                f"`pip install -e .` (or `python setup.py build_ext --inplace`) in that folder, or run "
                f"Python from another folder to use the installed caffedata.") from exc
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'caffedata' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


_mxnet_hook.install_when_mxnet_is_imported()

__all__ = ["DataLayer", "CaffeDataIter", "Net", "Solver", "get_solver", "register_layer", "CaffePipeline", "data_layer_spec", "convert", "compute_mean",
           "inspect_db", "bench", "load_digits", "Backend", "DataLayerSpec", "Phase", "TransformSpec",
           "CaffeDataError", "DatabaseError", "OpsLibraryError", "RecordError", "SpecError",
           "__version__"]
