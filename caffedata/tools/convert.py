"""Image files + a list file -> a Caffe LMDB/LevelDB of Datums, as ``convert_imageset`` writes it.

``convert_imageset(root, listfile, db_path, ...)`` does what Caffe 1.0's
``tools/convert_imageset`` does, record for record:

* **List file.**  Read line by line (``std::getline``: split at ``\\n``, a
  final line without newline counts, an empty line is an entry).  Each line is
  split at its **last space**: the path is the text before it, the label is
  ``atoi`` of the text after it (so a trailing ``\\r`` is harmless and paths may
  hold spaces).
* **Keys.**  ``%08d_<path as written in the list>``.  The number is the line's
  index in the (possibly shuffled) list and is consumed by images that fail to
  load, so failed images leave gaps.
* **Raw Datums** (default): ``cv2.imread`` with ``IMREAD_COLOR`` (3-channel BGR)
  or, with ``gray``, ``IMREAD_GRAYSCALE``; then ``cv2.resize`` to
  ``(resize_width, resize_height)`` with ``INTER_LINEAR`` **only when both are
  > 0**; stored as channels/height/width, CHW uint8 ``data``, label and
  ``encoded: false``.
* **Encoded Datums** (``encoded`` or ``encode_type``): the image is still read
  with ``imread`` (an unreadable file fails).  The original file bytes are kept
  when nothing was resized (both sizes 0) and the file's extension matches the
  encoding.  Caffe's encoding guessed from the file name *includes the dot*
  (``.jpg``), so a guessed type always matches while an explicit
  ``encode_type="jpg"`` never does and always re-encodes with
  ``cv2.imencode`` (OpenCV defaults: JPEG quality 95).  An encoded Datum holds
  only ``data``, ``label`` and ``encoded: true``.
* ``check_size``: every record's ``data`` length must equal the first's C*H*W.

What differs from Caffe, on purpose:

* **Labels are checked.**  A label that is not a plain integer (``zero``,
  ``3a``, a missing one, one outside int32) is still stored as Caffe's
  ``atoi`` gives it, but each such line is reported (list file and line
  number) and counted in ``ConvertResult.label_warnings``; ``strict=True``
  refuses the list instead.
* **Tabs.**  A line with no space, or whose text after the last space is not an
  integer while the text after its last tab is, is split at that last tab: tab-separated lists work, and every line Caffe parses
  to a valid label is parsed the same way.
* ``encode_type`` must be a type OpenCV can encode; it is checked before any
  work.

* ``shuffle`` takes a ``seed``.  The permutation is Caffe's own algorithm
  (``caffe::shuffle``: Fisher-Yates with boost's ``uniform_int`` over
  ``mt19937``), i.e. the order Caffe would produce had its RNG been seeded with
  ``seed``.  Caffe seeds from ``/dev/urandom``, so its shuffles were never
  reproducible; without a seed caffedata draws one and reports it
  (``ConvertResult.seed``).
* The DB is built in a temporary folder beside the target and renamed into
  place at the end: an interrupted (^C, SIGTERM) or failed run leaves no DB at
  the target, and an existing DB is never replaced unless ``overwrite=True``,
  then in one atomic swap (see ``atomic_db``).  Temporary folders left by a
  killed run are removed by the next run to the same target.
* Images are read, resized and encoded on ``threads`` threads (OpenCV releases
  the GIL); records are written in list order.
* A list with no readable image is an error (Caffe would write an empty DB).
* An existing folder ``root`` without a trailing ``/`` gets one (Caffe
  concatenates ``root + path`` as is, so every image would fail).

The record bytes are what Caffe writes, given the same OpenCV decoder (see the
caveats on decoder versions in the data-format reference).  The LMDB/LevelDB
files themselves are not byte-identical to Caffe's (page layout depends on
transaction sizes), only their keys and values are.
"""
import collections
import os
import re
import secrets
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from ..formats.datum import array_to_datum_bytes, encoded_datum_bytes
from ..errors import CaffeDataError, DatabaseError, SpecError

__all__ = ["convert_imageset", "ConvertResult", "Failure", "LabelWarning", "parse_list_file",
           "parse_list", "caffe_shuffle",
           "caffe_atoi", "read_image_to_datum", "ImageReadError", "DBWriter", "atomic_db",
           "remove_stale_tmp", "Terminated"]

MAX_PRINTED_LABEL_WARNINGS = 20  # the rest are counted in the summary
COMMIT_EVERY = 1000  # convert_imageset commits every 1000 successful images

# Caffe's LevelDB options (db_leveldb.cpp); compression is LevelDB's default, Snappy.
LEVELDB_OPTIONS = dict(block_size=65536, write_buffer_size=268435456, max_open_files=100,
                       compression="snappy")
LMDB_INITIAL_MAP_SIZE = 1 << 30  # address space only (the file grows as used); doubled on MDB_MAP_FULL as Caffe 1.0 does


class ImageReadError(Exception):
    """One image could not be turned into a Datum (the line id is still consumed)."""


@dataclass
class Failure:
    line_id: int
    name: str
    path: str
    reason: str

    def __str__(self):
        return f"line {self.line_id + 1}: {self.path}: {self.reason}"


@dataclass
class LabelWarning:
    """A list line whose label is not a plain integer (it is stored as Caffe's atoi gives it)."""
    listfile: str
    line: int  # 1-based line number in the list file
    text: str  # the label text as written (or the whole line when there is no separator)
    label: int  # what was stored

    def __str__(self):
        what = "has no label" if not self.text.strip() else f"label {self.text!r} is not an integer"
        return f"{self.listfile}:{self.line}: {what} -- stored as {self.label} (Caffe's atoi)"


@dataclass
class ConvertResult:
    db_path: str
    backend: str
    total: int
    count: int
    failures: List[Failure] = field(default_factory=list)
    seconds: float = 0.0
    seed: Optional[int] = None
    encoded: bool = False
    label_warnings: List[LabelWarning] = field(default_factory=list)

    @property
    def images_per_second(self):
        return self.total / self.seconds if self.seconds > 0 else float("nan")

    def summary(self):
        text = (f"{self.db_path}: wrote {self.count} of {self.total} images ({self.backend}"
                f"{', encoded' if self.encoded else ''}) in {self.seconds:.2f} s, "
                f"{self.images_per_second:.0f} images/s")
        if self.seed is not None:
            text += f"; shuffled with --seed {self.seed}"
        if self.label_warnings:
            text += (f"; {len(self.label_warnings)} line(s) with a non-integer or missing label "
                     f"(stored as Caffe's atoi gives them; --strict refuses such lists)")
        return text


# --------------------------------------------------------------------------- list file

def caffe_atoi(text):
    """C's ``atoi`` as glibc does it: ``(int) strtol(text, NULL, 10)`` on bytes."""
    i, n = 0, len(text)
    while i < n and text[i] in b" \t\n\v\f\r":
        i += 1
    sign = 1
    if i < n and text[i] in b"+-":
        sign = -1 if text[i] == ord("-") else 1
        i += 1
    start = i
    while i < n and 48 <= text[i] <= 57:
        i += 1
    value = sign * int(text[start:i]) if i > start else 0
    value = max(-(1 << 63), min((1 << 63) - 1, value))  # strtol saturates at LONG_MIN/MAX
    value &= 0xFFFFFFFF  # then the cast to int keeps the low 32 bits
    return value - (1 << 32) if value >= (1 << 31) else value


_INTEGER_LABEL = re.compile(rb"^[ \t\n\v\f\r]*[+-]?[0-9]+[ \t\n\v\f\r]*$")


def _plain_integer(text):
    """True when ``text`` is an int32 written as digits (whitespace around it is fine)."""
    return bool(_INTEGER_LABEL.match(text)) and -(1 << 31) <= int(text) < (1 << 31)


def _split_line(line):
    """(path, label text, separator found) as convert_imageset splits, tabs accepted as a fallback."""
    pos = line.rfind(b" ")
    if pos >= 0 and _plain_integer(line[pos + 1:]):
        return line[:pos], line[pos + 1:], True
    tab = line.rfind(b"\t")
    if tab > pos and _plain_integer(line[tab + 1:]):  # a tab-separated line Caffe would misread
        return line[:tab], line[tab + 1:], True
    if pos < 0 and tab >= 0:  # no space at all: a tab-separated line with a bad label
        return line[:tab], line[tab + 1:], True
    if pos < 0:  # find_last_of gives npos: the whole line is both path and label text
        return line, line, False
    return line[:pos], line[pos + 1:], True


def parse_list(listfile, strict=False):
    """``([(path_bytes, label), ...], [LabelWarning, ...])`` for a convert_imageset list.

    Lines split as Caffe does (see the module docstring); a label that is not a
    plain integer gives a LabelWarning, or a SpecError naming the lines when
    ``strict``.
    """
    try:
        with open(listfile, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SpecError(f"{listfile}: cannot read the list file ({exc.strerror}) -- give a text "
                        f"file with one `path label` per line") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # getline yields no entry after a final newline
    entries, warnings = [], []
    name = os.fspath(listfile)
    for number, line in enumerate(lines, 1):
        path, label_text, has_separator = _split_line(line)
        label = caffe_atoi(label_text)
        entries.append((path, label))
        if not has_separator or not _plain_integer(label_text):
            text = "" if not has_separator else label_text.decode("utf-8", "backslashreplace")
            warnings.append(LabelWarning(name, number, text, label))
    if strict and warnings:
        shown = "; ".join(str(w).split(" -- ")[0] for w in warnings[:5])
        more = f" (and {len(warnings) - 5} more)" if len(warnings) > 5 else ""
        raise SpecError(f"{shown}{more} -- every line must be `path label` with an integer label "
                        f"after the last space (or tab); fix the list, or drop --strict to store "
                        f"such labels as Caffe's atoi reads them")
    return entries, warnings


def parse_list_file(listfile):
    """``[(path_bytes, label), ...]`` as convert_imageset reads the list (tabs accepted, see above)."""
    return parse_list(listfile)[0]


# --------------------------------------------------------------------------- shuffle

class _MT19937Stream:
    """Raw 32-bit outputs of ``mt19937(seed)`` (NumPy's legacy MT seeds an int like std/boost)."""

    def __init__(self, seed):
        self._rs = np.random.RandomState(int(seed) & 0xFFFFFFFF)
        self._buf = []
        self._pos = 0

    def __call__(self):
        if self._pos >= len(self._buf):
            # Full 32-bit range: NumPy returns one raw output per value.
            self._buf = self._rs.randint(0, 1 << 32, size=4096, dtype=np.uint32).tolist()
            self._pos = 0
        v = self._buf[self._pos]
        self._pos += 1
        return v


def caffe_shuffle(items, seed):
    """``caffe::shuffle`` driven by ``mt19937(seed)``; returns a new list.

    For i = n-1 .. 1: swap(i, j) with j drawn by boost's ``uniform_int(0, i)``:
    ``bucket = 0xFFFFFFFF // (i+1)`` (+1 when ``0xFFFFFFFF % (i+1) == i``),
    draw ``r = mt() // bucket`` until ``r <= i``.
    """
    items = list(items)
    mt = _MT19937Stream(seed)
    for i in range(len(items) - 1, 0, -1):
        bucket = 0xFFFFFFFF // (i + 1)
        if 0xFFFFFFFF % (i + 1) == i:
            bucket += 1
        while True:
            r = mt() // bucket
            if r <= i:
                break
        items[i], items[r] = items[r], items[i]
    return items


# --------------------------------------------------------------------------- one image

def _match_ext(path, encoding):
    """io.cpp ``matchExt``: the path's lower-cased text from its last '.' equals the encoding."""
    p = path.rfind(b".")
    ext = (path[p:] if p >= 0 else path).lower()
    en = encoding.lower()
    return ext == en or (en == b"jpg" and ext == b"jpeg")


def read_image_to_datum(path, label, resize_height=0, resize_width=0, is_color=True, encoding=b""):
    """io.cpp ``ReadImageToDatum``: serialized Datum bytes for one image file.

    Raises ImageReadError where Caffe's function returns false.
    """
    import cv2

    spath = os.fsdecode(path)
    if not os.path.isfile(spath):
        raise ImageReadError("no such file" if not os.path.exists(spath) else "not a file")
    img = cv2.imread(spath, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ImageReadError("OpenCV cannot decode it (not an image, or truncated)")
    if resize_height > 0 and resize_width > 0:
        img = cv2.resize(img, (resize_width, resize_height), interpolation=cv2.INTER_LINEAR)
    channels = 1 if img.ndim == 2 else img.shape[2]
    if encoding:
        if ((channels == 3) == is_color and not resize_height and not resize_width
                and _match_ext(path, encoding)):
            try:
                with open(spath, "rb") as f:
                    return encoded_datum_bytes(f.read(), label)
            except OSError as exc:
                raise ImageReadError(f"cannot read the file ({exc.strerror})") from None
        ext = "." + os.fsdecode(encoding)
        try:
            ok, buf = cv2.imencode(ext, img)
        except cv2.error:
            ok = False
        if not ok:
            raise ImageReadError(f"OpenCV has no encoder for {ext!r} -- use --encode-type jpg or png")
        return encoded_datum_bytes(buf.tobytes(), label)
    chw = img[np.newaxis] if img.ndim == 2 else img.transpose(2, 0, 1)
    return array_to_datum_bytes(np.ascontiguousarray(chw), label)


def _check_encoder(encode_type):
    """SpecError unless OpenCV can encode ``encode_type`` (tried on a 1x1 image)."""
    import cv2

    try:
        ok, _ = cv2.imencode("." + encode_type, np.zeros((1, 1, 3), np.uint8))
    except cv2.error:
        ok = False
    if not ok:
        raise SpecError(f"--encode-type {encode_type}: OpenCV cannot encode this type -- use jpg or "
                        f"png (Caffe decodes records with OpenCV, so only types it writes work)")


def _datum_data_size(value):
    """Length of ``data`` in serialized Datum bytes (for check_size)."""
    from ..proto import Datum

    d = Datum.FromString(value)
    return len(d.data), d.channels * d.height * d.width


# --------------------------------------------------------------------------- writers

class DBWriter:
    """Append key/value batches to a new LMDB or LevelDB as Caffe's db classes do."""

    def __init__(self, path, backend):
        self.path = path
        self.backend = backend
        if backend == "lmdb":
            import lmdb

            self._lmdb = lmdb
            self.env = lmdb.open(path, map_size=LMDB_INITIAL_MAP_SIZE, subdir=True, sync=False,
                                 metasync=False, max_dbs=0)
            self.max_key = self.env.max_key_size()
        elif backend == "leveldb":
            import plyvel

            self.db = plyvel.DB(path, create_if_missing=True, error_if_exists=True,
                                **LEVELDB_OPTIONS)
            self.max_key = None
        else:
            raise SpecError(f"unknown backend {backend!r} -- use lmdb or leveldb")

    def write(self, pairs):
        if not pairs:
            return
        if self.backend == "leveldb":
            with self.db.write_batch() as wb:
                for k, v in pairs:
                    wb.put(k, v)
            return
        while True:  # db_lmdb.cpp Commit: on MDB_MAP_FULL double the map and retry the batch
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in pairs:
                        txn.put(k, v)
                return
            except self._lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def close(self):
        if self.backend == "lmdb":
            self.env.sync(True)
            self.env.close()
        else:
            self.db.close()


_RENAME_EXCHANGE = 2  # linux/fs.h
_TMP_MARK = ".caffedata-tmp-"


def _exchange(a, b):
    """Swap the directory entries ``a`` and ``b`` in one step (Linux renameat2 RENAME_EXCHANGE).

    Returns False where the kernel, libc or filesystem cannot do it.
    """
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # not Linux, or glibc < 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), b)


def _host_tag():
    """8 hex digits naming this machine, so a stale-folder sweep never judges another host's pids."""
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_tmp(target):
    """Remove ``.NAME.caffedata-tmp-<host>-<pid>-*`` folders beside ``target`` left by dead processes.

    Only folders made on this host whose pid no longer exists are removed (a
    kill -9 or a power loss during convert leaves them).  Returns their names.
    """
    parent, name = os.path.split(os.path.abspath(os.fspath(target)))
    pattern = re.compile(re.escape(f".{name}{_TMP_MARK}{_host_tag()}-") + r"(\d+)-")
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for entry in names:
        m = pattern.match(entry)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(entry)
    return removed


class Terminated(SystemExit):
    """SIGTERM arrived during a conversion (exit status 128 + 15, as the signal would give).

    ``completed`` is True when it arrived while the finished DB was being moved
    into place: the move was let finish, so the new DB is at the target.
    """

    def __init__(self, completed=False):
        super().__init__(143)
        self.completed = completed


class _TermAsException:
    """While active (main thread only), SIGTERM raises Terminated, so cleanup code runs as on ^C."""

    def __enter__(self):
        import signal
        import threading

        self._old = None
        self.defer = False  # while True, a SIGTERM is only noted (see atomic_db._replace)
        self.pending = False
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                self._old = signal.signal(signal.SIGTERM, self._raise)
        return self

    def _raise(self, signum, frame):
        if self.defer:
            self.pending = True
            return
        raise Terminated()

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


def _lock_leveldb(path, timeout=30.0):
    """An fd holding LevelDB's own LOCK on the DB at ``path`` (so no reader is inside it), or None."""
    import fcntl

    lock = os.path.join(path, "LOCK")
    if not os.path.isfile(lock):
        return None
    fd = os.open(lock, os.O_RDWR)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise DatabaseError(f"{path}: the LevelDB is held open by another process for "
                                    f"{timeout:.0f} s -- close its readers, then run --overwrite "
                                    f"again") from None
            time.sleep(0.01)


class atomic_db:
    """Build a DB in a temporary folder beside ``target``; put it in place in one step on success.

    ``with atomic_db(target, overwrite) as tmp: ...`` -- on any exception
    (including KeyboardInterrupt and SIGTERM, which raises ``Terminated`` here)
    the temporary folder is removed and ``target`` is untouched.

    Replacing an existing DB is atomic: the two folders are swapped with
    ``renameat2(RENAME_EXCHANGE)``, so a reader opening ``target`` at any moment
    finds a complete DB, the old or the new one (a target that is a symlink is
    swapped the same way; the folder it pointed to is kept).  A reader that has
    the old LMDB open keeps reading it (its files live on until closed).  An old
    LevelDB is locked first with LevelDB's own LOCK, so the swap waits for
    readers inside it.  Where the filesystem cannot exchange (not Linux, some
    network filesystems) the old DB is renamed away and the new one in: two
    steps, with a moment in between where ``target`` is missing.

    The temporary folder is ``.NAME.caffedata-tmp-<host>-<pid>-<random>``;
    creating an ``atomic_db`` removes such folders whose process is gone.
    """

    def __init__(self, target, overwrite=False):
        self.target = os.path.abspath(os.fspath(target))
        self.overwrite = overwrite
        parent = os.path.dirname(self.target)
        if not os.path.isdir(parent):
            raise DatabaseError(f"{parent}: the folder for the new database does not exist -- "
                                f"create it first")
        self._check_target()
        remove_stale_tmp(self.target)
        name = os.path.basename(self.target)
        self.tmp = os.path.join(parent, f".{name}{_TMP_MARK}{_host_tag()}-{os.getpid()}-"
                                        f"{secrets.token_hex(4)}")
        self._term = _TermAsException()

    def _check_target(self):
        if os.path.lexists(self.target) and not self.overwrite:
            raise DatabaseError(f"{self.target}: already exists -- choose another path or pass "
                                f"--overwrite (overwrite=True) to replace it")

    def __enter__(self):
        self._term.__enter__()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            try:
                self._check_target()
                self._term.defer = True  # never stop half way through the swap
                self._replace()
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
            if self._term.pending:
                raise Terminated(completed=True)
            return False
        finally:
            self._term.__exit__(exc_type, exc, tb)

    def _replace(self):
        if not os.path.lexists(self.target):
            os.rename(self.tmp, self.target)
            return
        fd = None if os.path.islink(self.target) else _lock_leveldb(self.target)
        try:
            if _exchange(self.tmp, self.target):
                old = self.tmp  # the old DB (or symlink) now sits at the temporary name
            else:
                old = self.tmp + "-old"
                os.rename(self.target, old)
                os.rename(self.tmp, self.target)
        finally:
            if fd is not None:
                os.close(fd)
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)


# --------------------------------------------------------------------------- the job

def _is_storage_error(exc):
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("lmdb", "plyvel")


def _default_threads():
    return max(1, min(8, os.cpu_count() or 1))


def convert_imageset(root, listfile, db_path, backend="lmdb", gray=False, resize_height=0,
                     resize_width=0, shuffle=False, seed=None, encoded=False, encode_type="",
                     check_size=False, overwrite=False, threads=None, progress=True,
                     strict=False):
    """Convert the images named in ``listfile`` (paths relative to ``root``) into a new DB.

    Returns a ConvertResult (count written, failures with their reasons, time,
    the shuffle seed used, the list lines whose label is not an integer: each
    is also printed to stderr).  Raises SpecError for bad arguments, an
    encode_type OpenCV cannot write, or an unreadable list (or, with
    ``strict``, a list with a non-integer or missing label), DatabaseError when ``db_path`` exists (without
    ``overwrite``) or cannot be written, and CaffeDataError when check_size
    finds a mismatch or no image could be read.  In every error case nothing
    is left at ``db_path``.
    """
    backend = str(backend).lower()
    if backend not in ("lmdb", "leveldb"):
        raise SpecError(f"unknown backend {backend!r} -- use lmdb or leveldb")
    resize_height, resize_width = int(resize_height), int(resize_width)
    if resize_height < 0 or resize_width < 0:
        raise SpecError("resize height/width must be >= 0 (0 keeps the image size)")
    if (resize_height > 0) != (resize_width > 0):
        print(f"caffedata: warning: only one of resize height/width is set, so no image is resized "
              f"(Caffe resizes only when both are > 0)", file=sys.stderr)
    encode_type = (encode_type or "").strip()
    if encode_type.startswith("."):
        raise SpecError(f"encode_type {encode_type!r}: give the type without a dot, e.g. jpg or png")
    if encode_type:
        _check_encoder(encode_type)
    encoding_flag = encoded or bool(encode_type)
    if check_size and encoding_flag:
        raise SpecError("check_size compares raw pixel sizes and cannot be used with encoded "
                        "output (convert_imageset aborts on this combination) -- drop one of them")
    threads = _default_threads() if threads is None else int(threads)
    if threads < 1:
        raise SpecError(f"threads must be >= 1, got {threads}")

    root_b = os.fsencode(os.fspath(root))
    if root_b and os.path.isdir(root_b) and not root_b.endswith(b"/"):
        root_b += b"/"
    entries, label_warnings = parse_list(listfile, strict)
    for warning in label_warnings[:MAX_PRINTED_LABEL_WARNINGS]:
        print(f"caffedata: warning: {warning}", file=sys.stderr)
    if len(label_warnings) > MAX_PRINTED_LABEL_WARNINGS:
        print(f"caffedata: warning: ... and {len(label_warnings) - MAX_PRINTED_LABEL_WARNINGS} more "
              f"lines with a non-integer or missing label", file=sys.stderr)
    if not entries:
        raise SpecError(f"{listfile}: the list is empty -- write one `path label` per line")
    if encoded and not encode_type:
        for i, (name, _) in enumerate(entries):
            if b"." not in name:
                raise SpecError(f"{listfile}: line {i + 1}: cannot guess the encoding of "
                                f"{os.fsdecode(name)!r} (no extension) -- pass --encode-type jpg|png")
    used_seed = None
    if shuffle:
        used_seed = secrets.randbits(32) if seed is None else int(seed) & 0xFFFFFFFF
        entries = caffe_shuffle(entries, used_seed)

    def encoding_for(name):
        if encode_type:
            return encode_type.encode()
        if encoded:  # guessed from the list entry, dot included
            return name[name.rfind(b"."):].lower()
        return b""

    def work(line_id):
        name, label = entries[line_id]
        try:
            return read_image_to_datum(root_b + name, label, resize_height, resize_width,
                                       not gray, encoding_for(name))
        except ImageReadError as exc:
            return exc

    total = len(entries)
    result = ConvertResult(db_path=os.fspath(db_path), backend=backend, total=total, count=0,
                           seed=used_seed, encoded=encoding_flag, label_warnings=label_warnings)
    start = time.perf_counter()
    building = atomic_db(db_path, overwrite)  # refuses an existing target before any work
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="convert", file=sys.stderr, dynamic_ncols=True,
                   smoothing=0.1)
    try:
        with building as tmp, ThreadPoolExecutor(threads) as pool:
            writer = DBWriter(tmp, backend)
            try:
                data_size = None
                pending = []
                window = collections.deque()
                next_id = 0
                while next_id < total and len(window) < threads * 8:
                    window.append(pool.submit(work, next_id))
                    next_id += 1
                for line_id in range(total):
                    out = window.popleft().result()
                    if next_id < total:
                        window.append(pool.submit(work, next_id))
                        next_id += 1
                    name = entries[line_id][0]
                    if isinstance(out, ImageReadError):
                        result.failures.append(Failure(line_id, os.fsdecode(name),
                                                       os.fsdecode(root_b + name), str(out)))
                    else:
                        if check_size:
                            size, chw = _datum_data_size(out)
                            if data_size is None:
                                data_size = chw
                            elif size != data_size:
                                raise CaffeDataError(
                                    f"{os.fsdecode(root_b + name)} (line {line_id + 1}): "
                                    f"{size} pixel bytes, but the first image has {data_size} "
                                    f"-- resize all images to one size with --resize-height/"
                                    f"--resize-width, or drop --check-size")
                        key = b"%08d_" % line_id + name
                        if writer.max_key is not None and len(key) > writer.max_key:
                            raise DatabaseError(
                                f"{listfile}: line {line_id + 1}: key {os.fsdecode(key)!r} is "
                                f"{len(key)} bytes, over LMDB's limit of {writer.max_key} -- "
                                f"shorten the paths in the list or use --backend leveldb")
                        pending.append((key, out))
                        result.count += 1
                        if len(pending) >= COMMIT_EVERY:
                            writer.write(pending)
                            pending = []
                    if bar is not None:
                        bar.update(1)
                writer.write(pending)
                if result.count == 0:
                    first = result.failures[0]
                    missing = all(f.reason == "no such file" for f in result.failures)
                    hint = ("check ROOT (it is prefixed to every path in the list as is)" if missing
                            else "check that the list names image files OpenCV can read")
                    raise CaffeDataError(
                        f"{listfile}: none of the {total} images could be read (first: {first}) "
                        f"-- {hint}")
            except BaseException:
                for fut in window:
                    fut.cancel()
                raise
            finally:
                writer.close()
    except Exception as exc:
        if isinstance(exc, CaffeDataError) or not _is_storage_error(exc):
            raise
        raise DatabaseError(f"{db_path}: cannot write the database ({exc}) -- check the folder's "
                            f"permissions and free space") from exc
    finally:
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - start
    return result
