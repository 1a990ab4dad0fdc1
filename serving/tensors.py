"""TensorProto <-> numpy, with the validation a server needs before it trusts a request.

`ndarray_from_proto` follows TensorFlow's `Tensor::FromProto`: `tensor_content` holds the raw
little-endian bytes, otherwise the typed `*_val` field holds the values (none: all zeros /
empty strings; fewer than the shape needs: the last value repeats). Unlike a bare
`tf.make_ndarray`, it checks every size before allocating, so a request claiming a shape
of 2**40 elements is refused instead of exhausting memory.

`ndarray_to_proto` writes typed fields like TF Serving's Predict responses
(`Tensor::AsProtoField`), or `tensor_content` for numeric request tensors (compact, the way
`tf.make_tensor_proto` sends them).
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# A request tensor may describe at most this many bytes once decoded: far above what any
# gRPC message carries, far below what would take the server down.
MAX_TENSOR_BYTES = 1 << 30


class TensorProtoError(ValueError):
    """A TensorProto that cannot be turned into a tensor; the text says why."""


def _bfloat16():
    import tensorflow as tf

    return np.dtype(tf.bfloat16.as_numpy_dtype)


# dtype enum -> (numpy dtype or a factory for it, typed value field, TF's DataTypeString).
_DTYPES = {
    types_pb2.DT_FLOAT: (np.float32, "float_val", "float"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val", "double"),
    types_pb2.DT_INT32: (np.int32, "int_val", "int32"),
    types_pb2.DT_UINT8: (np.uint8, "int_val", "uint8"),
    types_pb2.DT_INT16: (np.int16, "int_val", "int16"),
    types_pb2.DT_INT8: (np.int8, "int_val", "int8"),
    types_pb2.DT_STRING: (object, "string_val", "string"),
    types_pb2.DT_COMPLEX64: (np.complex64, "scomplex_val", "complex64"),
    types_pb2.DT_INT64: (np.int64, "int64_val", "int64"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val", "bool"),
    types_pb2.DT_UINT16: (np.uint16, "int_val", "uint16"),
    types_pb2.DT_COMPLEX128: (np.complex128, "dcomplex_val", "complex128"),
    types_pb2.DT_HALF: (np.float16, "half_val", "half"),
    types_pb2.DT_BFLOAT16: (_bfloat16, "half_val", "bfloat16"),
    types_pb2.DT_UINT32: (np.uint32, "uint32_val", "uint32"),
    types_pb2.DT_UINT64: (np.uint64, "uint64_val", "uint64"),
}

_DTYPE_OF_NUMPY = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.int16): types_pb2.DT_INT16,
    np.dtype(np.int8): types_pb2.DT_INT8,
    np.dtype(np.complex64): types_pb2.DT_COMPLEX64,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
    np.dtype(np.uint16): types_pb2.DT_UINT16,
    np.dtype(np.complex128): types_pb2.DT_COMPLEX128,
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.uint32): types_pb2.DT_UINT32,
    np.dtype(np.uint64): types_pb2.DT_UINT64,
}


def dtype_string(dtype_enum):
    """TensorFlow's DataTypeString for a DataType enum: "float", "int64", "string", ..."""
    entry = _DTYPES.get(dtype_enum)
    if entry is not None:
        return entry[2]
    name = types_pb2.DataType.Name(dtype_enum) if dtype_enum in types_pb2.DataType.values() else ""
    return name[3:].lower() if name.startswith("DT_") else f"unknown dtype {dtype_enum}"


def numpy_dtype_of(dtype_enum):
    """The numpy dtype holding values of a DataType enum (object for strings)."""
    entry = _DTYPES.get(dtype_enum)
    if entry is None:
        raise TensorProtoError(f"unsupported dtype {dtype_string(dtype_enum)}")
    np_type = entry[0]
    return np_type() if np_type is _bfloat16 else np.dtype(np_type)


def dtype_of_array(array):
    """The DataType enum for a numpy array: strings / bytes / objects are DT_STRING."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    dtype = _DTYPE_OF_NUMPY.get(array.dtype)
    if dtype is None and array.dtype == numpy_dtype_of(types_pb2.DT_BFLOAT16):
        dtype = types_pb2.DT_BFLOAT16
    if dtype is None:
        raise TensorProtoError(f"numpy dtype {array.dtype} has no TensorFlow equivalent")
    return dtype


def shape_of(shape_proto):
    """A TensorShapeProto as a list of dims (-1 unknown), or None when the rank is unknown."""
    if shape_proto.unknown_rank:
        return None
    return [dim.size for dim in shape_proto.dim]


def shape_string(shape):
    """Shape list as TF Serving prints it: [-1,3]; [?] for unknown rank."""
    return "[?]" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"


def _decoded_shape(proto):
    if proto.tensor_shape.unknown_rank:
        raise TensorProtoError("the shape has unknown rank")
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise TensorProtoError(f"the shape {shape_string(dims)} has a negative dimension")
    return dims


def ndarray_from_proto(proto, max_bytes=MAX_TENSOR_BYTES):
    """Decodes a TensorProto into a numpy array (object array of bytes for DT_STRING).

    Raises TensorProtoError when the dtype is unsupported, the shape is invalid, the
    content does not match the shape, or the tensor would exceed `max_bytes`.
    """
    np_dtype = numpy_dtype_of(proto.dtype)
    dims = _decoded_shape(proto)
    num_elements = int(np.prod(dims, dtype=object)) if dims else 1
    item_bytes = 8 if np_dtype == object else np_dtype.itemsize
    if num_elements * item_bytes > max_bytes:
        raise TensorProtoError(
            f"the shape {shape_string(dims)} holds {num_elements} elements, more than the "
            f"{max_bytes} bytes a request tensor may have")
    if proto.tensor_content:
        if np_dtype == object:
            raise TensorProtoError("a DT_STRING tensor cannot use tensor_content")
        expected = num_elements * np_dtype.itemsize
        if len(proto.tensor_content) != expected:
            raise TensorProtoError(
                f"tensor_content has {len(proto.tensor_content)} bytes, but shape "
                f"{shape_string(dims)} of {dtype_string(proto.dtype)} needs {expected}")
        flat = np.frombuffer(proto.tensor_content, dtype=np_dtype.newbyteorder("<"))
        return flat.astype(np_dtype).reshape(dims)
    values = _typed_values(proto, np_dtype)
    if len(values) > num_elements:
        raise TensorProtoError(
            f"{len(values)} values given for shape {shape_string(dims)} "
            f"({num_elements} elements)")
    if np_dtype == object:
        flat = np.empty(num_elements, dtype=object)
        flat[:] = b""
        flat[: len(values)] = values
    else:
        flat = np.zeros(num_elements, dtype=np_dtype)
        flat[: len(values)] = values
    if 0 < len(values) < num_elements:
        flat[len(values):] = flat[len(values) - 1]
    return flat.reshape(dims)


def _typed_values(proto, np_dtype):
    field = _DTYPES[proto.dtype][1]
    raw = getattr(proto, field)
    if field == "string_val":
        return list(raw)
    if field == "half_val":
        return np.asarray(raw, dtype=np.int64).astype(np.uint16).view(np_dtype)
    if field in ("scomplex_val", "dcomplex_val"):
        pairs = np.asarray(raw, dtype=np.float64)
        if len(pairs) % 2:
            raise TensorProtoError(f"{field} has an odd number of values")
        return (pairs[0::2] + 1j * pairs[1::2]).astype(np_dtype)
    if np_dtype.kind in "iu":
        # int_val carries int8..uint16 as int32; wrap like TF's static_cast does.
        return np.asarray(raw, dtype=np.int64).astype(np_dtype)
    return np.asarray(raw, dtype=np_dtype)


def _as_string_array(array):
    if array.dtype.kind == "U":
        return np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
    if array.dtype.kind == "O":
        def to_bytes(value):
            if isinstance(value, bytes):
                return value
            if isinstance(value, str):
                return value.encode("utf-8")
            raise TensorProtoError(
                f"a string tensor holds a {type(value).__name__} value ({value!r})")
        return np.vectorize(to_bytes, otypes=[object])(array) if array.size else array
    return array


def ndarray_to_proto(array, use_tensor_content=False):
    """Encodes a numpy array (or anything np.asarray accepts) as a TensorProto.

    Strings (str, bytes or object arrays of them) become DT_STRING `string_val`. Numbers
    go into the typed `*_val` field, or into `tensor_content` when `use_tensor_content`.
    """
    array = np.asarray(array)
    dtype = dtype_of_array(array)
    proto = tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(_as_string_array(array).ravel().tolist())
        return proto
    if use_tensor_content:
        proto.tensor_content = np.ascontiguousarray(
            array, dtype=array.dtype.newbyteorder("<")).tobytes()
        return proto
    field = _DTYPES[dtype][1]
    flat = array.ravel()
    if field == "half_val":
        getattr(proto, field).extend(flat.view(np.uint16).astype(np.int32).tolist())
    elif field in ("scomplex_val", "dcomplex_val"):
        interleaved = np.stack([flat.real, flat.imag], axis=-1).ravel()
        getattr(proto, field).extend(interleaved.tolist())
    else:
        getattr(proto, field).extend(flat.tolist())
    return proto
