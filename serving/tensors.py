"""TensorProto <-> numpy for a server: TensorFlow's own converters behind a size guard.

`ndarray_from_proto` checks a request tensor against the limits before anything is allocated
(a 441-byte proto may declare 10^8 elements) and then decodes it with `tf.make_ndarray`.
`ndarray_to_proto` encodes with `tf.make_tensor_proto`; responses move numbers into the typed
`*_val` field, as TF Serving's Predict fills them (`Tensor::AsProtoField`), so clients that
read `float_val` directly (Java, Go) work.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

# A request tensor may describe at most this many bytes once decoded: far above what any
# gRPC message carries, far below what would take the server down.
MAX_TENSOR_BYTES = 1 << 30

# TensorFlow's DataTypeString where it differs from tf.DType.name (messages quote it).
_TF_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half"}

# The typed value field of each dtype; the rest of the table is tf.as_dtype's.
_VALUE_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val", types_pb2.DT_UINT8: "int_val", types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val", types_pb2.DT_UINT16: "int_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val", types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val", types_pb2.DT_STRING: "string_val",
}


class TensorProtoError(ValueError):
    """A TensorProto that cannot be turned into a tensor; the text says why."""


def dtype_string(dtype_enum):
    """TensorFlow's DataTypeString for a DataType enum: "float", "int64", "string", ..."""
    try:
        name = tf.as_dtype(dtype_enum).name
    except TypeError:
        return f"unknown dtype {dtype_enum}"
    return _TF_TYPE_NAMES.get(name, name)


def numpy_dtype_of(dtype_enum):
    """The numpy dtype holding values of a DataType enum (object for strings)."""
    if dtype_enum not in _VALUE_FIELD:
        raise TensorProtoError(f"unsupported dtype {dtype_string(dtype_enum)}")
    return np.dtype(tf.as_dtype(dtype_enum).as_numpy_dtype)


def dtype_of_array(array):
    """The DataType enum for a numpy array: strings / bytes / objects are DT_STRING."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        return tf.as_dtype(array.dtype).as_datatype_enum
    except TypeError:
        raise TensorProtoError(f"numpy dtype {array.dtype} has no TensorFlow equivalent") from None


def shape_of(shape_proto):
    """A TensorShapeProto as a list of dims (-1 unknown), or None when the rank is unknown."""
    if shape_proto.unknown_rank:
        return None
    return [dim.size for dim in shape_proto.dim]


def shape_string(shape):
    """Shape list as TF Serving prints it: [-1,3]; [?] for unknown rank."""
    return "[?]" if shape is None else "[" + ",".join(str(d) for d in shape) + "]"


def num_elements(proto):
    """The elements a TensorProto's shape declares; TensorProtoError if the shape is invalid."""
    if proto.tensor_shape.unknown_rank:
        raise TensorProtoError("the shape has unknown rank")
    dims = [dim.size for dim in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise TensorProtoError(f"the shape {shape_string(dims)} has a negative dimension")
    return int(np.prod(dims, dtype=object)) if dims else 1


def ndarray_from_proto(proto, max_bytes=MAX_TENSOR_BYTES):
    """Decodes a TensorProto into a numpy array (object array of bytes for DT_STRING).

    Raises TensorProtoError when the dtype is unsupported, the shape is invalid, the
    content does not match the shape, or the tensor would exceed `max_bytes`.
    """
    np_dtype = numpy_dtype_of(proto.dtype)
    dims = [dim.size for dim in proto.tensor_shape.dim]
    count = num_elements(proto)
    item_bytes = 8 if np_dtype == object else np_dtype.itemsize
    if count * item_bytes > max_bytes:
        raise TensorProtoError(
            f"the shape {shape_string(dims)} holds {count} elements, more than the "
            f"{max_bytes} bytes a request tensor may have")
    if proto.tensor_content:
        if np_dtype == object:
            raise TensorProtoError("a DT_STRING tensor cannot use tensor_content")
        if len(proto.tensor_content) != count * np_dtype.itemsize:
            raise TensorProtoError(
                f"tensor_content has {len(proto.tensor_content)} bytes, but shape "
                f"{shape_string(dims)} of {dtype_string(proto.dtype)} needs "
                f"{count * np_dtype.itemsize}")
    else:
        values = len(getattr(proto, _VALUE_FIELD[proto.dtype]))
        if proto.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
            if values % 2:
                raise TensorProtoError(f"{_VALUE_FIELD[proto.dtype]} has an odd number of values")
            values //= 2
        if values > count:
            raise TensorProtoError(
                f"{values} values given for shape {shape_string(dims)} ({count} elements)")
    try:
        array = tf.make_ndarray(proto)
    except (ValueError, TypeError, OverflowError) as error:
        raise TensorProtoError(f"cannot decode the {dtype_string(proto.dtype)} tensor: "
                               f"{error}") from None
    if np_dtype == object and array.size and not isinstance(array.flat[0], bytes):
        array = np.full(array.shape, b"", dtype=object)  # no values: empty strings, as bytes
    return array


def ndarray_to_proto(array, use_tensor_content=False):
    """Encodes a numpy array (or anything np.asarray accepts) as a TensorProto.

    Strings (str, bytes or object arrays of them) become DT_STRING `string_val`. Numbers
    go into the typed `*_val` field, or into `tensor_content` when `use_tensor_content`.
    """
    array = np.asarray(array)
    try:
        proto = tf.make_tensor_proto(array)
    except (TypeError, ValueError) as error:
        raise TensorProtoError(f"cannot encode a {array.dtype} array: {error}") from None
    if use_tensor_content or not proto.tensor_content:
        return proto
    flat = array.ravel()
    field = getattr(proto, _VALUE_FIELD[proto.dtype])
    if proto.dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        field.extend(flat.view(np.uint16).astype(np.int32).tolist())
    elif proto.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        field.extend(np.stack([flat.real, flat.imag], axis=-1).ravel().tolist())
    else:
        field.extend(flat.tolist())
    proto.tensor_content = b""
    return proto
