"""Look inside Caffe data: a DB, a mean ``.binaryproto`` or a data-layer prototxt.

``inspect(path)`` returns a plain dict (JSON-ready) describing what is there;
``render_grid`` turns records (or a mean) into a labelled PNG contact sheet a
person can look at.

* **DB**: record count (LMDB's own statistics; LevelDB keeps none, so its
  keys are counted), first/last keys, the key pattern (``%08d_<name>`` from
  convert_imageset, ``%08d`` from convert_mnist_data, ``%05d`` from
  convert_cifar_data, ...), how many records are raw / encoded (and which
  formats) / float_data, a histogram of C x H x W in numeric order (with
  height/width ranges and quantiles, which the text shows instead of the list
  when there are many distinct shapes), a label histogram, bytes per record,
  size on disk.  ``sample=N`` looks at N records spread evenly over
  the key range (or random ones) and extrapolates: a fast estimate for huge
  DBs (the text marks every extrapolated count with ``~``).
* **mean**: the blob's shape as Caffe reads it (legacy 4-D fields win over
  ``shape``), which value field holds it, per-channel means, min and max.
* **prototxt**: each Data layer's effective settings with Caffe's defaults
  filled in, and the batch shapes CaffeDataIter will provide (read from the
  first record of the source when it exists).

Grids decode records as Caffe does (raw CHW bytes, ``float_data`` scaled to
0..255 for display, encoded images with ``imdecode(-1)``) and show them in
true colour: pixels are stored BGR (OpenCV order), so they are written with
``cv2.imwrite``, which stores RGB.  Databases made by convert_cifar_data hold
RGB planes: pass ``rgb=True`` for those.
"""
import json
import math
import os
import re
from collections import Counter

import numpy as np

from ..errors import CaffeDataError, RecordError, SpecError
from ..formats.datum import decode_datum, parse_datum

__all__ = ["inspect", "inspect_db", "inspect_mean", "inspect_prototxt", "detect_kind",
           "render_grid", "grid_geometry", "db_grid", "mean_grid", "record_image", "format_report"]

GRID_PAD = 2          # pixels around each tile
GRID_LABEL_H = 14     # height of the label band under each tile
GRID_BG = (40, 40, 40)


# --------------------------------------------------------------------------- helpers

def _key_text(key):
    return bytes(key).decode("utf-8", "backslashreplace")


_KEY_PATTERNS = [
    (re.compile(rb"^\d{8}_.+$", re.S), "%08d_<name> (convert_imageset)"),
    (re.compile(rb"^\d{8}$"), "%08d (convert_mnist_data / index)"),
    (re.compile(rb"^\d{5}$"), "%05d (convert_cifar_data)"),
]


def key_pattern(keys):
    """A name for the shape the keys share."""
    keys = [bytes(k) for k in keys]
    if not keys:
        return "none"
    for regex, name in _KEY_PATTERNS:
        if all(regex.match(k) for k in keys):
            return name
    if all(k.isdigit() for k in keys):
        widths = {len(k) for k in keys}
        return f"%0{widths.pop()}d" if len(widths) == 1 else "decimal (unpadded: order is not numeric)"
    m = re.compile(rb"^(\d+)_")
    if all(m.match(k) for k in keys):
        return "<number>_<name>"
    return "other"


def _dir_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def _image_format(payload):
    head = bytes(payload[:12])
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    return "unknown"


def _parse(value, db_path, key, index):
    try:
        return parse_datum(value)
    except Exception as exc:
        raise RecordError(db_path, key, index, f"not a Datum ({exc})",
                          "the record is corrupt or the DB holds something else") from None


def record_image(value, db_path="<db>", key=b"", index=None):
    """(CHW array, label) of one serialized Datum, decoded as Caffe's tools decode it."""
    return decode_datum(value, db_path, key, index)


def _record_facts(value, db_path, key, index):
    """(kind, format, 'CxHxW', label) of one record, without keeping pixels."""
    d = _parse(value, db_path, key, index)
    if d.encoded:
        try:
            shape = "x".join(map(str, decode_datum(value, db_path, key, index)[0].shape))
        except RecordError:
            shape = "undecodable"
        return "encoded", _image_format(d.data), shape, d.label
    kind = "raw" if len(d.data) else ("float_data" if len(d.float_data) else "empty")
    return kind, None, f"{d.channels}x{d.height}x{d.width}", d.label


def detect_kind(path):
    """'db', 'mean' or 'prototxt' for a path (or raises SpecError)."""
    from ..sources.db import detect_backend

    path = os.fspath(path)
    if not os.path.exists(path):
        raise SpecError(f"{path}: no such file or folder -- give a DB folder, a .binaryproto or a "
                        f"prototxt")
    if detect_backend(path) is not None:
        return "db"
    if os.path.isdir(path):
        raise SpecError(f"{path}: a folder but neither an LMDB (data.mdb) nor a LevelDB (CURRENT) "
                        f"-- point at the database folder itself")
    lower = path.lower()
    if lower.endswith((".binaryproto", ".mean", ".blob")):
        return "mean"
    with open(path, "rb") as f:
        head = f.read(4096)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "mean"
    if re.search(r"\blayers?\s*\{|\btype\s*:|\{", text):
        return "prototxt"
    if _looks_like_list(text):
        raise SpecError(f"{path}: looks like an image list (`path label` per line), not a database, "
                        f"mean file or prototxt -- build a database from it first: `caffedata "
                        f"convert ROOT/ {path} DB`, then inspect DB")
    if lower.endswith((".prototxt", ".pbtxt")):
        return "prototxt"  # let the parser say what is wrong with it
    if not text.replace("\n", "").replace("\t", "").replace("\r", "").isprintable():
        return "mean"  # binary that happens to be valid UTF-8
    raise SpecError(f"{path}: not a database, a mean .binaryproto or a prototxt -- give a DB "
                    f"folder, a mean file or a prototxt")


_LIST_LINE = re.compile(r"^\S.*[ \t][+-]?\d+\s*$")


def _looks_like_list(text):
    """Most non-empty lines read `path label` (the last line of a 4 KiB head may be cut)."""
    lines = [l for l in text.splitlines()[:50] if l.strip()]
    if len(lines) > 1:
        lines = lines[:-1] if not text.endswith("\n") else lines
    return bool(lines) and sum(bool(_LIST_LINE.match(l)) for l in lines) >= 0.8 * len(lines)


# --------------------------------------------------------------------------- DB

def _sample_indices(count, n, random, seed):
    n = min(n, count)
    if random:
        rng = np.random.default_rng(seed)
        return sorted(rng.choice(count, size=n, replace=False).tolist())
    if n == count:
        return list(range(count))
    return sorted({int(i * count / n) for i in range(n)})


def inspect_db(path, backend="auto", sample=None, random=False, seed=0, progress=False):
    """Summary dict of an LMDB/LevelDB of Datums (see the module docstring)."""
    from .compute_mean import open_db_arg

    path = os.fspath(path)
    source = open_db_arg(path, backend)
    kind_name = source.backend
    try:
        if kind_name == "lmdb":
            count, count_from = len(source), "LMDB statistics"
        else:
            count, count_from = None, "key scan"
        keys = None
        if sample is not None or count is None:
            keys = source.keys()
            count = len(keys)
        report = {"kind": "db", "path": path, "backend": kind_name, "count": count,
                  "count_from": count_from, "size_on_disk": _dir_size(path)}
        if count == 0:
            report.update(first_key=None, last_key=None, key_pattern="none", examined=0,
                          estimated=False)
            return report
        if sample is not None:
            idx = _sample_indices(count, int(sample), random, seed)
            pairs = ((keys[i], source.get(keys[i])) for i in idx)
            first, last = keys[0], keys[-1]
        else:
            pairs = source.items()
            first = last = None
        kinds, formats, shapes, labels = Counter(), Counter(), Counter(), Counter()
        sizes, seen_keys = [], []
        bar = None
        if progress:
            import sys

            from tqdm import tqdm

            bar = tqdm(total=count if sample is None else len(idx), unit="rec", desc="inspect",
                       file=sys.stderr, dynamic_ncols=True)
        for i, (key, value) in enumerate(pairs):
            key = bytes(key)
            if first is None and sample is None and i == 0:
                first = key
            if sample is None:
                last = key
            kind, fmt, shape, label = _record_facts(value, path, key, i)
            kinds[kind] += 1
            if fmt:
                formats[fmt] += 1
            shapes[shape] += 1
            labels[label] += 1
            sizes.append(len(value))
            seen_keys.append(key)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        examined = len(sizes)
        scale = count / examined if examined else 1.0
        est = examined != count

        def scaled(counter, order=str):
            items = sorted(counter.items(), key=lambda kv: (-kv[1], order(kv[0])))
            return {str(k): (round(v * scale) if est else v) for k, v in items}

        report.update(
            first_key=_key_text(first), last_key=_key_text(last),
            key_pattern=key_pattern(seen_keys + [first, last]),
            examined=examined, estimated=est,
            records=scaled(kinds), encoded_formats=scaled(formats),
            shapes=scaled(shapes, order=shape_sort_key),
            shape_summary=shape_summary(shapes, scale if est else 1.0),
            labels={str(k): (round(v * scale) if est else v) for k, v in sorted(labels.items())},
            bytes_per_record={"min": int(min(sizes)), "mean": float(np.mean(sizes)),
                              "max": int(max(sizes))},
            value_bytes=int(sum(sizes) * scale) if est else int(sum(sizes)))
        return report
    finally:
        source.close()


_SHAPE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def shape_sort_key(shape):
    """Numeric order for 'CxHxW' texts (3x100x202 < 3x102x160 < 3x1024x612); others last."""
    m = _SHAPE.match(str(shape))
    return (0,) + tuple(int(g) for g in m.groups()) if m else (1, str(shape))


def shape_summary(shapes, scale=1.0):
    """Distinct and one-off shape counts, channel counts, and height/width quantiles.

    ``shapes`` counts the examined records' 'CxHxW' texts; ``scale`` extrapolates
    the channel counts to the whole DB (the quantiles do not need it).
    """
    dims, weights = [], []
    for shape, n in shapes.items():
        m = _SHAPE.match(str(shape))
        if m:
            dims.append(tuple(int(g) for g in m.groups()))
            weights.append(n)
    out = {"distinct": len(shapes), "one_off": sum(1 for n in shapes.values() if n == 1)}
    if not dims:
        return out
    dims, weights = np.array(dims), np.array(weights)
    channels = Counter()
    for (c, _, _), n in zip(dims, weights):
        channels[int(c)] += int(n)
    out["channels"] = {str(c): round(n * scale) for c, n in sorted(channels.items())}
    for axis, name in ((1, "height"), (2, "width")):
        values = np.repeat(dims[:, axis], weights)
        q = np.percentile(values, [10, 50, 90], method="nearest")
        out[name] = {"min": int(values.min()), "p10": int(q[0]), "median": int(q[1]),
                     "p90": int(q[2]), "max": int(values.max())}
    return out


def _pick_records(path, backend, n, random, seed):
    from .compute_mean import open_db_arg

    with open_db_arg(path, backend) as source:
        if random:
            keys = source.keys()
            idx = _sample_indices(len(keys), n, True, seed)
            return [(keys[i], bytes(source.get(keys[i]))) for i in idx]
        out = []
        for key, value in source.items():
            if len(out) >= n:
                break
            out.append((bytes(key), bytes(value)))
        return out


# --------------------------------------------------------------------------- mean

def inspect_mean(path):
    """Summary dict of a mean ``.binaryproto``."""
    from ..formats.mean import read_blob_file

    path = os.fspath(path)
    blob, size = read_blob_file(path, hint="is it a mean file?")
    array = blob.array
    chw = array.reshape(array.shape[-3:]) if array.ndim >= 3 and int(np.prod(array.shape[:-3])) == 1 \
        else None
    report = {"kind": "mean", "path": path, "shape": list(array.shape),
              "shape_from": "legacy num/channels/height/width" if blob.legacy else "shape.dim",
              "values_from": blob.values_from,
              "bytes": size, "min": float(array.min()) if array.size else None,
              "max": float(array.max()) if array.size else None,
              "caffe_usable": bool(array.ndim == 4 and array.shape[0] == 1)}
    if chw is not None:
        from .compute_mean import channel_means

        report["channels"] = chw.shape[0]
        report["channel_means"] = channel_means(chw)
    if not report["caffe_usable"]:
        report["warning"] = ("Caffe's transformer reads C, H, W from axes 1..3 of a (1, C, H, W) "
                             "blob; this blob will not match -- rewrite it with `caffedata mean`")
    return report


# --------------------------------------------------------------------------- prototxt

def _first_record_chw(spec):
    """C, H, W of the source's first record after Caffe's decoding rules, or None."""
    from ..sources.db import open_source

    with open_source(spec.source, spec.backend) as source:
        for key, value in source.items():
            d = _parse(value, spec.source, bytes(key), 0)
            if d.encoded:
                t = spec.transform
                flag = 1 if t.force_color else (0 if t.force_gray else -1)
                try:
                    return decode_datum(value, spec.source, bytes(key), 0, flag)[0].shape
                except RecordError:
                    return None
            return d.channels, d.height, d.width
    return None


def inspect_prototxt(path):
    """Each Data layer's effective settings and the batch shapes the iterator provides."""
    from google.protobuf import text_format

    from ..formats.prototxt import DATA_LAYER_TYPES, data_layer_spec, parse_net, read_prototxt_arg
    from ..formats.spec import Phase

    path = os.fspath(path)
    text = read_prototxt_arg(path)
    net = parse_net(text)
    texts = []
    if len(net.layers):  # legacy V1 `layers`: let data_layer_spec upgrade and pick per phase
        phases = [None] if len(net.layers) == 1 else [Phase.TRAIN, Phase.TEST]
        texts = [(None, text, phase) for phase in phases]
    for layer in net.layer:
        one = type(net)()
        one.layer.add().CopyFrom(layer)
        texts.append((layer, text_format.MessageToString(one), None))
    report = {"kind": "prototxt", "path": path, "layers": []}
    seen = set()
    for layer, one_text, phase in texts:
        if layer is not None and layer.type not in DATA_LAYER_TYPES:
            report["layers"].append({"name": layer.name, "type": layer.type,
                                     "note": "not a data layer CaffeDataIter reads"})
            continue
        try:
            spec = data_layer_spec(one_text, phase) if phase is not None else data_layer_spec(one_text)
        except SpecError as exc:
            if layer is not None or len(texts) == 1:
                report["layers"].append({"name": getattr(layer, "name", ""), "error": str(exc)})
            continue
        if (spec.name, spec.phase) in seen:
            continue
        seen.add((spec.name, spec.phase))
        t = spec.transform
        entry = {
            "name": spec.name, "type": "Data", "phase": spec.phase.name, "tops": list(spec.tops),
            "data_param": {"source": spec.source, "backend": spec.backend.name,
                           "batch_size": spec.batch_size, "prefetch": spec.prefetch},
            "transform_param": {"scale": t.scale, "mirror": t.mirror, "crop_size": t.crop_size,
                                "mean_file": t.mean_file, "mean_value": list(t.mean_value),
                                "force_color": t.force_color, "force_gray": t.force_gray},
            "crop": ("random (TRAIN)" if t.random_crop else "centre (TEST)") if t.crop_size else "none",
        }
        try:
            chw = _first_record_chw(spec)
        except CaffeDataError as exc:
            entry["batch_shapes_error"] = str(exc)
            chw = None
        if chw is not None:
            from ..pipeline.engine import output_shapes

            data, label = output_shapes(spec, tuple(chw), flat=False)
            flat, _ = output_shapes(spec, tuple(chw), flat=True)
            entry["first_record_chw"] = list(chw)
            entry["batch_shapes"] = {"data": list(data), "data_flat": list(flat),
                                     "label": list(label) if spec.has_label else None}
        report["layers"].append(entry)
    return report


# --------------------------------------------------------------------------- dispatch

def inspect(path, backend="auto", sample=None, random=False, seed=0, progress=False):
    kind = detect_kind(path)
    if kind == "db":
        return inspect_db(path, backend, sample=sample, random=random, seed=seed, progress=progress)
    if kind == "mean":
        return inspect_mean(path)
    return inspect_prototxt(path)


# --------------------------------------------------------------------------- grids

def grid_geometry(n, tile):
    """(rows, cols, height, width) of a grid of ``n`` tiles of ``tile`` pixels."""
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    cell_w = tile + 2 * GRID_PAD
    cell_h = tile + GRID_LABEL_H + 2 * GRID_PAD
    return rows, cols, rows * cell_h, cols * cell_w


def _display_bgr(chw, rgb=False):
    """HWC uint8 BGR of a CHW array (float arrays are stretched to 0..255)."""
    a = np.asarray(chw)
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
        if 0 <= lo and hi <= 255 and hi > 1.5:
            a = np.clip(np.rint(a), 0, 255)
        else:
            a = (a - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
        a = a.astype(np.uint8)
    c = a.shape[0]
    if c == 1 or c == 2:
        hwc = np.repeat(a[:1].transpose(1, 2, 0), 3, axis=2)
    else:
        hwc = a[:3].transpose(1, 2, 0)
        if c == 4:  # composite BGRA over the background
            alpha = a[3].astype(np.float32)[..., None] / 255.0
            hwc = (hwc * alpha + np.array(GRID_BG, np.float32) * (1 - alpha)).round()
            hwc = hwc.astype(np.uint8)
        if rgb:
            hwc = hwc[..., ::-1]
    return np.ascontiguousarray(hwc)


def render_grid(images, captions, out_path, tile=64, rgb=False):
    """Write a labelled PNG grid of CHW images; returns (height, width).

    Each image is scaled so its longer side is ``tile`` pixels (nearest
    neighbour when enlarging, area averaging when shrinking) and centred in
    its cell, with its caption in a band underneath.  Geometry:
    ``grid_geometry(len(images), tile)``.
    """
    import cv2

    n = len(images)
    if n == 0:
        raise CaffeDataError(f"{out_path}: nothing to draw (no records)")
    rows, cols, height, width = grid_geometry(n, tile)
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = GRID_BG
    cell_w, cell_h = tile + 2 * GRID_PAD, tile + GRID_LABEL_H + 2 * GRID_PAD
    for i, (chw, caption) in enumerate(zip(images, captions)):
        img = _display_bgr(chw, rgb)
        h, w = img.shape[:2]
        s = tile / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        interp = cv2.INTER_NEAREST if s >= 1 else cv2.INTER_AREA
        img = cv2.resize(img, (nw, nh), interpolation=interp)
        r, c = divmod(i, cols)
        y0 = r * cell_h + GRID_PAD + (tile - nh) // 2
        x0 = c * cell_w + GRID_PAD + (tile - nw) // 2
        canvas[y0:y0 + nh, x0:x0 + nw] = img
        text = str(caption)[: max(1, tile // 6)]
        cv2.putText(canvas, text, (c * cell_w + GRID_PAD, r * cell_h + GRID_PAD + tile + 11),
                    cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1, cv2.LINE_AA)
    out_path = os.fspath(out_path)
    try:
        ok = cv2.imwrite(out_path, canvas)
    except cv2.error:
        ok = False
    if not ok:
        raise CaffeDataError(f"{out_path}: cannot write the grid image -- use a .png path in a "
                             f"writable folder")
    return height, width


def db_grid(path, out_path, n=64, backend="auto", random=False, seed=0, tile=64, rgb=False):
    """A labelled grid of the first ``n`` (or ``n`` random) records of a DB."""
    pairs = _pick_records(os.fspath(path), backend, int(n), random, seed)
    images, captions = [], []
    for i, (key, value) in enumerate(pairs):
        chw, label = record_image(value, path, key, i)
        images.append(chw)
        captions.append(label)
    return render_grid(images, captions, out_path, tile=tile, rgb=rgb)


def mean_grid(path, out_path, tile=128, rgb=False):
    """The mean image of a .binaryproto as a one-tile grid captioned 'mean'."""
    from ..formats.mean import read_blob_file

    array = read_blob_file(path, hint="is it a mean file?")[0].array
    chw = array.reshape(array.shape[-3:]) if array.ndim >= 3 else array.reshape(1, 1, -1)
    return render_grid([chw], ["mean"], out_path, tile=tile, rgb=rgb)


# --------------------------------------------------------------------------- text

def _human_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


SHAPE_LIST_LIMIT = 12  # more distinct shapes than this are summarised, not listed


def _hist_lines(counter, limit=12, approx=""):
    items = list(counter.items())
    total = sum(v for _, v in items) or 1
    lines = [f"    {k:>14}  {approx + str(v):>9}  {100.0 * v / total:5.1f}%" for k, v in items[:limit]]
    if len(items) > limit:
        lines.append(f"    ... {len(items) - limit} more")
    return lines


def _shape_lines(report, approx):
    shapes, summary = report["shapes"], report.get("shape_summary") or {}
    if len(shapes) <= SHAPE_LIST_LIMIT or "height" not in summary:
        return ["  channels x height x width:"] + _hist_lines(shapes, SHAPE_LIST_LIMIT, approx)
    seen = " in the sample" if report.get("estimated") else ""
    lines = [f"  channels x height x width: {summary['distinct']} distinct shapes{seen}, "
             f"{summary['one_off']} of them seen once"]
    lines.append("    channels: " + ", ".join(f"{c} ({approx}{n} records)"
                                              for c, n in summary["channels"].items()))
    for name in ("height", "width"):
        q = summary[name]
        lines.append(f"    {name + ':':<8} min {q['min']}, 10% {q['p10']}, median {q['median']}, "
                     f"90% {q['p90']}, max {q['max']}{' (sampled)' if approx else ''}")
    repeated = {k: v for k, v in shapes.items()
                if v > (round(report["count"] / report["examined"]) if approx else 1)}
    if repeated:
        lines.append("    most common:")
        lines.extend("  " + l for l in _hist_lines(repeated, 5, approx))
    return lines


def format_report(report):
    """Human-readable text of an ``inspect`` dict."""
    kind = report["kind"]
    out = []
    if kind == "db":
        approx = "~" if report.get("estimated") else ""
        out.append(f"{report['path']}: {report['backend']} database, {report['count']} records "
                   f"(from {report['count_from']}), {_human_bytes(report['size_on_disk'])} on disk")
        if not report["count"]:
            return "\n".join(out)
        if report.get("estimated"):
            out.append(f"  estimated from {report['examined']} sampled records (~ marks estimates)")
        out.append(f"  keys: first {report['first_key']!r}, last {report['last_key']!r}, "
                   f"pattern {report['key_pattern']}")
        recs = ", ".join(f"{approx}{v} {k}" for k, v in report["records"].items())
        fmts = report["encoded_formats"]
        if fmts:
            recs += " (" + ", ".join(f"{approx}{v} {k}" for k, v in fmts.items()) + ")"
        out.append(f"  records: {recs}")
        b = report["bytes_per_record"]
        out.append(f"  bytes per record{' (sampled)' if approx else ''}: min {b['min']}, "
                   f"mean {b['mean']:.1f}, max {b['max']}; "
                   f"{approx}{_human_bytes(report['value_bytes'])} of values")
        out.extend(_shape_lines(report, approx))
        out.append(f"  labels ({len(report['labels'])} distinct{' in the sample' if approx else ''}):")
        out.extend(_hist_lines(report["labels"], limit=20, approx=approx))
    elif kind == "mean":
        out.append(f"{report['path']}: mean blob, shape {tuple(report['shape'])} "
                   f"(from {report['shape_from']}, values from {report['values_from']}), "
                   f"{report['bytes']} bytes")
        if report.get("min") is not None:
            out.append(f"  min {report['min']:.6g}, max {report['max']:.6g}")
        for i, m in enumerate(report.get("channel_means", [])):
            out.append(f"  mean_value channel [{i}]: {m:.6g}")
        if report.get("warning"):
            out.append(f"  warning: {report['warning']}")
    else:
        out.append(f"{report['path']}: {len(report['layers'])} layer(s)")
        for layer in report["layers"]:
            if "error" in layer or "note" in layer:
                out.append(f"  layer {layer.get('name')!r}: {layer.get('error') or layer.get('note')}")
                continue
            dp, tp = layer["data_param"], layer["transform_param"]
            out.append(f"  layer {layer['name']!r} (Data, phase {layer['phase']}), "
                       f"tops {layer['tops']}")
            out.append(f"    data_param: source {dp['source']!r}, backend {dp['backend']}, "
                       f"batch_size {dp['batch_size']}, prefetch {dp['prefetch']}")
            out.append(f"    transform_param: scale {tp['scale']:.8g}, mirror {tp['mirror']}, "
                       f"crop_size {tp['crop_size']} ({layer['crop']}), mean_file "
                       f"{tp['mean_file']!r}, mean_value {tp['mean_value']}, force_color "
                       f"{tp['force_color']}, force_gray {tp['force_gray']}")
            if "batch_shapes" in layer:
                bs = layer["batch_shapes"]
                out.append(f"    batches: data {tuple(bs['data'])} (flat {tuple(bs['data_flat'])}), "
                           f"label {tuple(bs['label']) if bs['label'] else None}")
            elif "batch_shapes_error" in layer:
                out.append(f"    batches: unknown ({layer['batch_shapes_error']})")
    return "\n".join(out)


def to_json(report):
    return json.dumps(report, indent=2, sort_keys=False)
