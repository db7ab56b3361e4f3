"""MXNet-side helpers (placeholder from branch tools-ux: the lead's reorganisation owns this file).

``compat.check_numpy_for_mxnet`` must stay importable without importing mxnet.
"""
