"""TensorProto <-> numpy for a server: TensorFlow's own converters behind a size guard, with
direct paths for the bulk of the traffic.

`ndarray_from_proto` checks a request tensor against the limits before anything is allocated
(a 441-byte proto may declare 10^8 elements) and then decodes it as `tf.make_ndarray` does:
strings and `tensor_content` directly (fewer copies and no intermediate list), the other
typed fields with `tf.make_ndarray` itself. `ndarray_to_proto` puts numbers into the typed
`*_val` field, as TF Serving's Predict fills them (`Tensor::AsProtoField`), so clients that
read `float_val` directly (Java, Go) work: fixed-width ones (float, double, complex, bool) as
the array's own bytes, the rest through `tf.make_tensor_proto`.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import ctypes
import math
import os
import threading

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

# A request tensor may describe at most this many bytes once decoded: far above what any
# gRPC message carries, far below what would take the server down.
MAX_TENSOR_BYTES = 1 << 30

# TensorFlow's TensorShape holds at most 254 dimensions; numpy at most 64 (numpy 2), and the
# server decodes every request tensor into numpy, so a deeper tensor cannot be served here.
TF_MAX_RANK = 254
MAX_DECODABLE_RANK = 64

# What one decoded request element may cost, for the default element cap: a numpy copy (8
# bytes, an object pointer for strings), a tf.Tensor copy (8 bytes, 32 for a tstring), and the
# activations the model makes of it: an id becomes an embedding row (16-64 floats) and the
# layers after it keep several such copies, so ~256 bytes is measured for a DIN string id
# (a 20-million-id request left the server at 2.1 GB). At 4096 bytes per element a request at
# the cap uses at most ~1/16 of the memory: a few concurrent ones cannot take the server down,
# while a SIM request of 100 candidates x 10,000 events x 3 sequences (3 million) still fits.
_BYTES_PER_REQUEST_ELEMENT = 4096
_MIN_DEFAULT_REQUEST_ELEMENTS = 1 << 20

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


# Looked up for every request tensor; tf.as_dtype is not free.
_NUMPY_DTYPES = {dtype_enum: np.dtype(tf.as_dtype(dtype_enum).as_numpy_dtype)
                 for dtype_enum in _VALUE_FIELD}


def numpy_dtype_of(dtype_enum):
    """The numpy dtype holding values of a DataType enum (object for strings)."""
    np_dtype = _NUMPY_DTYPES.get(dtype_enum)
    if np_dtype is None:
        raise TensorProtoError(f"unsupported dtype {dtype_string(dtype_enum)}")
    return np_dtype


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


def rank_problem(rank):
    """Why a request tensor of `rank` dimensions cannot be served ("has 65 dimensions; ..."), or
    None."""
    if rank > TF_MAX_RANK:
        return f"has {rank} dimensions, more than TensorFlow's maximum of {TF_MAX_RANK}"
    if rank > MAX_DECODABLE_RANK:
        return (f"has {rank} dimensions; this server decodes tensors of at most {MAX_DECODABLE_RANK} "
                "dimensions")
    return None


def proto_dims(proto):
    """The dims of a request TensorProto's shape, checked before anything is decoded:
    TensorProtoError for an unknown rank, a negative dim, or a rank numpy cannot hold."""
    shape = proto.tensor_shape
    if shape.unknown_rank:
        raise TensorProtoError("the shape has unknown rank")
    problem = rank_problem(len(shape.dim))
    if problem:
        raise TensorProtoError(f"the shape {problem}")
    dims = [dim.size for dim in shape.dim]
    if any(d < 0 for d in dims):
        raise TensorProtoError(f"the shape {shape_string(dims)} has a negative dimension")
    return dims


def num_elements(proto):
    """The elements a TensorProto's shape declares; TensorProtoError if the shape is invalid."""
    return math.prod(proto_dims(proto))


def _cgroup_memory_limit():
    """The container's memory limit in bytes (cgroup v2 or v1), or None without one."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" / 2^63-ish mean unlimited
            return int(text)
    return None


def memory_limit_bytes():
    """The memory this process may use: physical RAM, or the container's limit if lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    limit = _cgroup_memory_limit()
    return min(total, limit) if limit else total


def default_max_request_elements():
    """The default of --max_request_elements: memory / 4096 bytes, at least 2^20.

    (25 GB of RAM: 6.2 million elements, e.g. 1,000 candidates x 50 history ids x 120 inputs.)
    """
    return max(_MIN_DEFAULT_REQUEST_ELEMENTS, memory_limit_bytes() // _BYTES_PER_REQUEST_ELEMENT)


def checked_size(proto, max_bytes=MAX_TENSOR_BYTES):
    """(numpy dtype, dims, elements) of a TensorProto, from its header alone: TensorProtoError
    when the dtype is unsupported, the shape invalid, or it would decode to > max_bytes."""
    np_dtype = numpy_dtype_of(proto.dtype)
    dims = proto_dims(proto)
    count = math.prod(dims)
    item_bytes = 8 if np_dtype == object else np_dtype.itemsize
    if count * item_bytes > max_bytes:
        raise TensorProtoError(
            f"the shape {shape_string(dims)} holds {count} elements, more than the "
            f"{max_bytes} bytes a request tensor may have")
    return np_dtype, dims, count


def ndarray_from_proto(proto, max_bytes=MAX_TENSOR_BYTES, header=None):
    """Decodes a TensorProto into a numpy array (object array of bytes for DT_STRING).

    Raises TensorProtoError when the dtype is unsupported, the shape is invalid, the
    content does not match the shape, or the tensor would exceed `max_bytes`. `header`:
    what `checked_size(proto, max_bytes)` returned, when the caller has called it already.
    """
    np_dtype, dims, count = header or checked_size(proto, max_bytes)
    content = proto.tensor_content  # each read of a bytes field copies it out of the message
    if content:
        if np_dtype == object:
            raise TensorProtoError("a DT_STRING tensor cannot use tensor_content")
        if len(content) != count * np_dtype.itemsize:
            raise TensorProtoError(
                f"tensor_content has {len(content)} bytes, but shape "
                f"{shape_string(dims)} of {dtype_string(proto.dtype)} needs "
                f"{count * np_dtype.itemsize}")
        # What tf.make_ndarray returns, without its second read of tensor_content.
        return np.frombuffer(content, dtype=np_dtype).reshape(dims).copy()
    field = getattr(proto, _VALUE_FIELD[proto.dtype])
    values = len(field)
    if proto.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        if values % 2:
            raise TensorProtoError(f"{_VALUE_FIELD[proto.dtype]} has an odd number of values")
        values //= 2
    if values > count:
        raise TensorProtoError(
            f"{values} values given for shape {shape_string(dims)} ({count} elements)")
    if np_dtype == object:
        return _string_array(field, count).reshape(dims)
    try:
        return tf.make_ndarray(proto)
    except (ValueError, TypeError, OverflowError) as error:
        raise TensorProtoError(f"cannot decode the {dtype_string(proto.dtype)} tensor: "
                               f"{error}") from None


def _string_array(values, count):
    """A 1-D object array of `count` bytes from a string_val field, which may hold fewer: the
    last value repeats (b"" when there is none), as in tf.make_ndarray and TF's
    Tensor::FromProto. Filled from the field directly: tf.make_ndarray's intermediate list
    costs a third more on a request of 10,000 history ids."""
    if len(values) == count:
        return np.array(values, dtype=object)
    array = np.empty(count, dtype=object)
    array[:len(values)] = values
    array[len(values):] = values[-1] if len(values) else b""
    return array


def ndarray_to_proto(array, use_tensor_content=False):
    """Encodes a numpy array (or anything np.asarray accepts) as a TensorProto.

    Strings (str, bytes or object arrays of them) become DT_STRING `string_val`. Numbers
    go into the typed `*_val` field, or into `tensor_content` when `use_tensor_content`.
    """
    array = np.asarray(array)
    packed = None if use_tensor_content else _PACKED_FIELDS.get(array.dtype)
    if packed is not None:
        # Fixed-width values: the packed field's wire bytes are the array's own bytes, so a
        # 50 MB float output is neither copied into tensor_content by tf.make_tensor_proto
        # first nor turned into 12.5 million Python floats.
        dtype_enum, number, wire_dtype = packed
        proto = tensor_pb2.TensorProto(dtype=dtype_enum)
        proto.tensor_shape.SetInParent()  # a scalar too has a (dimensionless) shape
        for size in array.shape:
            proto.tensor_shape.dim.add(size=size)
        flat = array.ravel()
        if dtype_enum in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
            flat = np.stack([flat.real, flat.imag], axis=-1).ravel()
        raw = np.ascontiguousarray(flat, dtype=wire_dtype).tobytes()
        proto.MergeFromString(_varint(number << 3 | 2) + _varint(len(raw)) + raw)
        return proto
    try:
        proto = tf.make_tensor_proto(array)
    except (TypeError, ValueError) as error:
        raise TensorProtoError(f"cannot encode a {array.dtype} array: {error}") from None
    if use_tensor_content or not proto.tensor_content:
        return proto
    # Other numbers (integers, halves): the typed field takes Python ints.
    flat = array.ravel()
    proto.tensor_content = b""
    field = getattr(proto, _VALUE_FIELD[proto.dtype])
    if proto.dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        flat = flat.view(np.uint16).astype(np.int32)
    for start in range(0, flat.size, _EXTEND_CHUNK):  # bounded numbers of Python ints alive
        field.extend(flat[start:start + _EXTEND_CHUNK].tolist())
    return proto


# TensorProto's packed fixed-width value fields, by the numpy dtype filling them: DataType,
# field number and little-endian wire dtype (tensorflow/core/framework/tensor.proto); bools
# are one-byte varints 0/1.
_PACKED_FIELDS = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, 5, "<f4"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, 6, "<f8"),
    np.dtype(np.complex64): (types_pb2.DT_COMPLEX64, 9, "<f4"),
    np.dtype(np.complex128): (types_pb2.DT_COMPLEX128, 12, "<f8"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, 11, "u1"),
}
_EXTEND_CHUNK = 1 << 16


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# After a request this large (bytes received or decoded), glibc is asked to hand its free
# memory back to the system (malloc_trim): numpy and TensorFlow allocate big buffers with
# malloc, and glibc keeps what they free in its arenas, so one large request would otherwise
# keep the server's RSS up for good.
TRIM_AFTER_BYTES = 32 << 20
_TRIM_DELAY_SECONDS = 0.2  # after gRPC has freed the request message too


class _MemoryTrimmer:
    """Calls glibc's malloc_trim(0) shortly after large requests, at most one pending call."""

    def __init__(self):
        try:
            self._malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            self._malloc_trim = None  # not glibc: nothing to do
        self._lock = threading.Lock()
        self._pending = False

    def after_request(self, nbytes):
        if self._malloc_trim is None or nbytes < TRIM_AFTER_BYTES:
            return
        with self._lock:
            if self._pending:
                return
            self._pending = True
        timer = threading.Timer(_TRIM_DELAY_SECONDS, self._trim)
        timer.daemon = True
        timer.start()

    def _trim(self):
        with self._lock:
            self._pending = False
        self._malloc_trim(0)


_trimmer = _MemoryTrimmer()

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 16 << 20


def return_large_buffers_to_the_system():
    """For a server process: fixes glibc's mmap threshold at 16 MB, so every allocation of
    16 MB or more has its own mmap and goes back to the system when freed, and heaps are
    trimmed as memory is freed.

    glibc's default raises the threshold (up to 32 MB) each time such a buffer is freed and
    its trim threshold with it, after which big request buffers come from the per-thread
    arenas, where they stay: 12 rejected 50 MB requests spread over the gRPC threads kept
    50-70 MB; with the fixed threshold, under 10 MB. (1 MB returned as much but made 5,000-row
    requests 60% slower: oneDNN's scratch buffers were mapped anew on every call; 16 MB
    costs nothing measurable. What TensorFlow allocates through its own BFC allocator, with
    oneDNN, is not affected.) Returns whether it could be set (glibc only).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def message_bytes(message):
    """About how many bytes a request message holds, for `release_memory_after`.

    upb's ByteSize serializes the whole message (12 ms for a 23 MB Predict request, on every
    request), so a message with `inputs` (Predict) is measured by its tensors instead: the
    length of each one's tensor_content (one copy, 0.3 ms per 8 MB) or 8 bytes per value of its
    typed field. Any other message (metadata, tf.Example requests) by ByteSize.
    """
    inputs = getattr(message, "inputs", None)
    if not hasattr(inputs, "values"):
        return message.ByteSize()
    total = 0
    for proto in inputs.values():
        field = _VALUE_FIELD.get(proto.dtype)
        total += len(proto.tensor_content) + (8 * len(getattr(proto, field)) if field else 0)
    return total


def release_memory_after(nbytes):
    """Gives free heap memory back to the system soon, if `nbytes` (what a request
    received, decoded or answered) is at least TRIM_AFTER_BYTES."""
    _trimmer.after_request(nbytes)
