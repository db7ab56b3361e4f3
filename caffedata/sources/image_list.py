"""Caffe's `ImageData` source: a list file of ``path label`` lines, each image read with OpenCV.

As ``ImageDataLayer``: each line is split at its last space (paths may hold
spaces; the label is C's ``atoi`` of the rest), the image is
``root_folder + path`` (plain concatenation), decoded by OpenCV in colour
(3-channel BGR) or grayscale as ``cv::imread`` does, and resized with
``cv::resize`` (bilinear) when ``new_height``/``new_width`` are set.  Decoding
goes through the same guarded decoder as encoded Datums (a header claiming
more than ``max_image_pixels`` is refused before decoding).

A batch's images are read, decoded and transformed in one Cython loop
(``transform_records``): per image it holds the GIL only to call
``cv2.imdecode`` (which releases it while decoding), so worker threads decode
in parallel.  Per-image Python (a file read, header parse and checks, about
100 us an image) had cost ImageData a quarter of its rate at two threads.
Anything that loop cannot do goes to ``record``, whose errors name the line.

``rand_skip``: Caffe starts reading ``rand() % rand_skip`` lines in, so that
several solvers do not read in step.  Here the list is rotated by a draw of
the iterator's seeded stream modulo ``rand_skip`` (the skipped lines come
last), so every epoch starts at the same, seeded, line.
"""
import errno
import os
import stat

import cv2
import numpy as np

from .. import _fast
from ..errors import RecordError, SpecError
from ..pipeline.kernels import MAX_IMAGE_PIXELS, Record, decode_image
from ..tools.convert import parse_list_file


def read_file(path):
    """The bytes of regular file ``path``: one ``read`` of its size (half the cost of ``np.fromfile``).

    Opened non-blocking, and anything but a regular file refused: a FIFO or a
    device named in a list must give an error, not a hang or an endless read.
    A NUL byte in the path is an OSError too (``os.open`` raises ValueError).
    """
    if "\0" in path:  # C would open the path up to the NUL: another file
        raise OSError(errno.EINVAL, "the path holds a NUL byte", path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise OSError(errno.EINVAL, kind, path)
        size = info.st_size
        data = os.read(fd, size + 1)  # + 1: a file grown since fstat shows up as more to read
        if len(data) <= size:
            return data
        chunks = [data]
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 20))
        return b"".join(chunks)
    finally:
        os.close(fd)


class ImageListSource:
    """The records of one ImageData layer: ``len()`` images, ``record(i)`` decodes image ``i``."""

    def __init__(self, spec, seed=0, max_image_pixels=MAX_IMAGE_PIXELS):
        self.spec = spec
        self.max_image_pixels = max_image_pixels
        self.path = spec.source
        if not os.path.isfile(self.path):
            raise SpecError(f"{self.path}: no such list file -- image_data_param.source must name a text "
                            f"file of `path label` lines (relative paths are resolved against "
                            f"{os.getcwd()})")
        entries = parse_list_file(self.path)
        if not entries:
            raise SpecError(f"{self.path}: the list file is empty (Caffe: \"File is empty\") -- add "
                            f"`path label` lines")
        if spec.rand_skip:
            skip = int(np.random.default_rng(seed).integers(0, 2**32)) % spec.rand_skip % len(entries)
            entries = entries[skip:] + entries[:skip]
        root = os.fsencode(spec.root_folder)
        self.paths = [root + path for path, _ in entries]  # bytes, as the Cython loop opens them
        self.files = [os.fsdecode(path) for path in self.paths]
        self.labels = np.array([label for _, label in entries], dtype=np.int64)
        self.flag = cv2.IMREAD_COLOR if spec.is_color else cv2.IMREAD_GRAYSCALE
        self._resize = None
        if spec.new_height and spec.new_width:
            size = (spec.new_width, spec.new_height)
            self._resize = lambda image: cv2.resize(image, size)  # bilinear, as Caffe's cv::resize

    def __len__(self):
        return len(self.files)

    def key(self, index):
        return f"line {index + 1}: {self.files[index]}"

    def record(self, index):
        """Image ``index`` as a ``Record`` (HWC uint8 BGR or gray) with its label."""
        file = self.files[index]
        try:
            payload = np.frombuffer(read_file(file), dtype=np.uint8)
        except OSError as exc:
            raise RecordError(self.path, self.key(index), index,
                              f"could not load the image ({exc.strerror or 'no such file'})",
                              "fix the path (root_folder + path), or remove the line") from None
        image = decode_image(payload, self.flag, self.max_image_pixels)
        if isinstance(image, str):
            why = "not 8-bit (Caffe requires CV_8U)" if image == "depth" else image
            raise RecordError(self.path, self.key(index), index, f"could not load the image: {why}",
                              "re-encode the image, or remove the line")
        if self._resize is not None:
            image = self._resize(image)
            if image.ndim == 2:
                image = image[:, :, None]
        h, w, c = image.shape
        return Record(_fast.LAYOUT_HWC_U8, np.ascontiguousarray(image).reshape(-1), c, h, w,
                      self.labels[index])

    def transform_records(self, records, start, stop, tp, draws, out, labels):
        """Items ``start..stop`` of a batch read, decoded and transformed in one Cython loop.

        Returns the first item it could not do (an unreadable file, any failed
        check), for the general path (``record``) to raise or skip with its
        message; ``stop`` when all were done.
        """
        return _fast.transform_image_files(self.paths, self.labels, records, start, stop, cv2.imdecode,
                                           self.flag, self.max_image_pixels, self._resize, tp, draws,
                                           out, labels)


class MemorySource:
    """The records of a `MemoryData` layer: rows of an (N, C, H, W) array and N labels."""

    def __init__(self, spec, data, labels=None):
        self.spec = spec
        self.path = f"MemoryData layer '{spec.name}'"
        data = np.asarray(data)
        # memory_data_param gives the shape after the transform (the crop), as in Caffe.
        want = (spec.channels, spec.height, spec.width)
        got = (data.shape[1],) + spec.transform.output_hw(*data.shape[2:]) if data.ndim == 4 else None
        if got != want or len(data) == 0:
            raise SpecError(f"{self.path}: data must be an (N, C, H, W) array, N >= 1, whose transformed "
                            f"(C, H, W) is memory_data_param's {want}; got shape {data.shape}")
        if data.dtype == np.uint8:
            self.layout, self.data = _fast.LAYOUT_CHW_U8, np.ascontiguousarray(data)
        else:
            self.layout, self.data = _fast.LAYOUT_CHW_F32, np.ascontiguousarray(data, dtype=np.float32)
        if labels is None:
            if spec.has_label:
                raise SpecError(f"{self.path} has a label top '{spec.tops[1]}' but no labels were given "
                                f"-- pass arrays={{'{spec.tops[0]}': X, '{spec.tops[1]}': y}}")
            labels = np.zeros(len(data))
        self.labels = np.asarray(labels, dtype=np.float64).reshape(-1)
        if len(self.labels) != len(data):
            raise SpecError(f"{self.path}: {len(data)} data rows but {len(self.labels)} labels -- give one "
                            f"label per row")

    def __len__(self):
        return len(self.data)

    def key(self, index):
        return f"row {index}"

    def transform_records(self, records, start, stop, tp, draws, out, labels):
        """No fast loop: rows need no decoding, so the general path (``record``) takes them all."""
        return start

    def record(self, index):
        c, h, w = self.data.shape[1:]
        return Record(self.layout, self.data[index].reshape(-1).view(np.uint8), c, h, w, self.labels[index])
