"""The framework-neutral data pipeline: epoch plans, worker threads, the batch kernels.

``data_layer`` ties them together; ``sampling`` plans epochs, ``prefetch`` runs
the worker threads, ``kernels`` turns records into transformed batches.
"""
