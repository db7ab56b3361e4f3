"""Caffe's protobuf schema, without protoc at run time.

``caffe.proto`` is BVLC Caffe's final master schema, verbatim
(``src/caffe/proto/caffe.proto`` at commit 9b89154, a superset of the copy in
the mxnet 1.9.1 wheel: PoolingParameter.round_mode, InfogainLossParameter.axis,
ClipParameter, SwishParameter, SolverParameter.weights, rms_decay defaulting to
0.99).  ``caffe_descriptor.bin`` was produced from it at development time with
grpcio-tools' bundled protoc (libprotoc 35.1)::

    python -m grpc_tools.protoc --descriptor_set_out=caffe_descriptor.bin -I. caffe.proto

Loading the serialized descriptor into a private pool works across protobuf
runtimes 3.20 through 7.x (generated ``_pb2`` modules are tied to the protoc
version) and cannot clash with another ``caffe.proto`` registered in the
default pool by other software.
"""
import os

from google.protobuf import descriptor_pb2, descriptor_pool, text_format

try:  # protobuf >= 4.21
    from google.protobuf.message_factory import GetMessageClass as _message_class
except ImportError:  # pragma: no cover - protobuf 3.20
    from google.protobuf import message_factory as _mf

    _factory = _mf.MessageFactory()
    _message_class = _factory.GetPrototype

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_pool():
    with open(os.path.join(_HERE, "caffe_descriptor.bin"), "rb") as f:
        file_set = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in file_set.file:
        pool.Add(file_proto)
    return pool


POOL = _load_pool()


def message_class(name):
    """The Python class of message ``caffe.<name>``."""
    return _message_class(POOL.FindMessageTypeByName("caffe." + name))


Datum = message_class("Datum")
BlobShape = message_class("BlobShape")
BlobProto = message_class("BlobProto")
BlobProtoVector = message_class("BlobProtoVector")
NetParameter = message_class("NetParameter")
NetState = message_class("NetState")
NetStateRule = message_class("NetStateRule")
ParamSpec = message_class("ParamSpec")
LayerParameter = message_class("LayerParameter")
V0LayerParameter = message_class("V0LayerParameter")
V1LayerParameter = message_class("V1LayerParameter")
TransformationParameter = message_class("TransformationParameter")
DataParameter = message_class("DataParameter")
InputParameter = message_class("InputParameter")
FillerParameter = message_class("FillerParameter")
SolverParameter = message_class("SolverParameter")
SolverState = message_class("SolverState")

# Enums the net and solver code compare against (``caffe.Phase``: TRAIN=0, TEST=1).
TRAIN = POOL.FindEnumTypeByName("caffe.Phase").values_by_name["TRAIN"].number
TEST = POOL.FindEnumTypeByName("caffe.Phase").values_by_name["TEST"].number

__all__ = ["POOL", "message_class", "text_format", "Datum", "BlobShape", "BlobProto", "BlobProtoVector",
           "NetParameter", "NetState", "NetStateRule", "ParamSpec", "LayerParameter", "V0LayerParameter",
           "V1LayerParameter", "TransformationParameter", "DataParameter", "InputParameter",
           "FillerParameter", "SolverParameter", "SolverState", "TRAIN", "TEST"]
