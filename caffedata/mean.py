"""Mean images: Caffe ``BlobProto`` files (``mean.binaryproto``) to and from numpy."""
import numpy as np
from google.protobuf.message import DecodeError

from .errors import SpecError
from .proto import BlobProto

_LEGACY = ("num", "channels", "height", "width")


def blob_to_array(blob, path="<blob>"):
    """Caffe's Blob::FromProto: legacy 4-D fields win over ``shape``; ``double_data`` wins over ``data``."""
    if any(blob.HasField(f) for f in _LEGACY):
        shape = tuple(getattr(blob, f) for f in _LEGACY)
    else:
        shape = tuple(blob.shape.dim)
    if any(d < 0 for d in shape):
        raise SpecError(f"{path}: blob has a negative dimension {shape} -- the mean file is "
                        f"corrupt or not a BlobProto")
    count = 1
    for d in shape:  # Python ints: no overflow
        count *= d
    values = blob.double_data if len(blob.double_data) else blob.data
    if len(values) != count:
        raise SpecError(f"{path}: blob of shape {shape} must hold {count} values, it holds "
                        f"{len(values)} -- the mean file is truncated or not a BlobProto")
    dtype = np.float64 if len(blob.double_data) else np.float32
    return np.asarray(values, dtype=dtype).astype(np.float32).reshape(shape)


def load_mean_file(path):
    """The mean as Caffe's transformer sees it: float32 of shape (C, H, W).

    Caffe reads channels/height/width through the blob's legacy accessors
    (axes 1..3 with one-padding), so the blob must be (1, C, H, W)-shaped; a
    3-D (C, H, W) blob mis-maps in Caffe and is refused here with a clear error.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read mean_file ({exc.strerror}) -- check "
                        f"transform_param.mean_file") from exc
    try:
        blob = BlobProto.FromString(raw)
    except DecodeError as exc:
        raise SpecError(f"{path}: not a binary BlobProto ({exc}) -- mean_file must be written by "
                        f"compute_image_mean or `caffedata mean`") from exc
    array = blob_to_array(blob, path)
    if array.ndim != 4 or array.shape[0] != 1:
        raise SpecError(f"{path}: mean blob has shape {array.shape}; Caffe needs (1, C, H, W) -- "
                        f"rewrite it with `caffedata mean` or with legacy num=1 channels/height/width")
    return np.ascontiguousarray(array[0])


def mean_to_blobproto_bytes(mean_chw):
    """Serialize a (C, H, W) mean exactly as compute_image_mean does: legacy fields, packed data."""
    mean_chw = np.asarray(mean_chw, dtype=np.float32)
    c, h, w = mean_chw.shape
    blob = BlobProto(num=1, channels=c, height=h, width=w)
    blob.data.extend(mean_chw.ravel().tolist())
    return blob.SerializeToString()
