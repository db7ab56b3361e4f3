# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""LevelDB's on-disk pieces that are read per record: Snappy blocks and block entries.

``leveldb_tables.py`` reads a LevelDB's table files with these instead of
through plyvel, whose bundled Snappy build spends about 40% of a W1 epoch
decompressing (issue 12).  Nothing here trusts its input: every read is
bounds-checked, and malformed bytes come back as ``ValueError`` with the
reason, never as an out-of-bounds access.

Formats (LevelDB 1.22 ``doc/table_format.md``, ``table/block.cc``; Snappy's
``format_description.txt``):

* a Snappy stream is a varint of the uncompressed length, then elements.  The
  low two bits of an element's tag byte give its kind: 0 a literal (length-1 in
  the upper six bits, or in the 1-4 bytes after them when those bits are
  60-63), 1 a copy of 4-11 bytes with an 11-bit offset, 2 a copy of 1-64 bytes
  with a 16-bit offset, 3 the same with a 32-bit offset.  A copy may overlap
  its own output (offset < length): it repeats a pattern.
* a block is its entries, then one uint32 per restart point, then their count.
  An entry is varint32 ``shared``, ``non_shared``, ``value_length``, the key's
  bytes after the ``shared`` bytes it has in common with the previous key, and
  the value.
"""
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

import numpy as np

cdef enum:
    OK = 0
    ERR_HEADER = 1
    ERR_TRUNCATED = 2
    ERR_OFFSET = 3
    ERR_OVERRUN = 4
    ERR_LENGTH = 5

SNAPPY_ERRORS = {
    ERR_HEADER: "bad uncompressed-length header",
    ERR_TRUNCATED: "the stream ends inside an element",
    ERR_OFFSET: "a copy refers to bytes before the start of the output",
    ERR_OVERRUN: "the elements produce more bytes than the header says",
    ERR_LENGTH: "the elements produce fewer bytes than the header says",
}

# Snappy's densest element makes 64 bytes from 3 (a 2-byte-offset copy), so a
# header claiming more than this many bytes per input byte is corrupt, and
# refusing it bounds the memory a corrupt block can ask for.
MAX_EXPANSION = 22


cdef inline int read_varint32(const uint8_t* p, Py_ssize_t n, Py_ssize_t* pos,
                              uint32_t* out) noexcept nogil:
    cdef uint32_t result = 0
    cdef int shift = 0
    cdef uint8_t b
    while shift <= 28:
        if pos[0] >= n:
            return ERR_TRUNCATED
        b = p[pos[0]]
        pos[0] += 1
        if shift == 28 and b >= 16:  # bits past 32, as Snappy's own parser refuses
            return ERR_HEADER
        result |= (<uint32_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = result
            return OK
        shift += 7
    return ERR_HEADER


cdef extern from *:
    """
    /* Snappy's elements, decoded with bounds checks on every read and write.

       Where at least 72 input and output bytes remain (and 8 are written), an
       element is decoded without a branch on its kind, as in Snappy's own
       decoder: a 256-entry table gives each tag its length, the high bits of a
       copy's offset and how many bytes follow the tag, and a literal of up to
       60 bytes or a copy from at least 8 bytes back moves whole 8-byte words
       (the excess is overwritten by the elements that follow).  A copy of a
       shorter pattern is doubled first.  Anything else, and the stream's last
       bytes, take the careful path, one element at a time.  W1's Snappy
       blocks hold one element per 6 output bytes, and this decodes them at
       about 9 ns an element (0.6-0.7 GB/s; plyvel's bundled Snappy: 0.2). */
    #include <stdint.h>
    #include <stddef.h>
    #include <string.h>

    enum { CD_LITERAL_FLAG = 1 << 15, CD_LONG_LITERAL_FLAG = 1 << 14 };
    static uint16_t cd_snappy_table[256];  /* length | offset high bits << 8 | extra << 11 | literal */

    static void cd_snappy_init(void) {
        for (int tag = 0; tag < 256; tag++) {
            uint16_t length = 0, high = 0, extra = 0, literal = 0;
            switch (tag & 3) {
                case 0:  /* lengths 61-64 mean: length-1 is in the next 1-4 bytes */
                    length = (tag >> 2) + 1;
                    literal = CD_LITERAL_FLAG | (length > 60 ? CD_LONG_LITERAL_FLAG : 0);
                    break;
                case 1: length = ((tag >> 2) & 7) + 4; high = (uint16_t)((tag >> 5) << 8); extra = 1; break;
                case 2: length = (tag >> 2) + 1; extra = 2; break;
                case 3: length = (tag >> 2) + 1; extra = 4; break;
            }
            cd_snappy_table[tag] = (uint16_t)(length | high | (extra << 11) | literal);
        }
    }

    static inline uint32_t cd_load32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }
    /* 8 bytes through a register: well-defined even where source and destination overlap */
    static inline void cd_move8(uint8_t* d, const uint8_t* s) { uint64_t v; memcpy(&v, s, 8); memcpy(d, &v, 8); }
    static inline uint32_t cd_load_le(const uint8_t* p, size_t nbytes) {  /* 1-4 bytes, little-endian */
        uint32_t v = 0;
        for (size_t k = 0; k < nbytes; k++) v |= (uint32_t)p[k] << (8 * k);
        return v;
    }

    /* One element at src[*ip], every read and write checked; 0 or an error code. */
    static int cd_snappy_element(const uint8_t* src, size_t n, size_t* ip_, uint8_t* dst, size_t size,
                                 size_t* op_) {
        size_t ip = *ip_, op = *op_;
        uint32_t tag = src[ip++];
        uint32_t entry = cd_snappy_table[tag];
        size_t length = entry & 0xff;
        if (entry & CD_LITERAL_FLAG) {
            if (length > 60) {
                size_t extra = length - 60;
                if (n - ip < extra) return 2;
                length = (size_t)cd_load_le(src + ip, extra) + 1;
                ip += extra;
            }
            if (n - ip < length) return 2;
            if (size - op < length) return 4;
            memcpy(dst + op, src + ip, length);
            *ip_ = ip + length;
            *op_ = op + length;
            return 0;
        }
        size_t extra = (entry >> 11) & 7;
        if (n - ip < extra) return 2;
        size_t offset = (entry & 0x700) + cd_load_le(src + ip, extra);
        ip += extra;
        if (offset == 0 || offset > op) return 3;
        if (size - op < length) return 4;
        uint8_t* d = dst + op;
        const uint8_t* from = d - offset;
        if (size - op >= length + 16) {
            /* A pattern shorter than 8 bytes is first doubled until it is not
               (each move is right in its first d - from bytes), then copied 8
               bytes at a time, as Snappy's IncrementalCopy does. */
            uint8_t* end = d + length;
            while (d - from < 8) { cd_move8(d, from); d += d - from; }
            for (; d < end; d += 8, from += 8) cd_move8(d, from);
        } else {
            for (size_t k = 0; k < length; k++) d[k] = from[k];  /* the output's last bytes */
        }
        *ip_ = ip;
        *op_ = op + length;
        return 0;
    }

    /* Decode src[ip:n] into exactly `size` bytes of dst; 0 or an error code (see SNAPPY_ERRORS). */
    static int cd_snappy_decode(const uint8_t* src, size_t n, size_t ip, uint8_t* dst, size_t size) {
        static const uint32_t mask[5] = {0, 0xff, 0xffff, 0xffffff, 0xffffffff};
        size_t op = 0;
        while (ip < n) {
            if (n - ip >= 72 && size - op >= 72 && op >= 8) {
                uint32_t entry = cd_snappy_table[src[ip]];
                size_t length = entry & 0xff, extra = (entry >> 11) & 7;
                size_t literal = (entry >> 15) & 1;
                size_t offset = (entry & 0x700) + (cd_load32(src + ip + 1) & mask[extra]);
                /* selected with masks, not branches: whether a tag is a literal
                   or a copy is what a branch predictor cannot guess */
                uintptr_t is_literal = (uintptr_t)0 - literal;
                const uint8_t* from = (const uint8_t*)((((uintptr_t)(src + ip + 1)) & is_literal)
                                                       | (((uintptr_t)(dst + op - offset)) & ~is_literal));
                /* a literal of up to 60 bytes, or a copy from 8 <= offset <= op
                   (one unsigned compare, as op >= 8 here) */
                size_t fast = ((entry & CD_LONG_LITERAL_FLAG) == 0) & (literal | ((offset - 8) <= (op - 8)));
                if (fast) {
                    uint8_t* d = dst + op;
                    cd_move8(d, from);
                    cd_move8(d + 8, from + 8);
                    for (size_t k = 16; k < length; k += 8) cd_move8(d + k, from + k);
                    op += length;
                    ip += 1 + extra + (length & is_literal);
                    continue;
                }
                if (!literal && offset != 0 && offset <= op) {
                    /* A pattern shorter than 8 bytes (a run of one colour): doubled
                       until it is not, each move being right in its first
                       d - from bytes, then copied 8 bytes at a time, as Snappy's
                       IncrementalCopy does.  Writes end before d + 72. */
                    uint8_t* d = dst + op;
                    uint8_t* end = d + length;
                    while (d - from < 8) { cd_move8(d, from); d += d - from; }
                    for (; d < end; d += 8, from += 8) cd_move8(d, from);
                    op += length;
                    ip += 1 + extra;
                    continue;
                }
            }
            int err = cd_snappy_element(src, n, &ip, dst, size, &op);
            if (err) return err;
        }
        return op == size ? 0 : 5;
    }
    """
    void cd_snappy_init() noexcept nogil
    int cd_snappy_decode(const uint8_t* src, size_t n, size_t ip, uint8_t* dst, size_t size) noexcept nogil
    uint32_t cd_load_le(const uint8_t* p, size_t nbytes) noexcept nogil

cd_snappy_init()


def snappy_uncompressed_length(const uint8_t[::1] src):
    """The length a Snappy stream's header declares.

    Raises ValueError when the header is malformed, or claims more than
    ``MAX_EXPANSION`` times the input (refused before anything is allocated).
    """
    cdef Py_ssize_t pos = 0, n = src.shape[0]
    cdef uint32_t size
    if read_varint32(&src[0] if n else NULL, n, &pos, &size) != OK or size > MAX_EXPANSION * n:
        raise ValueError(SNAPPY_ERRORS[ERR_HEADER])
    return size


def snappy_decompress_into(const uint8_t[::1] src, uint8_t[::1] dst):
    """Decompress ``src`` (one Snappy stream) into the start of ``dst``; returns its length.

    Raises ValueError naming what is wrong with a malformed stream, or when
    ``dst`` is too small (see ``snappy_uncompressed_length``).
    """
    cdef Py_ssize_t pos = 0, n = src.shape[0]
    cdef uint32_t size
    cdef int err
    cdef const uint8_t* p = &src[0] if n else NULL
    if read_varint32(p, n, &pos, &size) != OK or size > MAX_EXPANSION * n:
        raise ValueError(SNAPPY_ERRORS[ERR_HEADER])
    if size > dst.shape[0]:
        raise ValueError(f"the output needs {size} bytes, the buffer has {dst.shape[0]}")
    with nogil:
        err = cd_snappy_decode(p, n, pos, &dst[0] if size else NULL, size)
    if err != OK:
        raise ValueError(SNAPPY_ERRORS[err])
    return size


def snappy_decompress(const uint8_t[::1] src):
    """``src`` (one Snappy stream) decompressed, as a new bytearray (the reader reuses
    buffers through ``snappy_decompress_into``; this is for one-off use and tests)."""
    out = bytearray(snappy_uncompressed_length(src))
    snappy_decompress_into(src, out)
    return out


def block_entries(const uint8_t[::1] block):
    """The entries of one LevelDB block: ``(keys, value_offsets, value_lengths)``.

    Keys are the full (internal) keys, as bytes; values are located by their
    offset in ``block`` and length (int64 arrays).  Raises ValueError naming
    the first malformed entry.
    """
    cdef Py_ssize_t n = block.shape[0], pos = 0, limit, key_pos
    cdef uint32_t num_restarts, shared, non_shared, value_len
    cdef const uint8_t* p = &block[0] if n else NULL
    if n < 4:
        raise ValueError(f"block of {n} bytes is too short for its restart count")
    num_restarts = cd_load_le(p + n - 4, 4)
    if num_restarts > <uint32_t>((n - 4) // 4):
        raise ValueError(f"block of {n} bytes claims {num_restarts} restart points")
    limit = n - 4 * (<Py_ssize_t>num_restarts + 1)
    keys = []
    offsets = []
    lengths = []
    if num_restarts == 0:  # LevelDB reads such a block as empty (Block::NewIterator)
        limit = 0
    previous = b""
    while pos < limit:
        if (read_varint32(p, limit, &pos, &shared) != OK
                or read_varint32(p, limit, &pos, &non_shared) != OK
                or read_varint32(p, limit, &pos, &value_len) != OK):
            raise ValueError(f"entry {len(keys)}: truncated header at byte {pos}")
        if shared > <uint32_t>len(previous):
            raise ValueError(f"entry {len(keys)}: shares {shared} bytes with a {len(previous)}-byte key")
        if <Py_ssize_t>non_shared > limit - pos or <Py_ssize_t>value_len > limit - pos - non_shared:
            raise ValueError(f"entry {len(keys)}: key or value runs past the block's entries")
        key_pos = pos
        pos += non_shared
        key = previous[:shared] + (<const char*>p)[key_pos:pos]
        keys.append(key)
        offsets.append(pos)
        lengths.append(value_len)
        pos += value_len
        previous = key
    return keys, np.array(offsets, dtype=np.int64), np.array(lengths, dtype=np.int64)

