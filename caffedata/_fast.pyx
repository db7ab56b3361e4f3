# cython: language_level=3
"""Placeholder; the real kernels land with the core pipeline."""
