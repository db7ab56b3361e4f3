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
        return {}  # file index -> _OpenFile, per worker thread

    def close_state(self, handles):
        for opened in handles.values():
            opened.h5.close()

    def read_into(self, records, outs, handles):
        """Rows ``records`` (global row numbers) into ``outs[t][i]``.

        A run of consecutive rows that lands on consecutive items is read
        straight into the batch buffer by one ``H5Dread`` per top (no
        temporary); anything else (shuffled rows) is read as one sorted
        selection per file.
        """
        records = np.asarray(records, dtype=np.int64)
        first, last = int(records[0]), int(records[-1])
        f = int(np.searchsorted(self.starts, first, side="right")) - 1
        if last - first == len(records) - 1 and last < self.starts[f + 1] and (
                len(records) == 1 or np.all(np.diff(records) == 1)):
            # the common case (no shuffle): one run in one file
            self._read(f, handles, first - int(self.starts[f]), None, outs, records)
            return
        file_of = np.searchsorted(self.starts, records, side="right") - 1
        for f in np.unique(file_of):
            items = np.nonzero(file_of == f)[0]
            self._read(int(f), handles, records[items] - self.starts[f], items, outs, records)

    def _read(self, f, handles, rows, items, outs, records):
        """Rows of file ``f`` into the batch: with ``items`` None, ``len(records)`` rows from
        row ``rows`` (an int) into items 0.. ; otherwise row ``rows[k]`` into item ``items[k]``."""
        opened = handles.get(f)
        if opened is None:
            opened = handles[f] = _OpenFile(self._open(self.files[f]), self.spec.tops)
        try:
            if items is None:
                opened.read_run(rows, 0, len(records), outs)
            elif np.all(np.diff(rows) == 1) and np.all(np.diff(items) == 1):
                opened.read_run(int(rows[0]), int(items[0]), len(items), outs)
            else:
                opened.read_rows(rows, items, outs)
        except (OSError, KeyError, ValueError, TypeError) as exc:
            first_row = rows if items is None else int(rows.min())
            last_row = rows + len(records) - 1 if items is None else int(rows.max())
            raise RecordError(self.files[f], f"rows {first_row}..{last_row}",
                              int(records[0 if items is None else items[0]]),
                              f"cannot read rows ({exc})",
                              "the file changed or is damaged; rebuild it") from None


class _OpenFile:
    """One open .h5 file of a worker: its datasets by top, with their file dataspaces.

    Reads go through h5py's low-level API (``DatasetID.read`` with hyperslab
    selections), which converts to the buffer's dtype as ``read_direct`` does
    but without building selections in Python on every batch.
    """

    def __init__(self, h5, tops):
        from h5py import h5s

        self._h5s = h5s
        self.h5 = h5
        self.datasets = [h5[top] for top in tops]
        self.ids = [ds.id for ds in self.datasets]
        self.row_shapes = [tuple(ds.shape[1:]) for ds in self.datasets]
        self.file_spaces = [i.get_space() for i in self.ids]
        self._memory_spaces = {}  # buffer shape -> its dataspace

    def read_run(self, row, item, count, outs):
        """Rows row..row+count-1 into items item..item+count-1 of every top's buffer."""
        for dataset, file_space, tail, out in zip(self.ids, self.file_spaces, self.row_shapes, outs):
            zeros = (0,) * len(tail)
            file_space.select_hyperslab((row,) + zeros, (count,) + tail)
            memory_space = self._memory_spaces.get(out.shape)
            if memory_space is None:
                memory_space = self._memory_spaces[out.shape] = self._h5s.create_simple(out.shape)
            memory_space.select_hyperslab((item,) + zeros, (count,) + tail)
            dataset.read(memory_space, file_space, out)

    def read_rows(self, rows, items, outs):
        """Any rows into any items: h5py reads increasing unique rows, which are then placed."""
        unique, inverse = np.unique(rows, return_inverse=True)
        for ds, out in zip(self.datasets, outs):
            out[items] = ds[unique][inverse]
