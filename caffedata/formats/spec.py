"""What a Caffe data layer asks for, as frozen dataclasses with Caffe 1.0's defaults.

``prototxt.py`` builds these from text; the iterator, the kernels and the
command line only ever see these objects.  One spec class per Caffe data
layer type: ``DataLayerSpec`` (Data), ``ImageDataSpec``, ``HDF5DataSpec``,
``MemoryDataSpec``, ``DummyDataSpec``.
"""
import enum
from dataclasses import dataclass, field
from typing import Optional, Tuple

from ..errors import SpecError


class Phase(enum.IntEnum):
    TRAIN = 0
    TEST = 1


class Backend(enum.IntEnum):
    LEVELDB = 0  # Caffe's default for data_param.backend
    LMDB = 1


@dataclass(frozen=True)
class TransformSpec:
    """Caffe's TransformationParameter plus the phase that drives it."""

    scale: float = 1.0
    mirror: bool = False
    crop_size: int = 0
    mean_file: Optional[str] = None
    mean_value: Tuple[float, ...] = ()
    force_color: bool = False
    force_gray: bool = False
    phase: Phase = Phase.TRAIN

    def validate(self):
        if self.mean_file and self.mean_value:
            raise SpecError("transform_param: mean_file and mean_value cannot both be set "
                            "(Caffe refuses this too) -- keep one of them")
        if self.force_color and self.force_gray:
            raise SpecError("transform_param: force_color and force_gray cannot both be set -- keep one")
        if self.crop_size < 0:
            raise SpecError(f"transform_param: crop_size must be >= 0, got {self.crop_size}")
        return self

    @property
    def random_crop(self):
        """Caffe draws crop offsets only in TRAIN; TEST takes the centre."""
        return self.crop_size > 0 and self.phase == Phase.TRAIN

    def output_hw(self, height, width):
        return (self.crop_size, self.crop_size) if self.crop_size else (height, width)


class _TransformedLayer:
    """What the layers with a ``transform_param`` and (data[, label]) tops share."""

    @property
    def phase(self):
        return self.transform.phase

    @property
    def has_label(self):
        return len(self.tops) != 1


@dataclass(frozen=True)
class DataLayerSpec(_TransformedLayer):
    """A `Data` layer: where the records are, how many per batch, how to transform them."""

    source: str
    batch_size: int
    backend: Backend = Backend.LEVELDB
    prefetch: int = 4
    transform: TransformSpec = field(default_factory=TransformSpec)
    name: str = ""
    tops: Tuple[str, ...] = ("data", "label")


@dataclass(frozen=True)
class ImageDataSpec(_TransformedLayer):
    """An `ImageData` layer: a list file of ``path label`` lines, images read with OpenCV."""

    source: str
    batch_size: int = 1
    root_folder: str = ""
    new_height: int = 0
    new_width: int = 0
    is_color: bool = True
    shuffle: bool = False
    rand_skip: int = 0
    transform: TransformSpec = field(default_factory=TransformSpec)
    name: str = ""
    tops: Tuple[str, ...] = ("data", "label")


@dataclass(frozen=True)
class HDF5DataSpec:
    """An `HDF5Data` layer: a text file listing .h5 files; top ``t`` reads dataset ``/t``."""

    source: str
    batch_size: int
    shuffle: bool = False
    name: str = ""
    tops: Tuple[str, ...] = ("data", "label")
    phase: Phase = Phase.TRAIN


@dataclass(frozen=True)
class MemoryDataSpec(_TransformedLayer):
    """A `MemoryData` layer: (N, C, H, W) arrays handed to the iterator, transformed as Data."""

    batch_size: int
    channels: int
    height: int
    width: int
    transform: TransformSpec = field(default_factory=TransformSpec)
    name: str = ""
    tops: Tuple[str, ...] = ("data", "label")


@dataclass(frozen=True)
class DummyDataSpec:
    """A `DummyData` layer: one shape and one filler (a dict of FillerParameter fields) per top."""

    shapes: Tuple[Tuple[int, ...], ...]
    fillers: Tuple[dict, ...]
    name: str = ""
    tops: Tuple[str, ...] = ("data",)
    phase: Phase = Phase.TRAIN

    @property
    def batch_size(self):
        return self.shapes[0][0]
