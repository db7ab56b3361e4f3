"""The framework-neutral data pipeline: epoch plans, worker threads, the batch kernels.

``layer.DataLayer`` is the user-facing iterator; under it ``engine`` ties the
pieces together: ``sampling`` plans epochs, ``prefetch`` runs the worker
threads, ``kernels`` turns records into transformed batches.
"""
