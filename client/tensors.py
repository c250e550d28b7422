"""numpy arrays to and from TensorProto, without TensorFlow's Python API.

Requests carry numbers in `tensor_content` (raw little-endian bytes, the compact form);
responses from tensorflow_model_server use the typed repeated fields (`float_val`, ...),
so both are read.
"""

from __future__ import annotations

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# dtype enum -> (numpy dtype, repeated field the server fills)
_TYPES: dict[int, tuple[np.dtype, str]] = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
    types_pb2.DT_STRING: (np.dtype(object), "string_val"),
}
_ENUMS = {dtype: enum for enum, (dtype, _) in _TYPES.items() if dtype.kind != "O"}


def numpy_dtype(enum: int) -> np.dtype | None:
    """The numpy dtype for a TensorFlow dtype enum; None where the client cannot send it."""
    return _TYPES[enum][0] if enum in _TYPES else None


def dtype_name(enum: int) -> str:
    """A dtype enum's name as TensorFlow writes it (DT_FLOAT), or its number if unknown."""
    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return str(enum)


def to_proto(value: np.ndarray | bytes) -> tensor_pb2.TensorProto:
    """A TensorProto of `value`'s own dtype: bytes become a DT_STRING scalar."""
    if isinstance(value, bytes):
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[value])
    array = np.asarray(value)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape])
    if array.dtype == object:
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=list(array.ravel()))
    little = array.dtype.newbyteorder("<")
    if little not in _ENUMS:
        raise TypeError(f"no TensorProto dtype for numpy {array.dtype}")
    return tensor_pb2.TensorProto(
        dtype=_ENUMS[little], tensor_shape=shape, tensor_content=np.ascontiguousarray(array, little).tobytes()
    )


def to_array(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The array a TensorProto holds, from `tensor_content` or its typed field.

    As in TensorFlow, a typed field shorter than the shape is padded with its last value.
    """
    if proto.dtype not in _TYPES:
        raise TypeError(f"unsupported tensor dtype {types_pb2.DataType.Name(proto.dtype)}")
    dtype, field = _TYPES[proto.dtype]
    shape = [d.size for d in proto.tensor_shape.dim]
    count = int(np.prod(shape))
    if proto.tensor_content:
        if dtype.kind == "O":
            raise TypeError("string tensors packed in tensor_content are not supported")
        return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    if field == "float_val" and len(proto.float_val) > _FAST_FROM:
        values = np.frombuffer(_packed_field(proto.SerializeToString(), _FLOAT_VAL), "<f4").astype(np.float32)
    else:
        values = np.array(list(getattr(proto, field)) if dtype.kind == "O" else getattr(proto, field), dtype=dtype)
    if 0 < values.size < count:
        values = np.pad(values, (0, count - values.size), mode="edge")
    elif values.size == 0:
        values = np.zeros(count, dtype) if dtype.kind != "O" else np.full(count, b"", dtype)
    return values.reshape(shape)


# Tens of MB of float_val (the server's form for outputs, such as a chunked run's state) take seconds
# to go through Python floats one by one; their wire form is the packed little-endian array itself.
_FLOAT_VAL = 5  # TensorProto.float_val's field number
_FAST_FROM = 4096  # values; below this the plain way is as fast


def float_val_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A DT_FLOAT TensorProto with its values in `float_val`, as tensorflow_model_server fills it,
    built from the packed bytes."""
    array = np.asarray(array, "<f4")  # tobytes() is C order whatever the layout; 0-d stays 0-d
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in array.shape])
    header = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape).SerializeToString()
    payload = array.tobytes()
    field = _varint(_FLOAT_VAL << 3 | 2) + _varint(len(payload))
    return tensor_pb2.TensorProto.FromString(header + field + payload)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at


def _packed_field(data: bytes, number: int) -> bytes:
    """The payload of the packed repeated field `number` in a serialized message (its top level)."""
    at, parts = 0, []
    while at < len(data):
        key, at = _read_varint(data, at)
        wire = key & 7
        if wire == 0:
            _, at = _read_varint(data, at)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            length, at = _read_varint(data, at)
            if key >> 3 == number:
                parts.append(data[at : at + length])
            at += length
        else:
            raise TypeError(f"unexpected wire type {wire} in a TensorProto")
    return b"".join(parts)
