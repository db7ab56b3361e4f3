"""Protobuf wire-format encoding for the writers that build messages from array bytes.

Going through protobuf's repeated-float containers is slow for big blobs, so
mean files and .caffemodel blobs are written field by field; these are the
two encodings they need.
"""


def varint(value):
    """``value`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number, payload):
    """Field ``field_number`` of wire type 2 (bytes, a message, a packed array) holding ``payload``."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload
