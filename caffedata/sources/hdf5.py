"""Caffe's `HDF5Data` source: a text file listing .h5 files; top ``t`` reads dataset ``/t``.

As ``HDF5DataLayer``: the list is split on whitespace (one file per token),
every dataset of a file has the same number of rows, a top's shape is
``(batch_size,) + dataset.shape[1:]`` from the first file, rows are read as
float, batches run across file boundaries, and with ``shuffle`` the file
order is permuted and the rows within each file are permuted, files never
interleaved.  Unlike Caffe, files are not loaded whole (rows are read per
batch, a contiguous run as one slice), later files must match the first
file's trailing shapes (Caffe copies mismatched rows silently), and the
permutations come from the iterator's seed (Caffe uses an unseeded libc
``rand()``).
"""
import os

import numpy as np

from ..errors import RecordError, SpecError


def read_file_list(path):
    """The .h5 files a source list names, relative ones resolved against the list's folder if not cwd."""
    if not os.path.isfile(path):
        raise SpecError(f"{path}: no such file -- hdf5_data_param.source must name a text file listing "
                        f".h5 files (relative paths are resolved against {os.getcwd()})")
    with open(path) as f:
        names = f.read().split()
    if not names:
        raise SpecError(f"{path}: lists no HDF5 file -- write one .h5 path per line")
    files = []
    for name in names:
        if not os.path.isabs(name) and not os.path.exists(name):
            beside = os.path.join(os.path.dirname(os.path.abspath(path)), name)
            name = beside if os.path.exists(beside) else name
        files.append(name)
    return files


class HDF5Source:
    """Rows of the datasets named by ``spec.tops`` across the listed files."""

    def __init__(self, spec):
        import h5py

        self._h5py = h5py
        self.spec = spec
        self.path = spec.source
        self.files = read_file_list(self.path)
        self.row_shapes = None
        counts = []
        for file in self.files:
            with self._open(file) as h5:
                counts.append(self._check_file(file, h5))
        self.counts = np.array(counts, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])

    def _open(self, file):
        try:
            return self._h5py.File(file, "r")
        except (OSError, ValueError) as exc:
            raise SpecError(f"{self.path}: cannot open HDF5 file {file} ({exc}) -- check the list") from None

    def _check_file(self, file, h5):
        rows, shapes = None, []
        for top in self.spec.tops:
            if top not in h5:
                raise SpecError(f"{file}: no dataset '{top}' (HDF5Data reads one dataset per top, named "
                                f"as the top; the file has {sorted(h5.keys())}) -- rename the top or "
                                f"the dataset")
            ds = h5[top]
            if not hasattr(ds, "shape") or ds.ndim < 1 or ds.dtype.kind not in "fiub":
                raise SpecError(f"{file}: dataset '{top}' must be a numeric array with >= 1 axis (Caffe "
                                f"reads float or integer classes), got {getattr(ds, 'dtype', type(ds))}")
            if rows is None:
                rows = ds.shape[0]
            elif ds.shape[0] != rows:
                raise SpecError(f"{file}: dataset '{top}' has {ds.shape[0]} rows but "
                                f"'{self.spec.tops[0]}' has {rows} -- every dataset of a file needs "
                                f"the same number of rows")
            shapes.append(tuple(ds.shape[1:]))
        if self.row_shapes is None:
            self.row_shapes = tuple(shapes)
        elif tuple(shapes) != self.row_shapes:
            raise SpecError(f"{file}: row shapes {shapes} differ from {self.row_shapes} in "
                            f"{self.files[0]} -- every file must hold rows of the same shape")
        if rows == 0:
            raise SpecError(f"{file}: holds no rows -- remove it from {self.path}")
        return rows

    def __len__(self):
        return int(self.starts[-1])

    def permutation(self, rng):
        """Caffe's shuffle order: files permuted, rows permuted within each file."""
        order = []
        for f in rng.permutation(len(self.files)):
            order.append(self.starts[f] + rng.permutation(self.counts[f]))
        return np.concatenate(order)

    # -- worker side ---------------------------------------------------------
    def open_state(self):
        return {}  # file index -> (open h5py.File, its datasets by top), per worker thread

    def close_state(self, handles):
        for h5, _ in handles.values():
            h5.close()

    def read_into(self, records, outs, handles):
        """Rows ``records`` (global row numbers) into ``outs[t][i]``.

        A run of consecutive rows that lands on consecutive items is read
        straight into the batch buffer (``read_direct``: no temporary);
        anything else (shuffled rows) is read as one sorted selection per file.
        """
        records = np.asarray(records, dtype=np.int64)
        file_of = np.searchsorted(self.starts, records, side="right") - 1
        for f in np.unique(file_of):
            items = np.nonzero(file_of == f)[0]
            rows = records[items] - self.starts[f]
            datasets = handles.get(f)
            if datasets is None:
                h5 = self._open(self.files[f])
                datasets = handles[f] = (h5, [h5[top] for top in self.spec.tops])
            try:
                self._read_rows(datasets[1], rows, items, outs)
            except (OSError, KeyError, ValueError, TypeError) as exc:
                raise RecordError(self.files[f], f"rows {int(rows.min())}..{int(rows.max())}",
                                  int(records[items[0]]), f"cannot read rows ({exc})",
                                  "the file changed or is damaged; rebuild it") from None

    @staticmethod
    def _read_rows(datasets, rows, items, outs):
        in_order = len(rows) == 1 or (np.all(np.diff(rows) == 1) and np.all(np.diff(items) == 1))
        if in_order:
            source = np.s_[int(rows[0]):int(rows[-1]) + 1]
            dest = np.s_[int(items[0]):int(items[-1]) + 1]
            for ds, out in zip(datasets, outs):
                ds.read_direct(out, source, dest)
            return
        # h5py reads increasing, unique rows: read those, then place them.
        unique, inverse = np.unique(rows, return_inverse=True)
        for ds, out in zip(datasets, outs):
            out[items] = ds[unique][inverse]
