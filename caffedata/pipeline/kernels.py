"""Validating wrappers around the Cython core: records of one batch in, a filled batch out.

``BatchAssembler`` checks every record against the batch and the transform
(sizes, crop, mean) and turns any problem into a ``RecordError`` that names
the database, the key and the fix.  Its fast loops in ``_fast`` make the same
checks in C and hand any record that fails one back to this general path.
"""
import cv2
import numpy as np

from .. import _fast
from ..formats.datum import parse_datum
from ..errors import RecordError

_FLOAT_PACKED = _fast.FLOAT_LAYOUTS["packed"]
_FLOAT_UNPACKED = _fast.FLOAT_LAYOUTS["unpacked"]
_LAYOUT_FOR_FLOAT = {_FLOAT_PACKED: _fast.LAYOUT_CHW_F32, _FLOAT_UNPACKED: _fast.LAYOUT_CHW_F32_TAGGED}


# imdecode flags, as Caffe's DecodeDatumToCVMat/DecodeDatumToCVMatNative use them.
IMREAD_NATIVE, IMREAD_GRAY, IMREAD_COLOR = -1, 0, 1


def decode_flag(transform):
    if transform.force_color:
        return IMREAD_COLOR
    if transform.force_gray:
        return IMREAD_GRAY
    return IMREAD_NATIVE


# Encoded records whose header claims more pixels are refused before decoding:
# a corrupt or hostile 600-byte JPEG can claim 30000x30000 and cost 5 GB.
MAX_IMAGE_PIXELS = 1 << 26


def image_size(payload):
    """(height, width) from a PNG, JPEG or BMP header, or None (other format, or cut short)."""
    return _fast.image_header_size(np.frombuffer(payload, dtype=np.uint8))


def decode_image(payload, flag, max_pixels=MAX_IMAGE_PIXELS):
    """cv2.imdecode with Caffe's flags: HWC uint8 (channels last, BGR(A)), or a str saying why not."""
    array = np.frombuffer(payload, dtype=np.uint8)
    size = image_size(array)
    if size is not None and size[0] * size[1] > max_pixels:
        return (f"the image header claims {size[1]}x{size[0]} = {size[0] * size[1]:,} pixels, over "
                f"the limit of {max_pixels:,} (max_image_pixels)")
    try:
        image = cv2.imdecode(array, flag)
    except cv2.error as exc:  # e.g. over OpenCV's own 2^30-pixel limit
        return f"OpenCV refused the image ({str(exc).strip().splitlines()[-1]})"
    if image is None:
        return (f"cannot decode the encoded image ({len(array)} bytes; not a JPEG/PNG OpenCV can "
                f"read)")
    if image.dtype != np.uint8:
        return "depth"  # Caffe CHECKs CV_8U: a 16-bit PNG decoded unchanged is refused
    if image.ndim == 2:
        image = image[:, :, None]
    return np.ascontiguousarray(image)


class Record:
    """A parsed record's pixels, ready for the kernel: (layout, src bytes, C, H, W, label)."""

    __slots__ = ("layout", "src", "channels", "height", "width", "label")

    def __init__(self, layout, src, channels, height, width, label):
        self.layout, self.src = layout, src
        self.channels, self.height, self.width, self.label = channels, height, width, label


class BatchAssembler:
    """Turns serialized Datums into Caffe-transformed batches for one data layer.

    ``mean`` is the (C, H, W) float32 mean file or None.
    """

    def __init__(self, transform, mean, db_path, dtype=np.float32, max_image_pixels=MAX_IMAGE_PIXELS):
        self.transform = transform
        self.db_path = db_path
        self.dtype = np.dtype(dtype)
        self.mean = None if mean is None else np.ascontiguousarray(mean, dtype=np.float32)
        self.mean_values = np.asarray(transform.mean_value, dtype=np.float32)
        self.flag = decode_flag(transform)
        self.max_image_pixels = int(max_image_pixels)
        self.scale = float(transform.scale)
        self._params = {}  # (C, H, W) -> _fast.TransformParams

    def params(self, c, h, w):
        """The kernels' view of this layer's transform for records of (C, H, W) (cached)."""
        tp = self._params.get((c, h, w))
        if tp is None:
            t = self.transform
            tp = _fast.TransformParams(c, h, w, crop=t.crop_size, random_crop=t.random_crop, mirror=t.mirror,
                                       scale=self.scale, mean=self.mean, mean_values=self.mean_values)
            if len(self._params) > 64:  # records of many sizes (crop): keep the cache small
                self._params.clear()
            self._params[(c, h, w)] = tp
        return tp

    # -- parsing one record -------------------------------------------------
    def parse(self, value, key, index):
        """A ``Record`` for one serialized Datum, decoding encoded images."""
        value = memoryview(value).cast("B") if not isinstance(value, bytes) else value
        (err, c, h, w, label, encoded, data_off, data_len, float_off, float_count,
         float_layout) = _fast.datum_header(value)
        if err:
            raise RecordError(self.db_path, key, index,
                              f"corrupt Datum: {_fast.DATUM_ERRORS[err]} ({len(value)} bytes)",
                              "rebuild the database or delete this record")
        if encoded:
            if data_len <= 0:
                raise RecordError(self.db_path, key, index, "encoded Datum has no image bytes",
                                  "rebuild the database")
            image = decode_image(value[data_off:data_off + data_len], self.flag, self.max_image_pixels)
            if isinstance(image, str) and image == "depth":
                raise RecordError(self.db_path, key, index,
                                  "image is not 8-bit (Caffe requires CV_8U)",
                                  "store 8-bit images or set force_color/force_gray")
            if isinstance(image, str):
                raise RecordError(self.db_path, key, index, image,
                                  "re-encode or remove this record (or raise max_image_pixels "
                                  "if a huge image is genuine)")
            hh, ww, cc = image.shape
            return Record(_fast.LAYOUT_HWC_U8, image.reshape(-1), cc, hh, ww, label)
        # force_color/force_gray do nothing to raw datums (Caffe only logs an error).
        if c <= 0 or h <= 0 or w <= 0:
            raise RecordError(self.db_path, key, index,
                              f"Datum has channels/height/width {c}/{h}/{w}",
                              "a raw Datum needs positive channels, height and width")
        count = c * h * w
        if data_len > 0:
            if data_len != count:
                raise RecordError(self.db_path, key, index,
                                  f"data holds {data_len} bytes but channels*height*width is "
                                  f"{c}*{h}*{w} = {count} (truncated or mislabelled record)",
                                  "rebuild the database")
            return Record(_fast.LAYOUT_CHW_U8, value[data_off:data_off + count], c, h, w, label)
        if float_count != count:
            raise RecordError(self.db_path, key, index,
                              f"float_data holds {float_count} values but channels*height*width "
                              f"is {c}*{h}*{w} = {count}", "rebuild the database")
        if float_layout in _LAYOUT_FOR_FLOAT:
            stride = 4 if float_layout == _FLOAT_PACKED else 5  # unpacked: a tag byte per float
            src = value[float_off:float_off + stride * (count - 1) + 4]
            return Record(_LAYOUT_FOR_FLOAT[float_layout], src, c, h, w, label)
        # float_data split into several runs: let protobuf gather it.
        try:
            floats = np.asarray(parse_datum(value).float_data, dtype=np.float32)
        except Exception as exc:  # the fast parser accepts only what protobuf accepts; belt and braces
            raise RecordError(self.db_path, key, index, f"corrupt Datum: protobuf refused it ({exc})",
                              "rebuild the database or delete this record") from None
        return Record(_fast.LAYOUT_CHW_F32, floats.view(np.uint8), c, h, w, label)

    # -- checks -----------------------------------------------------------
    def check(self, rec, key, index, batch_chw):
        """Raise RecordError when ``rec`` cannot join a batch of ``batch_chw`` (C, H, W)."""
        crop = self.transform.crop_size
        c, h, w = batch_chw
        if rec.channels != c or (not crop and (rec.height, rec.width) != (h, w)):
            hint = ("records of different sizes need crop_size (or batch_size 1)" if not crop
                    else "all records must have the same number of channels")
            if rec.layout == _fast.LAYOUT_HWC_U8 and rec.channels != c:
                hint = "set transform_param.force_color or force_gray to decode all images alike"
            raise RecordError(self.db_path, key, index,
                              f"record is {rec.channels}x{rec.height}x{rec.width} but the batch is "
                              f"{c}x{h}x{w}", hint)
        if crop and (rec.height < crop or rec.width < crop):
            raise RecordError(self.db_path, key, index,
                              f"crop_size {crop} is larger than the {rec.height}x{rec.width} image",
                              "lower transform_param.crop_size or resize the images")
        if self.mean is not None and self.mean.shape != (rec.channels, rec.height, rec.width):
            raise RecordError(self.db_path, key, index,
                              f"mean_file is {'x'.join(map(str, self.mean.shape))} but the record is "
                              f"{rec.channels}x{rec.height}x{rec.width}",
                              "compute the mean on this database (`caffedata mean`) or use mean_value")
        if len(self.mean_values) not in (0, 1, rec.channels):
            raise RecordError(self.db_path, key, index,
                              f"{len(self.mean_values)} mean_value entries for a {rec.channels}-channel "
                              f"image", "give one mean_value, or one per channel")

    def batch_chw(self, first, key, index, reference_chw, batch_size, what="record",
                  hint="records of different sizes need crop_size, or batch_size 1"):
        """The (C, H, W) of a batch starting with ``first``, checked against the layer's first record.

        Caffe sizes its batch from the first datum: without a crop, a batch of
        more than one item must keep that size.
        """
        chw = (first.channels, first.height, first.width)
        self.check(first, key, index, chw)
        if chw != tuple(reference_chw) and batch_size > 1 and not self.transform.crop_size:
            raise RecordError(self.db_path, key, index,
                              f"{what} is {'x'.join(map(str, chw))} but the first {what} "
                              f"{'of the database ' if what == 'record' else ''}is "
                              f"{'x'.join(map(str, reference_chw))}", hint)
        return chw

    # -- the batch ----------------------------------------------------------
    def out_chw(self, c, h, w):
        oh, ow = self.transform.output_hw(h, w)
        return c, oh, ow

    def fill(self, values, keys, indices, draws, out, labels, batch_chw):
        """Transform ``values`` (serialized Datums) into ``out[i]`` / ``labels[i]``.

        ``batch_chw`` is the (C, H, W) every record must have (H, W free with a crop).
        ``draws`` is a uint32 (B, 3) array of raw draws for mirror, h_off, w_off.
        """
        tp = self.params(*batch_chw)
        i, n = 0, len(values)
        while i < n:
            # Fast path: raw records of exactly (C, H, W), stopping at the first other one.
            i = _fast.transform_raw_batch(values, i, n, tp, draws, out, labels)
            if i >= n:
                break
            # General path for this one record: encoded, other size, float runs, or an error.
            rec = self.parse(values[i], keys[i], indices[i])
            self.check(rec, keys[i], indices[i], batch_chw)
            self.transform_record(rec, draws[i], out[i])
            labels[i] = rec.label
            i += 1

    def fill_resolved(self, records, addr, size, get_value, keys, indices, draws, out, labels,
                      batch_chw):
        """``fill`` for records already resolved to addresses (``_fast.resolve_values``).

        ``records[i]`` indexes ``addr``/``size``; the raw records of the batch are
        transformed in one nogil call.  ``get_value(i)`` returns item ``i``'s
        serialized Datum for the general path (encoded, other size, errors).
        """
        tp = self.params(*batch_chw)
        i, n = 0, len(records)
        while i < n:
            i = _fast.transform_raw_records(records, addr, size, i, n, tp, draws, out, labels)
            if i >= n:
                break
            # Encoded records: decode + transform with the checks made in _fast.
            j = _fast.transform_encoded_records(records, addr, size, i, n, cv2.imdecode, self.flag,
                                                self.max_image_pixels, tp, draws, out, labels)
            if j > i:
                i = j
                continue
            rec = self.parse(get_value(i), keys[i], indices[i])
            self.check(rec, keys[i], indices[i], batch_chw)
            self.transform_record(rec, draws[i], out[i])
            labels[i] = rec.label
            i += 1

    def transform_record(self, rec, draw, out_item):
        t = self.transform
        crop = t.crop_size
        mirror = bool(t.mirror and draw[0] % 2)
        if crop:
            if t.random_crop:
                h_off = int(draw[1] % (rec.height - crop + 1))
                w_off = int(draw[2] % (rec.width - crop + 1))
            else:
                h_off, w_off = (rec.height - crop) // 2, (rec.width - crop) // 2
        else:
            h_off = w_off = 0
        src = rec.src if isinstance(rec.src, np.ndarray) else np.frombuffer(rec.src, dtype=np.uint8)
        _fast.transform_into(src, rec.layout, self.params(rec.channels, rec.height, rec.width), h_off, w_off,
                             mirror, out_item)


def draw_count(transform):
    """How many raw draws Caffe's transformer makes per record (mirror, then h and w)."""
    return int(bool(transform.mirror)) + (2 if transform.random_crop else 0)


def expand_draws(raw, transform):
    """Raw engine outputs (n, draw_count) to (n, 3) columns (mirror, h, w), zeros where unused."""
    n = raw.shape[0]
    draws = np.zeros((n, 3), dtype=np.uint32)
    col = 0
    if transform.mirror:
        draws[:, 0] = raw[:, col]
        col += 1
    if transform.random_crop:
        draws[:, 1] = raw[:, col]
        draws[:, 2] = raw[:, col + 1]
    return draws


__all__ = ["BatchAssembler", "MAX_IMAGE_PIXELS", "Record", "decode_image",
           "decode_flag", "draw_count", "expand_draws", "image_size"]
