"""Small real datasets bundled with caffedata (no network needed).

``load_digits()``: the 1797 handwritten digits of the UCI "Optical Recognition
of Handwritten Digits" test set (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), the
copy scikit-learn bundles.  See ``caffedata/data/DIGITS-README.txt``.
"""
import gzip
import os

import numpy as np

__all__ = ["load_digits", "DIGITS_PATH"]

DIGITS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "digits.csv.gz")


def load_digits(scale_to_255=True):
    """``(images, labels)``: uint8 ``(1797, 8, 8)`` and int64 ``(1797,)``.

    The stored pixels count set bits of 4x4 blocks (0..16); with
    ``scale_to_255`` they are mapped to 0..255 as ``round(v * 255 / 16)``.
    """
    with gzip.open(DIGITS_PATH, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 65:
        raise ValueError(f"{DIGITS_PATH}: expected 65 columns, got shape {table.shape}")
    pixels, labels = table[:, :64], table[:, 64]
    if scale_to_255:
        pixels = np.rint(pixels * (255.0 / 16.0))
    return pixels.reshape(-1, 8, 8).astype(np.uint8), labels
