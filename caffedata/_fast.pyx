# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The Cython core: Datum wire parsing and the fused Caffe transform.

Everything here runs without the GIL (except the calls into cv2 that decode
an image) and trusts its callers (``pipeline/kernels.py``,
``sources/image_list.py``) for argument shapes and dtypes.  What it never trusts is the bytes of a
record: every read of a Datum is bounds-checked, and a malformed record comes
back as an error code, never as an out-of-bounds read.

The transform is Caffe 1.0's DataTransformer::Transform, fused into one pass:
crop window, mirror through the output index, mean at the *source* position,
then scale, in the output dtype's arithmetic (float32: ``fl(fl(x - m) * s)``).
Large float32 planes (a batch buffer outgrows every cache) are written with
non-temporal stores on AVX-512 VBMI CPUs, so the output does not evict what
the decoder and parser work on; the values are the same on every path.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, strlen

import numpy as np
cimport numpy as cnp

cnp.import_array()

# Error codes of parse_datum (messages in DATUM_ERRORS).
cdef enum:
    OK = 0
    ERR_TRUNCATED_VARINT = 1
    ERR_TRUNCATED_FIELD = 2
    ERR_BAD_WIRETYPE = 3
    ERR_BAD_LENGTH = 4
    ERR_GROUP = 5
    ERR_BAD_TAG = 6

# What protobuf (upb) accepts, and so what this parser accepts, no more: a tag
# is a varint of at most 5 bytes whose value fits 32 bits, with a field number
# above 0; a length prefix is at most 5 bytes; any other varint at most 10
# bytes; groups nest at most 100 deep.
cdef enum:
    MAX_TAG_BYTES = 5
    MAX_LENGTH_BYTES = 5
    MAX_VARINT_BYTES = 10
    MAX_GROUP_DEPTH = 100

DATUM_ERRORS = {
    ERR_TRUNCATED_VARINT: "truncated varint (the record ends inside a number)",
    ERR_TRUNCATED_FIELD: "truncated field (a length or fixed-size value runs past the end of the record)",
    ERR_BAD_WIRETYPE: "invalid protobuf wire type (the bytes are not a Datum)",
    ERR_BAD_LENGTH: "invalid length prefix",
    ERR_GROUP: "unterminated protobuf group",
    ERR_BAD_TAG: "invalid protobuf field tag (field number 0, over 32 bits, or overlong)",
}

# float_data layouts
cdef enum FloatLayout:
    FLOAT_NONE = 0
    FLOAT_PACKED = 1      # contiguous little-endian floats
    FLOAT_UNPACKED = 2    # one 0x35 tag byte before each float: stride 5
    FLOAT_SCATTERED = 3   # present but not one contiguous run: caller falls back to protobuf

FLOAT_LAYOUTS = {"none": FLOAT_NONE, "packed": FLOAT_PACKED, "unpacked": FLOAT_UNPACKED,
                 "scattered": FLOAT_SCATTERED}

cdef struct DatumView:
    int64_t channels
    int64_t height
    int64_t width
    int64_t label
    Py_ssize_t data_off
    Py_ssize_t data_len      # -1 when absent
    Py_ssize_t float_off     # first float's byte offset
    Py_ssize_t float_count
    int float_layout
    int encoded


cdef inline int read_varint_max(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos, uint64_t* out,
                                int max_bytes) noexcept nogil:
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef uint8_t b
    while True:
        if shift >= 7 * max_bytes:
            return ERR_BAD_LENGTH if max_bytes == MAX_LENGTH_BYTES else (
                ERR_BAD_TAG if max_bytes == MAX_TAG_BYTES else ERR_TRUNCATED_VARINT)
        if pos[0] >= n:
            return ERR_TRUNCATED_VARINT
        b = p[pos[0]]
        pos[0] += 1
        result |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = result
            return OK
        shift += 7


cdef inline int read_varint(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos, uint64_t* out) noexcept nogil:
    return read_varint_max(p, n, pos, out, MAX_VARINT_BYTES)


cdef inline int read_length(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos, uint64_t* out) noexcept nogil:
    cdef int err = read_varint_max(p, n, pos, out, MAX_LENGTH_BYTES)
    if err == OK and out[0] > <uint64_t>0x7FFFFFFF:
        return ERR_BAD_LENGTH
    return err


cdef inline int read_tag(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos, uint64_t* out,
                         bint allow_field_zero=False) noexcept nogil:
    # protobuf refuses field number 0, except inside an unknown group it skips
    cdef int err = read_varint_max(p, n, pos, out, MAX_TAG_BYTES)
    if err == OK and (out[0] > <uint64_t>0xFFFFFFFFu or ((out[0] >> 3) == 0 and not allow_field_zero)):
        return ERR_BAD_TAG
    return err


cdef int skip_field(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos, uint32_t wiretype,
                    uint64_t field, int depth) noexcept nogil:
    """Skip one unknown field by the protobuf wire rules."""
    cdef uint64_t v
    cdef uint64_t tag
    cdef int err
    if wiretype == 0:
        return read_varint(p, n, pos, &v)
    elif wiretype == 1:
        if n - pos[0] < 8:
            return ERR_TRUNCATED_FIELD
        pos[0] += 8
    elif wiretype == 5:
        if n - pos[0] < 4:
            return ERR_TRUNCATED_FIELD
        pos[0] += 4
    elif wiretype == 2:
        err = read_length(p, n, pos, &v)
        if err:
            return err
        if v > <uint64_t>(n - pos[0]):
            return ERR_TRUNCATED_FIELD
        pos[0] += <Py_ssize_t>v
    elif wiretype == 3:  # start group: skip until the matching end group
        if depth >= MAX_GROUP_DEPTH:
            return ERR_GROUP
        while True:
            err = read_tag(p, n, pos, &tag, True)
            if err:
                return err if err == ERR_BAD_TAG else ERR_GROUP
            if (tag & 7) == 4:
                return OK if (tag >> 3) == field else ERR_GROUP
            err = skip_field(p, n, pos, <uint32_t>(tag & 7), tag >> 3, depth + 1)
            if err:
                return err
    else:
        return ERR_BAD_WIRETYPE
    return OK


cdef int parse_datum(const uint8_t* p, Py_ssize_t n, DatumView* d) noexcept nogil:
    """Parse the seven Datum fields; optional fields keep the last occurrence."""
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t end
    cdef uint64_t tag, v, field
    cdef uint32_t wt
    cdef int err
    d.channels = 0
    d.height = 0
    d.width = 0
    d.label = 0
    d.data_off = 0
    d.data_len = -1
    d.float_off = 0
    d.float_count = 0
    d.float_layout = FLOAT_NONE
    d.encoded = 0
    while pos < n:
        err = read_tag(p, n, &pos, &tag)
        if err:
            return err
        field = tag >> 3
        wt = <uint32_t>(tag & 7)
        if wt == 0 and (field == 1 or field == 2 or field == 3 or field == 5 or field == 7):
            err = read_varint(p, n, &pos, &v)
            if err:
                return err
            if field == 1:
                d.channels = <int32_t>v
            elif field == 2:
                d.height = <int32_t>v
            elif field == 3:
                d.width = <int32_t>v
            elif field == 5:
                d.label = <int32_t>v
            else:
                d.encoded = v != 0
        elif wt == 2 and field == 4:
            err = read_length(p, n, &pos, &v)
            if err:
                return err
            if v > <uint64_t>(n - pos):
                return ERR_TRUNCATED_FIELD
            d.data_off = pos
            d.data_len = <Py_ssize_t>v
            pos += <Py_ssize_t>v
        elif wt == 5 and field == 6:
            if n - pos < 4:
                return ERR_TRUNCATED_FIELD
            if d.float_layout == FLOAT_NONE:
                d.float_layout = FLOAT_UNPACKED
                d.float_off = pos
            elif d.float_layout != FLOAT_UNPACKED or pos != d.float_off + 5 * d.float_count:
                d.float_layout = FLOAT_SCATTERED
            d.float_count += 1
            pos += 4
        elif wt == 2 and field == 6:
            err = read_length(p, n, &pos, &v)
            if err:
                return err
            if v > <uint64_t>(n - pos) or v % 4 != 0:
                return ERR_BAD_LENGTH if v % 4 != 0 else ERR_TRUNCATED_FIELD
            if d.float_layout == FLOAT_NONE:
                d.float_layout = FLOAT_PACKED
                d.float_off = pos
            elif v > 0:
                d.float_layout = FLOAT_SCATTERED
            d.float_count += <Py_ssize_t>(v // 4)
            pos += <Py_ssize_t>v
        else:
            err = skip_field(p, n, &pos, wt, field, 0)
            if err:
                return err
    return OK


def datum_header(const uint8_t[::1] buf):
    """Parse a serialized Datum's header without copying its payload.

    Returns ``(error_code, channels, height, width, label, encoded, data_off,
    data_len, float_off, float_count, float_layout)``; ``error_code`` 0 is
    success, otherwise ``DATUM_ERRORS[error_code]`` explains it.
    """
    cdef DatumView d
    cdef int err
    cdef Py_ssize_t n = buf.shape[0]
    with nogil:
        err = parse_datum(&buf[0] if n > 0 else NULL, n, &d)
    return (err, d.channels, d.height, d.width, d.label, d.encoded, d.data_off, d.data_len,
            d.float_off, d.float_count, d.float_layout)


# ---------------------------------------------------------------------------
# The fused transform

ctypedef fused out_t:
    float
    double

# source layouts
LAYOUT_CHW_U8 = 0      # Datum.data
LAYOUT_CHW_F32 = 1     # packed float_data (possibly unaligned)
LAYOUT_CHW_F32_TAGGED = 2  # unpacked float_data, stride 5 bytes
LAYOUT_HWC_U8 = 3      # a decoded image, interleaved BGR(A)

cdef enum MeanKind:
    MEAN_NONE = 0
    MEAN_FILE = 1
    MEAN_VALUES = 2


cdef inline float load_f32(const uint8_t* p) noexcept nogil:
    cdef float f
    memcpy(&f, p, 4)
    return f


cdef void transform_one(const uint8_t* src, int layout, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t h_off, Py_ssize_t w_off, Py_ssize_t h_out, Py_ssize_t w_out,
                        bint mirror, int mean_kind, const float* mean, const float* mean_values,
                        out_t scale, out_t* out) noexcept nogil:
    """Caffe's per-element formula for one record into ``out`` (C, h_out, w_out)."""
    cdef Py_ssize_t c, h, w, s, t, row_out, sh
    cdef out_t x, m
    for c in range(C):
        for h in range(h_out):
            sh = h_off + h
            row_out = (c * h_out + h) * w_out
            for w in range(w_out):
                if layout == 0:
                    s = (c * H + sh) * W + w_off + w
                    x = <out_t>src[s]
                elif layout == 3:
                    s = (c * H + sh) * W + w_off + w   # mean index, CHW
                    x = <out_t>src[(sh * W + w_off + w) * C + c]
                elif layout == 1:
                    s = (c * H + sh) * W + w_off + w
                    x = <out_t>load_f32(src + 4 * s)
                else:
                    s = (c * H + sh) * W + w_off + w
                    x = <out_t>load_f32(src + 5 * s)
                t = row_out + (w_out - 1 - w if mirror else w)
                if mean_kind == MEAN_FILE:
                    m = <out_t>mean[s]
                    out[t] = (x - m) * scale
                elif mean_kind == MEAN_VALUES:
                    m = <out_t>mean_values[c]
                    out[t] = (x - m) * scale
                else:
                    out[t] = x * scale


cdef extern from *:
    """
    /* Row kernels of the float32 transform (raw CHW uint8 and decoded HWC uint8).

       Each output row is computed forward, in the order Caffe computes it:
       fl(fl(x - m) * s) per element, with no FMA (the file is built with
       -ffp-contract=off), so SIMD width changes nothing in the bits.  A
       mirrored row is computed forward into a small stack buffer and copied
       reversed with SSE2 shuffles: reversed stores do not vectorise. */
    #include <stdint.h>
    #include <stddef.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
    #define CD_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define CD_CLONES
    #endif
    #define CD_ROW_CHUNK 1024

    /* o[0..n) = (s[k*stride] - mean) * scale, mean from m[k] (m != NULL) or mv. */
    CD_CLONES static void cd_row_chw(const uint8_t* __restrict s, const float* __restrict m,
                                     float mv, float scale, float* __restrict o, ptrdiff_t n) {
        ptrdiff_t w;
        if (m) {
            for (w = 0; w < n; w++) o[w] = ((float)s[w] - m[w]) * scale;
        } else {
            for (w = 0; w < n; w++) o[w] = ((float)s[w] - mv) * scale;
        }
    }

    CD_CLONES static void cd_row_noscale_chw(const uint8_t* __restrict s, float scale,
                                             float* __restrict o, ptrdiff_t n) {
        ptrdiff_t w;
        for (w = 0; w < n; w++) o[w] = (float)s[w] * scale;
    }

    /* Three channel rows of an interleaved BGR row. m0..m2 NULL: mean values. */
    CD_CLONES static void cd_row_hwc3(const uint8_t* __restrict s,
                                      const float* __restrict m0, const float* __restrict m1,
                                      const float* __restrict m2, const float* mv, int has_mean,
                                      float scale, float* __restrict o0, float* __restrict o1,
                                      float* __restrict o2, ptrdiff_t n) {
        ptrdiff_t w;
        if (m0) {
            for (w = 0; w < n; w++) {
                o0[w] = ((float)s[3 * w] - m0[w]) * scale;
                o1[w] = ((float)s[3 * w + 1] - m1[w]) * scale;
                o2[w] = ((float)s[3 * w + 2] - m2[w]) * scale;
            }
        } else if (has_mean) {
            const float a = mv[0], b = mv[1], c = mv[2];
            for (w = 0; w < n; w++) {
                o0[w] = ((float)s[3 * w] - a) * scale;
                o1[w] = ((float)s[3 * w + 1] - b) * scale;
                o2[w] = ((float)s[3 * w + 2] - c) * scale;
            }
        } else {
            for (w = 0; w < n; w++) {
                o0[w] = (float)s[3 * w] * scale;
                o1[w] = (float)s[3 * w + 1] * scale;
                o2[w] = (float)s[3 * w + 2] * scale;
            }
        }
    }

    /* dst[k] = src[n-1-k], with ascending stores: descending stores into a cold
       batch buffer ran at a third of the speed (W1 with mirror). */
    static void cd_reverse_copy(const float* __restrict src, float* __restrict dst, ptrdiff_t n) {
        ptrdiff_t k = 0;
    #if defined(__SSE2__)
        for (; k + 4 <= n; k += 4) {
            __m128 v = _mm_loadu_ps(src + n - 4 - k);
            _mm_storeu_ps(dst + k, _mm_shuffle_ps(v, v, _MM_SHUFFLE(0, 1, 2, 3)));
        }
    #endif
        for (; k < n; k++) dst[k] = src[n - 1 - k];
    }

    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
    #include <immintrin.h>
    #define CD_HAVE_VBMI_KERNEL 1
    #define CD_VBMI __attribute__((target("avx512f,avx512bw,avx512vbmi")))
    /* Planes of at least this many floats are written with non-temporal stores. */
    #define CD_STREAM_MIN_PLANE 16384

    static int cd_cpu_has_vbmi(void) {
        static int known = -1;
        if (known < 0)
            known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vbmi");
        return known;
    }

    /* Outputs k0..k1 of one BGR row of n output pixels into three channel rows
       (o0..o2 hold output k0 first), 16 pixels a step: one byte permutation
       (vpermb) per channel takes the step's 16 bytes of that channel from the 48
       source bytes, in reverse order when mirrored.  Each element is still
       fl(fl(x - m) * s) (or fl(x * s) without a mean), as the scalar rows compute
       it, so the bits are the same.  A mirrored output w is source pixel n-1-w; a
       mean file is indexed at the source pixel (m0..m2 rows as in cd_row_hwc3). */
    CD_VBMI static void cd_row_hwc3_vbmi(const uint8_t* __restrict s,
                                         const float* __restrict m0, const float* __restrict m1,
                                         const float* __restrict m2, const float* mv, int has_mean,
                                         float scale, int mirror, ptrdiff_t n, ptrdiff_t k0,
                                         ptrdiff_t k1, float* __restrict o0, float* __restrict o1,
                                         float* __restrict o2) {
        static const uint8_t three_j[64] = {0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45};
        const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        /* byte lane j (< 16) of channel c: source byte 3j + c, or 3(m-1-j) + c mirrored (m pixels) */
        const __m512i byte_lane = _mm512_loadu_si512(three_j);
        const __m512 vscale = _mm512_set1_ps(scale);
        float* const outs[3] = {o0, o1, o2};
        const float* const means[3] = {m0, m1, m2};
        ptrdiff_t k;
        for (k = k0; k < k1; k += 16) {
            const ptrdiff_t m = k1 - k < 16 ? k1 - k : 16;
            const __mmask16 out_mask = (__mmask16)((1u << m) - 1u);
            /* the m source pixels of this step start at pixel k, or n-k-m mirrored */
            const ptrdiff_t first = mirror ? n - k - m : k;
            const __m512i bytes = _mm512_maskz_loadu_epi8((__mmask64)((1ull << (3 * m)) - 1ull), s + 3 * first);
            const __m512i index0 = mirror ? _mm512_sub_epi8(_mm512_set1_epi8((char)(3 * (m - 1))), byte_lane)
                                          : byte_lane;
            int c;
            for (c = 0; c < 3; c++) {
                const __m512i index = _mm512_add_epi8(index0, _mm512_set1_epi8((char)c));
                const __m128i channel = _mm512_castsi512_si128(_mm512_permutexvar_epi8(index, bytes));
                __m512 x = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(channel));
                if (means[0]) {
                    __m512 mean = _mm512_maskz_loadu_ps(out_mask, means[c] + first);
                    if (mirror) /* lane j needs the mean of pixel m-1-j of the step */
                        mean = _mm512_permutexvar_ps(_mm512_sub_epi32(_mm512_set1_epi32((int)m - 1), lane),
                                                     mean);
                    x = _mm512_sub_ps(x, mean);
                } else if (has_mean) {
                    x = _mm512_sub_ps(x, _mm512_set1_ps(mv[c]));
                }
                _mm512_mask_storeu_ps(outs[c] + (k - k0), out_mask, _mm512_mul_ps(x, vscale));
            }
        }
    }

    /* One output plane written in order through a staging area, as whole 64-byte
       lines with non-temporal stores: a batch buffer is far larger than the
       caches, and streaming it through them would evict what the decoder works
       on (its input, tables and output image) for lines nobody reads soon.  The
       plane's partial first and last lines get masked ordinary stores, so no
       byte outside the plane is written (a neighbouring plane may belong to
       another thread's image). */
    typedef struct {
        float* base;      /* 64-byte aligned: where stage[0] goes */
        float* first;     /* the plane's first float (stage lanes before it are not ours) */
        ptrdiff_t fill;   /* floats in stage, counted from base */
        float* stage;     /* 64-byte aligned */
    } cd_stream;

    static void cd_stream_start(cd_stream* st, float* plane, float* stage) {
        st->first = plane;
        st->base = (float*)((uintptr_t)plane & ~(uintptr_t)63);
        st->fill = plane - st->base;
        st->stage = stage;
    }

    CD_VBMI static void cd_stream_flush(cd_stream* st, int last) {
        const ptrdiff_t not_ours = st->first - st->base; /* > 0 only on the plane's first line */
        ptrdiff_t i = 0;
        for (; i + 16 <= st->fill; i += 16) {
            const __m512 v = _mm512_load_ps(st->stage + i);
            if (i < not_ours)
                _mm512_mask_storeu_ps(st->base + i, (__mmask16)(0xFFFFu << (not_ours - i)), v);
            else
                _mm512_stream_ps(st->base + i, v);
        }
        const ptrdiff_t rest = st->fill - i;
        if (last) {
            if (rest) {
                __mmask16 mask = (__mmask16)((1u << rest) - 1u);
                if (i < not_ours) mask &= (__mmask16)(0xFFFFu << (not_ours - i));
                _mm512_mask_storeu_ps(st->base + i, mask, _mm512_load_ps(st->stage + i));
            }
            _mm_sfence(); /* order the streamed lines before the batch is handed over */
            return;
        }
        if (rest) _mm512_store_ps(st->stage, _mm512_load_ps(st->stage + i));
        st->base += i;
        st->fill = rest;
    }

    /* cd_transform_hwc3_u8 on AVX-512 VBMI: rows by cd_row_hwc3_vbmi, large planes streamed. */
    CD_VBMI static void cd_transform_hwc3_u8_vbmi(const uint8_t* src, ptrdiff_t H, ptrdiff_t W,
                                                  ptrdiff_t h_off, ptrdiff_t w_off, ptrdiff_t h_out,
                                                  ptrdiff_t w_out, int mirror, int mean_kind,
                                                  const float* mean, const float* mean_values,
                                                  float scale, float* out) {
        const ptrdiff_t plane = h_out * w_out, mplane = H * W;
        ptrdiff_t h, k, c;
        if (plane < CD_STREAM_MIN_PLANE || ((uintptr_t)out & 3)) {
            for (h = 0; h < h_out; h++) {
                const float* m0 = mean_kind == 1 ? mean + (h_off + h) * W + w_off : NULL;
                cd_row_hwc3_vbmi(src + ((h_off + h) * W + w_off) * 3, m0, m0 ? m0 + mplane : NULL,
                                 m0 ? m0 + 2 * mplane : NULL, mean_values, mean_kind == 2, scale, mirror,
                                 w_out, 0, w_out, out + h * w_out, out + plane + h * w_out,
                                 out + 2 * plane + h * w_out);
            }
            return;
        }
        /* stage: up to 15 floats carried over + one chunk of a row, per channel */
        float stage[3][CD_ROW_CHUNK + 32] __attribute__((aligned(64)));
        cd_stream streams[3];
        for (c = 0; c < 3; c++) cd_stream_start(&streams[c], out + c * plane, stage[c]);
        for (h = 0; h < h_out; h++) {
            const uint8_t* srow = src + ((h_off + h) * W + w_off) * 3;
            const float* m0 = mean_kind == 1 ? mean + (h_off + h) * W + w_off : NULL;
            for (k = 0; k < w_out; k += CD_ROW_CHUNK) {
                const ptrdiff_t k1 = w_out - k < CD_ROW_CHUNK ? w_out : k + CD_ROW_CHUNK;
                cd_row_hwc3_vbmi(srow, m0, m0 ? m0 + mplane : NULL, m0 ? m0 + 2 * mplane : NULL,
                                 mean_values, mean_kind == 2, scale, mirror, w_out, k, k1,
                                 stage[0] + streams[0].fill, stage[1] + streams[1].fill,
                                 stage[2] + streams[2].fill);
                for (c = 0; c < 3; c++) {
                    streams[c].fill += k1 - k;
                    cd_stream_flush(&streams[c], h == h_out - 1 && k1 == w_out);
                }
            }
        }
    }

    /* cd_transform_chw_u8 for large planes on AVX-512: each channel plane streamed
       (cd_stream), rows computed by the same row kernels into the stage. */
    CD_VBMI static void cd_transform_chw_u8_streamed(const uint8_t* src, ptrdiff_t C, ptrdiff_t H,
                                                     ptrdiff_t W, ptrdiff_t h_off, ptrdiff_t w_off,
                                                     ptrdiff_t h_out, ptrdiff_t w_out, int mirror,
                                                     int mean_kind, const float* mean,
                                                     const float* mean_values, float scale, float* out) {
        float stage[CD_ROW_CHUNK + 32] __attribute__((aligned(64)));
        float tmp[CD_ROW_CHUNK];
        ptrdiff_t c, h, k, len;
        cd_stream st;
        for (c = 0; c < C; c++) {
            const float mv = mean_kind == 2 ? mean_values[c] : 0.0f;
            cd_stream_start(&st, out + c * h_out * w_out, stage);
            for (h = 0; h < h_out; h++) {
                const ptrdiff_t base = (c * H + h_off + h) * W + w_off;
                const float* mrow = mean_kind == 1 ? mean + base : NULL;
                /* chunk [k, k+len) of the row's outputs: source [k, k+len), or mirrored
                   source [w_out-k-len, w_out-k) reversed */
                for (k = 0; k < w_out; k += len) {
                    len = w_out - k < CD_ROW_CHUNK ? w_out - k : CD_ROW_CHUNK;
                    const ptrdiff_t from = mirror ? w_out - k - len : k;
                    float* dst = mirror ? tmp : stage + st.fill;
                    if (mean_kind) cd_row_chw(src + base + from, mrow ? mrow + from : NULL, mv, scale, dst, len);
                    else cd_row_noscale_chw(src + base + from, scale, dst, len);
                    if (mirror) cd_reverse_copy(tmp, stage + st.fill, len);
                    st.fill += len;
                    cd_stream_flush(&st, h == h_out - 1 && k + len == w_out);
                }
            }
        }
    }
    #endif

    /* One raw CHW uint8 record, float32 out.  mean_kind: 0 none, 1 file, 2 values. */
    static void cd_transform_chw_u8(const uint8_t* src, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                                    ptrdiff_t h_off, ptrdiff_t w_off, ptrdiff_t h_out,
                                    ptrdiff_t w_out, int mirror, int mean_kind, const float* mean,
                                    const float* mean_values, float scale, float* out) {
        float tmp[CD_ROW_CHUNK];
        ptrdiff_t c, h, base, k, len;
    #ifdef CD_HAVE_VBMI_KERNEL
        if (h_out * w_out >= CD_STREAM_MIN_PLANE && !((uintptr_t)out & 3) && cd_cpu_has_vbmi()) {
            cd_transform_chw_u8_streamed(src, C, H, W, h_off, w_off, h_out, w_out, mirror, mean_kind,
                                         mean, mean_values, scale, out);
            return;
        }
    #endif
        if (!mirror && h_out == H && w_out == W) {
            /* Whole planes are contiguous: one call per channel (small images are
               dominated by per-row call overhead otherwise). */
            const ptrdiff_t plane = H * W;
            for (c = 0; c < C; c++) {
                if (mean_kind)
                    cd_row_chw(src + c * plane, mean_kind == 1 ? mean + c * plane : NULL,
                               mean_kind == 2 ? mean_values[c] : 0.0f, scale, out + c * plane, plane);
                else
                    cd_row_noscale_chw(src + c * plane, scale, out + c * plane, plane);
            }
            return;
        }
        for (c = 0; c < C; c++) {
            const float mv = mean_kind == 2 ? mean_values[c] : 0.0f;
            for (h = 0; h < h_out; h++) {
                base = (c * H + h_off + h) * W + w_off;
                float* orow = out + (c * h_out + h) * w_out;
                const float* mrow = mean_kind == 1 ? mean + base : NULL;
                if (!mirror) {
                    if (mean_kind) cd_row_chw(src + base, mrow, mv, scale, orow, w_out);
                    else cd_row_noscale_chw(src + base, scale, orow, w_out);
                    continue;
                }
                /* mirrored: source chunk [k, k+len) lands at out[w_out-k-len, w_out-k) */
                for (k = 0; k < w_out; k += len) {
                    len = w_out - k < CD_ROW_CHUNK ? w_out - k : CD_ROW_CHUNK;
                    if (mean_kind) cd_row_chw(src + base + k, mrow ? mrow + k : NULL, mv, scale, tmp, len);
                    else cd_row_noscale_chw(src + base + k, scale, tmp, len);
                    cd_reverse_copy(tmp, orow + w_out - k - len, len);
                }
            }
        }
    }

    /* One decoded 3-channel HWC uint8 image, float32 out (mean indexed CHW at the source). */
    static void cd_transform_hwc3_u8(const uint8_t* src, ptrdiff_t H, ptrdiff_t W,
                                     ptrdiff_t h_off, ptrdiff_t w_off, ptrdiff_t h_out,
                                     ptrdiff_t w_out, int mirror, int mean_kind, const float* mean,
                                     const float* mean_values, float scale, float* out) {
        float tmp[3 * CD_ROW_CHUNK];
        ptrdiff_t h, k, len, c;
        const ptrdiff_t plane = h_out * w_out, mplane = H * W;
    #ifdef CD_HAVE_VBMI_KERNEL
        if (cd_cpu_has_vbmi()) {
            cd_transform_hwc3_u8_vbmi(src, H, W, h_off, w_off, h_out, w_out, mirror, mean_kind, mean,
                                      mean_values, scale, out);
            return;
        }
    #endif
        for (h = 0; h < h_out; h++) {
            const ptrdiff_t sh = h_off + h;
            const uint8_t* srow = src + (sh * W + w_off) * 3;
            const float* m0 = mean_kind == 1 ? mean + sh * W + w_off : NULL;
            float* o0 = out + h * w_out;
            for (k = 0; k < w_out; k += len) {
                len = w_out - k < CD_ROW_CHUNK ? w_out - k : CD_ROW_CHUNK;
                const float* mk = m0 ? m0 + k : NULL;
                if (!mirror) {
                    cd_row_hwc3(srow + 3 * k, mk, mk ? mk + mplane : NULL, mk ? mk + 2 * mplane : NULL,
                                mean_values, mean_kind == 2, scale, o0 + k, o0 + plane + k,
                                o0 + 2 * plane + k, len);
                } else {
                    cd_row_hwc3(srow + 3 * k, mk, mk ? mk + mplane : NULL, mk ? mk + 2 * mplane : NULL,
                                mean_values, mean_kind == 2, scale, tmp, tmp + CD_ROW_CHUNK,
                                tmp + 2 * CD_ROW_CHUNK, len);
                    for (c = 0; c < 3; c++)
                        cd_reverse_copy(tmp + c * CD_ROW_CHUNK, o0 + c * plane + w_out - k - len, len);
                }
            }
        }
    }
    """
    void cd_transform_chw_u8(const uint8_t* src, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t h_off, Py_ssize_t w_off, Py_ssize_t h_out,
                             Py_ssize_t w_out, int mirror, int mean_kind, const float* mean,
                             const float* mean_values, float scale, float* out) nogil
    void cd_transform_hwc3_u8(const uint8_t* src, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t h_off, Py_ssize_t w_off, Py_ssize_t h_out,
                              Py_ssize_t w_out, int mirror, int mean_kind, const float* mean,
                              const float* mean_values, float scale, float* out) nogil


cdef inline void transform_chw_u8_fast(const uint8_t* src, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                                       Py_ssize_t h_off, Py_ssize_t w_off, Py_ssize_t h_out,
                                       Py_ssize_t w_out, bint mirror, int mean_kind, const float* mean,
                                       const float* mean_values, float scale, float* out) noexcept nogil:
    """The common float32 case for raw uint8 records (SIMD row kernels above)."""
    cd_transform_chw_u8(src, C, H, W, h_off, w_off, h_out, w_out, mirror, mean_kind, mean,
                        mean_values, scale, out)


cdef class TransformParams:
    """What the kernels need besides the records: the geometry and Caffe's transform_param.

    ``C, H, W``: the shape every record of the batch has (H and W may vary when
    ``crop`` is set); ``crop`` (0: none), ``random_crop`` (TRAIN) and ``mirror``;
    ``scale``; ``mean``: the (C, H, W) mean file or None; ``mean_values``: empty,
    one value (replicated over C, as Caffe does) or C values.
    """
    cdef readonly Py_ssize_t C, H, W, crop, mean_c, mean_h, mean_w
    cdef readonly bint random_crop, mirror
    cdef readonly double scale
    cdef readonly object mean_flat, mean_values  # float32 arrays that own what the pointers see
    cdef int mean_kind
    cdef const float* mean_p
    cdef const float* mv_p

    def __init__(self, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t crop=0,
                 bint random_crop=False, bint mirror=False, double scale=1.0, mean=None,
                 mean_values=()):
        cdef const float[::1] view
        self.C, self.H, self.W, self.crop = C, H, W, crop
        self.random_crop, self.mirror, self.scale = random_crop, mirror, scale
        self.mean_c = self.mean_h = self.mean_w = 0
        self.mean_p = self.mv_p = NULL
        self.mean_kind = MEAN_NONE
        if mean is not None:
            arr = np.ascontiguousarray(mean, dtype=np.float32)
            if arr.ndim != 3:
                raise ValueError(f"mean must be (C, H, W), got shape {arr.shape}")
            self.mean_c, self.mean_h, self.mean_w = arr.shape[0], arr.shape[1], arr.shape[2]
            self.mean_flat = arr.reshape(-1)
            if self.mean_flat.shape[0]:
                view = self.mean_flat
                self.mean_p = &view[0]
                self.mean_kind = MEAN_FILE
        else:
            self.mean_flat = np.zeros(0, dtype=np.float32)
        values = np.ascontiguousarray(mean_values, dtype=np.float32).reshape(-1)
        if values.shape[0] == 1 and C > 1:
            values = np.repeat(values, C)  # Caffe replicates a single mean_value
        self.mean_values = values
        if values.shape[0] and self.mean_kind == MEAN_NONE:
            view = values
            self.mv_p = &view[0]
            self.mean_kind = MEAN_VALUES


def transform_into(const uint8_t[::1] src, int layout, TransformParams tp,
                   Py_ssize_t h_off, Py_ssize_t w_off, bint mirror, out_t[:, :, ::1] out):
    """Transform one record (already validated by the caller) into ``out``.

    ``src`` starts at the record's pixels; ``tp`` holds the record's own C, H, W
    (its mean, when set, has that shape).  The window and mirror flag are given.
    """
    cdef Py_ssize_t C = tp.C, H = tp.H, W = tp.W
    cdef int mean_kind = tp.mean_kind
    cdef const float* mean_p = tp.mean_p
    cdef const float* mv_p = tp.mv_p
    cdef Py_ssize_t h_out = out.shape[1], w_out = out.shape[2]
    cdef out_t scale_t = <out_t>(<float>tp.scale) if out_t is float else <out_t>tp.scale
    with nogil:
        if out_t is float and layout == 0:
            transform_chw_u8_fast(&src[0], C, H, W, h_off, w_off, h_out, w_out, mirror,
                                  mean_kind, mean_p, mv_p, scale_t, &out[0, 0, 0])
        elif out_t is float and layout == 3 and C == 3:
            cd_transform_hwc3_u8(&src[0], H, W, h_off, w_off, h_out, w_out, mirror,
                                 mean_kind, mean_p, mv_p, scale_t, &out[0, 0, 0])
        else:
            transform_one(&src[0], layout, C, H, W, h_off, w_off, h_out, w_out, mirror,
                          mean_kind, mean_p, mv_p, scale_t, &out[0, 0, 0])


cdef inline bint crop_window(const uint32_t[:, ::1] draws, Py_ssize_t i, Py_ssize_t H, Py_ssize_t W,
                             Py_ssize_t crop, bint random_crop, bint use_mirror,
                             Py_ssize_t* h_off, Py_ssize_t* w_off) noexcept nogil:
    """Caffe's per-record window from the raw draws: ``Rand(n) = draw % n``, random in
    TRAIN, centred (floor) in TEST.  Returns the mirror flag."""
    if crop:
        if random_crop:
            h_off[0] = draws[i, 1] % (H - crop + 1)
            w_off[0] = draws[i, 2] % (W - crop + 1)
        else:
            h_off[0] = (H - crop) // 2
            w_off[0] = (W - crop) // 2
    else:
        h_off[0] = 0
        w_off[0] = 0
    return use_mirror and (draws[i, 0] % 2) != 0


def transform_raw_batch(list values, Py_ssize_t start, Py_ssize_t stop, TransformParams tp,
                        const uint32_t[:, ::1] draws, out_t[:, :, :, ::1] out, out_t[::1] labels):
    """Fast path over raw (non-encoded) records ``values[start:stop]``.

    Fills ``out[i]`` and ``labels[i]`` for each record whose header is exactly
    ``tp``'s (C, H, W) with uint8 ``data`` or contiguous float_data.  Stops at
    the first record that needs the general path (encoded, other size, error)
    and returns its index into ``values``; returns ``stop`` when all were done.
    ``draws[i]`` holds the raw 32-bit draws (mirror, h, w) for record i: the
    offsets are Caffe's ``Rand(n) = draw % n``.
    """
    cdef DatumView d
    cdef int err, layout
    cdef Py_ssize_t i, n, h_off, w_off, px_off
    cdef const uint8_t[::1] buf
    cdef const uint8_t* p
    cdef bint mirror
    cdef Py_ssize_t C = tp.C, H = tp.H, W = tp.W, crop = tp.crop
    cdef bint random_crop = tp.random_crop, use_mirror = tp.mirror
    cdef int mean_kind = tp.mean_kind
    cdef const float* mean_p = tp.mean_p
    cdef const float* mv_p = tp.mv_p
    cdef Py_ssize_t h_out = out.shape[2], w_out = out.shape[3]
    cdef out_t scale_t = <out_t>(<float>tp.scale) if out_t is float else <out_t>tp.scale
    for i in range(start, stop):
        buf = values[i]
        n = buf.shape[0]
        if n == 0:
            return i
        p = &buf[0]
        with nogil:
            err = parse_datum(p, n, &d)
        if err or d.encoded or d.channels != C or d.height != H or d.width != W:
            return i
        if d.data_len > 0:
            if d.data_len != C * H * W:
                return i
            layout = 0
            px_off = d.data_off
        elif d.float_layout == FLOAT_PACKED or d.float_layout == FLOAT_UNPACKED:
            if d.float_count != C * H * W:
                return i
            layout = 1 if d.float_layout == FLOAT_PACKED else 2
            px_off = d.float_off
        else:
            return i
        mirror = crop_window(draws, i, H, W, crop, random_crop, use_mirror, &h_off, &w_off)
        with nogil:
            if out_t is float and layout == 0:
                transform_chw_u8_fast(p + px_off, C, H, W, h_off, w_off, h_out, w_out, mirror,
                                      mean_kind, mean_p, mv_p, scale_t, &out[i, 0, 0, 0])
            else:
                transform_one(p + px_off, layout, C, H, W, h_off, w_off, h_out, w_out, mirror,
                              mean_kind, mean_p, mv_p, scale_t, &out[i, 0, 0, 0])
        labels[i] = <out_t>d.label
    return stop


# ---------------------------------------------------------------------------
# LMDB records by address: one nogil pass over a whole batch

def resolve_values(object get, list keys, const int64_t[::1] records, int64_t[::1] addr,
                   int64_t[::1] size):
    """Fill ``addr[r]``/``size[r]`` for each ``r`` in ``records`` not resolved yet (addr 0).

    ``get(key)`` must return a buffer that stays valid, at the same address,
    for as long as the caller keeps ``addr`` (an LMDB value read with
    ``buffers=True`` from a read-only environment that stays open).  Returns
    the position in ``records`` of the first record whose ``get`` gave None,
    or -1.  Empty values are stored as size 0 with a non-zero sentinel address.
    """
    cdef Py_ssize_t i, r, n = records.shape[0]
    cdef const uint8_t[::1] buf
    for i in range(n):
        r = records[i]
        if addr[r] != 0:
            continue
        value = get(keys[r])
        if value is None:
            return i
        buf = value
        if buf.shape[0] == 0:
            size[r] = 0
            addr[r] = 1
        else:
            size[r] = buf.shape[0]
            addr[r] = <int64_t><size_t>&buf[0]
    return -1


def transform_raw_records(const int64_t[::1] records, const int64_t[::1] addr,
                          const int64_t[::1] size, Py_ssize_t start, Py_ssize_t stop,
                          TransformParams tp, const uint32_t[:, ::1] draws,
                          out_t[:, :, :, ::1] out, out_t[::1] labels):
    """``transform_raw_batch`` over resolved record addresses, in one nogil loop.

    Item ``i`` is record ``records[i]`` at ``addr``/``size`` (see
    ``resolve_values``).  Stops at the first item that needs the general path
    (encoded, other size, float runs, corrupt) and returns its index; returns
    ``stop`` when all were done.
    """
    cdef DatumView d
    cdef int err, layout
    cdef Py_ssize_t i, r, n, h_off, w_off, px_off
    cdef const uint8_t* p
    cdef bint mirror
    cdef Py_ssize_t C = tp.C, H = tp.H, W = tp.W, crop = tp.crop
    cdef bint random_crop = tp.random_crop, use_mirror = tp.mirror
    cdef int mean_kind = tp.mean_kind
    cdef const float* mean_p = tp.mean_p
    cdef const float* mv_p = tp.mv_p
    cdef Py_ssize_t h_out = out.shape[2], w_out = out.shape[3]
    cdef out_t scale_t = <out_t>(<float>tp.scale) if out_t is float else <out_t>tp.scale
    cdef Py_ssize_t result = stop
    with nogil:
        for i in range(start, stop):
            r = records[i]
            n = size[r]
            if n <= 0 or addr[r] == 0:
                result = i
                break
            p = <const uint8_t*><size_t>addr[r]
            err = parse_datum(p, n, &d)
            if err or d.encoded or d.channels != C or d.height != H or d.width != W:
                result = i
                break
            if d.data_len > 0:
                if d.data_len != C * H * W:
                    result = i
                    break
                layout = 0
                px_off = d.data_off
            elif d.float_layout == FLOAT_PACKED or d.float_layout == FLOAT_UNPACKED:
                if d.float_count != C * H * W:
                    result = i
                    break
                layout = 1 if d.float_layout == FLOAT_PACKED else 2
                px_off = d.float_off
            else:
                result = i
                break
            mirror = crop_window(draws, i, H, W, crop, random_crop, use_mirror, &h_off, &w_off)
            if out_t is float and layout == 0:
                transform_chw_u8_fast(p + px_off, C, H, W, h_off, w_off, h_out, w_out, mirror,
                                      mean_kind, mean_p, mv_p, scale_t, &out[i, 0, 0, 0])
            else:
                transform_one(p + px_off, layout, C, H, W, h_off, w_off, h_out, w_out, mirror,
                              mean_kind, mean_p, mv_p, scale_t, &out[i, 0, 0, 0])
            labels[i] = <out_t>d.label
    return result


# ---------------------------------------------------------------------------
# Encoded images (Datums by address, ImageData files): decode + fused transform.
# cv2 releases the GIL while it decodes; everything else here is a few C
# checks, so a worker holds the GIL for microseconds per image.

from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.buffer cimport PyBUF_READ
from posix.fcntl cimport open as posix_open, O_NONBLOCK, O_RDONLY
from posix.unistd cimport read as posix_read, close as posix_close
from posix.stat cimport S_ISREG, struct_stat, fstat

cdef extern from "fcntl.h":
    const int O_CLOEXEC


cdef inline uint32_t be32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline int64_t le32_abs(const uint8_t* p) noexcept nogil:
    cdef int32_t v = <int32_t>((<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0])
    return -<int64_t>v if v < 0 else <int64_t>v


cdef bint jpeg_size(const uint8_t* p, Py_ssize_t n, int64_t* height, int64_t* width) noexcept nogil:
    """The frame size of a JPEG's first SOF segment, walking the segments before the scan."""
    cdef Py_ssize_t pos = 2
    cdef uint8_t marker
    while pos + 4 <= n:
        if p[pos] != 0xFF:
            return False
        marker = p[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            pos += 2
            continue
        if marker == 0xD9 or marker == 0xDA:  # end of image, start of scan: no frame header before
            return False
        if 0xC0 <= marker <= 0xCF and marker != 0xC4 and marker != 0xC8 and marker != 0xCC:
            if pos + 9 > n:  # SOF0..15 are frames; DHT, JPG and DAC are not
                return False
            height[0] = (p[pos + 5] << 8) | p[pos + 6]
            width[0] = (p[pos + 7] << 8) | p[pos + 8]
            return True
        pos += 2 + ((p[pos + 2] << 8) | p[pos + 3])
    return False


cdef bint header_size(const uint8_t* p, Py_ssize_t n, int64_t* height, int64_t* width) noexcept nogil:
    """(height, width) from a PNG, JPEG or BMP header; False for another format or one cut short."""
    if n >= 24 and memcmp(p, b"\x89PNG\r\n\x1a\n", 8) == 0 and memcmp(p + 12, b"IHDR", 4) == 0:
        width[0] = be32(p + 16)
        height[0] = be32(p + 20)
        return True
    if n >= 26 and p[0] == 0x42 and p[1] == 0x4D:  # "BM"; a negative height is a top-down BMP
        width[0] = le32_abs(p + 18)
        height[0] = le32_abs(p + 22)
        return True
    if n >= 2 and p[0] == 0xFF and p[1] == 0xD8:
        return jpeg_size(p, n, height, width)
    return False


def image_header_size(const uint8_t[::1] buf):
    """(height, width) claimed by a PNG, JPEG or BMP header, or None: read before decoding, so
    that an image claiming more pixels than allowed is refused without allocating them."""
    cdef int64_t height = 0, width = 0
    if buf.shape[0] == 0 or not header_size(&buf[0], buf.shape[0], &height, &width):
        return None
    return height, width


cdef object decode_checked(object payload, const uint8_t* p, Py_ssize_t n, object imdecode, int flag,
                           int64_t max_pixels):
    """``imdecode(payload, flag)`` as an 8-bit C-contiguous 2-D/3-D array, or None.

    None (over ``max_pixels``, undecodable, an OpenCV error, another depth)
    sends the record to the general path, which decodes it again to raise or
    skip with the right message: an error costs two decodes, a good image one.
    """
    cdef int64_t height = 0, width = 0
    cdef bint known
    with nogil:
        known = header_size(p, n, &height, &width)
    if known and height * width > max_pixels:
        return None
    try:
        return uint8_image_or_none(imdecode(payload, flag))
    except Exception:
        return None


cdef object uint8_image_or_none(object result):
    """``result`` if it is an 8-bit C-contiguous 2-D or 3-D array (what the kernels read), else None."""
    if not isinstance(result, np.ndarray):
        return None
    img = <cnp.ndarray>result
    if img.dtype != np.uint8 or not cnp.PyArray_IS_C_CONTIGUOUS(img) or img.ndim not in (2, 3):
        return None
    return img


cdef bint transform_decoded(object image, TransformParams tp, const uint32_t[:, ::1] draws,
                            Py_ssize_t i, out_t[:, :, :, ::1] out) except -1:
    """Check a decoded HWC image against the batch and transform it into ``out[i]``.

    The checks are ``BatchAssembler.check``'s (channels, size vs batch and
    crop, mean shape); False, with nothing written, when one fails.  ``image``
    comes from ``decode_checked`` (or a resize of it): a uint8 C-contiguous array.
    """
    cdef cnp.ndarray img = image
    cdef Py_ssize_t h = img.shape[0], w = img.shape[1]
    cdef Py_ssize_t c = img.shape[2] if img.ndim == 3 else 1
    cdef Py_ssize_t crop = tp.crop, h_off, w_off
    cdef Py_ssize_t h_out = out.shape[2], w_out = out.shape[3]
    cdef out_t scale_t = <out_t>(<float>tp.scale) if out_t is float else <out_t>tp.scale
    cdef const uint8_t* pix = <const uint8_t*>cnp.PyArray_DATA(img)
    cdef bint mirror
    if c != tp.C or (not crop and (h != tp.H or w != tp.W)) or (crop and (h < crop or w < crop)):
        return False
    if tp.mean_kind == MEAN_FILE and (tp.mean_c != c or tp.mean_h != h or tp.mean_w != w):
        return False
    if tp.mean_kind == MEAN_VALUES and tp.mean_values.shape[0] != c:
        return False
    mirror = crop_window(draws, i, h, w, crop, tp.random_crop, tp.mirror, &h_off, &w_off)
    with nogil:
        if out_t is float and c == 3:
            cd_transform_hwc3_u8(pix, h, w, h_off, w_off, h_out, w_out, mirror,
                                 tp.mean_kind, tp.mean_p, tp.mv_p, scale_t, &out[i, 0, 0, 0])
        else:
            transform_one(pix, 3, c, h, w, h_off, w_off, h_out, w_out, mirror,
                          tp.mean_kind, tp.mean_p, tp.mv_p, scale_t, &out[i, 0, 0, 0])
    return True


def transform_encoded_records(const int64_t[::1] records, const int64_t[::1] addr,
                              const int64_t[::1] size, Py_ssize_t start, Py_ssize_t stop,
                              object imdecode, int flag, int64_t max_pixels, TransformParams tp,
                              const uint32_t[:, ::1] draws, out_t[:, :, :, ::1] out, out_t[::1] labels):
    """Encoded records ``start..stop`` (see ``resolve_values``): decode and transform.

    ``imdecode(buffer, flag)`` is cv2.imdecode.  Every check of the general
    path is made here too (pixel limit, 8-bit, channels, size vs batch and
    crop, mean shape); the first record that fails one, or is not encoded,
    stops the loop and its index is returned, so that the caller's general
    path can handle it or raise its error.  Returns ``stop`` when all were done.
    """
    cdef DatumView d
    cdef int err
    cdef Py_ssize_t i, r, n
    cdef const uint8_t* p
    for i in range(start, stop):
        r = records[i]
        n = size[r]
        if n <= 0 or addr[r] == 0:
            return i
        p = <const uint8_t*><size_t>addr[r]
        with nogil:
            err = parse_datum(p, n, &d)
        if err or not d.encoded or d.data_len <= 0:
            return i
        payload = np.frombuffer(PyMemoryView_FromMemory(<char*>(p + d.data_off), d.data_len,
                                                        PyBUF_READ), dtype=np.uint8)
        img = decode_checked(payload, p + d.data_off, d.data_len, imdecode, flag, max_pixels)
        if img is None or not transform_decoded(img, tp, draws, i, out):
            return i
        labels[i] = <out_t>d.label
    return stop


cdef Py_ssize_t read_whole_file(const char* path, uint8_t* buf, Py_ssize_t capacity,
                                Py_ssize_t* file_size) noexcept nogil:
    """Read regular file ``path`` into ``buf``: its length, or -1 (unopenable, not a regular
    file, a read error, or over ``capacity``: then ``file_size`` says how much room it needs).

    Opened non-blocking: a FIFO in a list must not hang a worker (it is refused
    by the fstat check; the general path then names it).
    """
    cdef struct_stat st
    cdef Py_ssize_t total = 0, got
    cdef int fd = posix_open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
    file_size[0] = 0
    if fd < 0:
        return -1
    if fstat(fd, &st) != 0 or not S_ISREG(st.st_mode):
        posix_close(fd)
        return -1
    file_size[0] = st.st_size
    while total < capacity:
        got = posix_read(fd, buf + total, capacity - total)
        if got < 0:
            posix_close(fd)
            return -1
        if got == 0:
            break
        total += got
    posix_close(fd)
    return -1 if total == capacity else total  # a full buffer: the file is bigger than fstat said


def transform_image_files(list paths, const int64_t[::1] file_labels, const int64_t[::1] records,
                          Py_ssize_t start, Py_ssize_t stop, object imdecode, int flag,
                          int64_t max_pixels, object resize, TransformParams tp,
                          const uint32_t[:, ::1] draws, out_t[:, :, :, ::1] out, out_t[::1] labels):
    """ImageData items ``start..stop``: read file ``paths[records[i]]`` (bytes), decode, transform.

    ``resize(image)`` (None: no resize) is the layer's new_height/new_width
    resize.  As ``transform_encoded_records``: the first item that cannot be
    done here (an unreadable file, or any check failing) stops the loop and
    its index is returned for the general path; ``stop`` when all were done.
    """
    cdef Py_ssize_t i, r, n, file_size = 0
    cdef Py_ssize_t capacity = 1 << 18
    cdef const char* path
    cdef cnp.ndarray buf = np.empty(capacity, dtype=np.uint8)
    for i in range(start, stop):
        r = records[i]
        path_bytes = <bytes>paths[r]
        path = path_bytes
        if strlen(path) != len(path_bytes):  # a NUL inside: the general path refuses it
            return i
        with nogil:
            n = read_whole_file(path, <uint8_t*>cnp.PyArray_DATA(buf), capacity, &file_size)
        if n < 0 and file_size >= capacity:  # bigger than the buffer: grow it and read again
            capacity = file_size + file_size // 4 + 1
            buf = np.empty(capacity, dtype=np.uint8)
            with nogil:
                n = read_whole_file(path, <uint8_t*>cnp.PyArray_DATA(buf), capacity, &file_size)
        if n <= 0:
            return i
        img = decode_checked(buf[:n], <const uint8_t*>cnp.PyArray_DATA(buf), n, imdecode, flag,
                             max_pixels)
        if img is not None and resize is not None:
            img = uint8_image_or_none(resize(img))
        if img is None or not transform_decoded(img, tp, draws, i, out):
            return i
        labels[i] = <out_t>file_labels[r]
    return stop
