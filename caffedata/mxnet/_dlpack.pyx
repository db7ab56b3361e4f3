# cython: language_level=3, boundscheck=False, wraparound=False
"""Zero-copy hand-off of numpy batch buffers to MXNet NDArrays (DLPack), for ``CaffeDataIter``.

MXNet-specific, so it lives with the MXNet adapter, not in the core kernel.
Nothing here links against MXNet: the caller passes the address of
``MXNDArrayFromDLPackEx`` found in the loaded libmxnet.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t

cnp.import_array()


cdef extern from *:
    """
    #include <Python.h>
    #include <stdint.h>
    /* DLPack as MXNet 1.9 reads it (include/dlpack/dlpack.h, v0.x: DLContext). */
    typedef struct { int device_type; int device_id; } cd_DLContext;
    typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } cd_DLDataType;
    typedef struct {
        void* data; cd_DLContext ctx; int ndim; cd_DLDataType dtype;
        int64_t* shape; int64_t* strides; uint64_t byte_offset;
    } cd_DLTensor;
    typedef struct cd_DLManagedTensor {
        cd_DLTensor dl_tensor; void* manager_ctx; void (*deleter)(struct cd_DLManagedTensor*);
    } cd_DLManagedTensor;
    typedef int (*cd_from_dlpack_fn)(void* dlpack, unsigned char transient, void** out);

    /* Called by MXNet (any thread) when the NDArray's memory is released:
       drop the reference that kept the numpy buffer alive. */
    static void cd_dl_deleter(cd_DLManagedTensor* t) {
        if (!t->manager_ctx || !Py_IsInitialized()) return;  /* interpreter gone: nothing to free */
        PyGILState_STATE s = PyGILState_Ensure();
        Py_DECREF((PyObject*)t->manager_ctx);
        PyGILState_Release(s);
    }

    /* MXNDArrayFromDLPackEx over arr's memory; returns MXNet's status, *out the handle. */
    static int cd_ndarray_from_buffer(void* fn, PyObject* arr, void* data, int ndim,
                                      const int64_t* shape, int bits, void** out) {
        int64_t dims[32];
        cd_DLManagedTensor t;
        int k, rc;
        if (ndim > 32) return -1;
        for (k = 0; k < ndim; k++) dims[k] = shape[k];
        t.dl_tensor.data = data;
        t.dl_tensor.ctx.device_type = 1;  /* kDLCPU */
        t.dl_tensor.ctx.device_id = 0;
        t.dl_tensor.ndim = ndim;
        t.dl_tensor.dtype.code = 2;       /* kDLFloat */
        t.dl_tensor.dtype.bits = (uint8_t)bits;
        t.dl_tensor.dtype.lanes = 1;
        t.dl_tensor.shape = dims;
        t.dl_tensor.strides = NULL;       /* compact row-major */
        t.dl_tensor.byte_offset = 0;
        t.manager_ctx = arr;
        t.deleter = cd_dl_deleter;
        Py_INCREF(arr);
        /* transient: MXNet copies the struct (and reads the shape) before returning */
        rc = ((cd_from_dlpack_fn)fn)(&t, 1, out);
        if (rc != 0) Py_DECREF(arr);
        return rc;
    }
    """
    int cd_ndarray_from_buffer(void* fn, object arr, void* data, int ndim, const int64_t* shape,
                               int bits, void** out)


def ndarray_handle(cnp.ndarray arr, size_t from_dlpack_fn):
    """An MXNet NDArray handle over ``arr``'s memory (C-contiguous float32/float64), no copy.

    ``from_dlpack_fn`` is the address of ``MXNDArrayFromDLPackEx``.  The NDArray
    holds a reference to ``arr`` until MXNet releases it.  Returns the handle
    as an int, or None when MXNet refused (the caller then reports MXNet's error).
    """
    cdef void* out = NULL
    cdef int bits, k
    cdef int64_t dims[32]
    if arr.ndim > 32:
        raise ValueError("ndarray_handle supports up to 32 dimensions")
    for k in range(arr.ndim):
        dims[k] = cnp.PyArray_DIMS(arr)[k]
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError("ndarray_handle needs a C-contiguous array")
    if arr.dtype == np.float32:
        bits = 32
    elif arr.dtype == np.float64:
        bits = 64
    else:
        raise ValueError(f"ndarray_handle supports float32/float64, got {arr.dtype}")
    rc = cd_ndarray_from_buffer(<void*>from_dlpack_fn, arr, cnp.PyArray_DATA(arr), arr.ndim,
                                dims, bits, &out)
    if rc != 0:
        return None
    return <size_t>out


