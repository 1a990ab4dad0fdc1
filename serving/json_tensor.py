"""TF Serving's REST JSON tensor format (tensorflow_serving/util/json_tensor.cc), in Python.

Request side (server): `parse_predict_request` turns a `:predict` body — row format
`{"instances": [...]}` or columnar `{"inputs": ...}`, optional `"signature_name"` — into
numpy inputs typed by the signature, with TF Serving's error messages.

Response side (server): `format_predict_response` writes `{"predictions": [...]}` (row: one
entry per instance, an object per instance when there are several outputs) or
`{"outputs": ...}` (columnar), floats printed like TF Serving (shortest text that round-trips,
"NaN" / "Infinity"), strings as UTF-8 text, or `{"b64": ...}` for outputs named `*_bytes`.

Client side: `to_json_value` / `from_json_value` convert numpy arrays to and from that JSON.
"""
import feature_columns._legacy_keras  # noqa: F401  (Keras 2 before TensorFlow)

import base64
import binascii
import json
import math
import re

import grpc
import numpy as np
from tensorflow.core.framework import types_pb2

from serving.errors import ServingError, invalid_argument
from serving.tensors import dtype_string, numpy_dtype_of, rank_problem

ROW = "row"
COLUMNAR = "columnar"

_BYTES_SUFFIX = "_bytes"
_MAX_ERROR_VALUE_CHARS = 256

_INT_RANGES = {
    types_pb2.DT_INT32: (-2**31, 2**31 - 1),
    types_pb2.DT_INT16: (-2**31, 2**31 - 1),
    types_pb2.DT_INT8: (-2**31, 2**31 - 1),
    types_pb2.DT_UINT8: (-2**31, 2**31 - 1),
    types_pb2.DT_INT64: (-2**63, 2**63 - 1),
    types_pb2.DT_UINT32: (0, 2**32 - 1),
    types_pb2.DT_UINT64: (0, 2**64 - 1),
}
# (mantissa bits, largest finite value) of the float types JSON numbers may fill.
_FLOAT_LIMITS = {
    types_pb2.DT_FLOAT: (24, float(np.finfo(np.float32).max)),
    types_pb2.DT_DOUBLE: (53, float(np.finfo(np.float64).max)),
}


def _value_text(value):
    """A JSON value as text for an error message (long ones cut short)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if len(text) > _MAX_ERROR_VALUE_CHARS:
        text = text[:_MAX_ERROR_VALUE_CHARS] + "..."
    return text


def json_type(value):
    """A JSON value's type as rapidjson names it in TF Serving's messages."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_error(value, dtype):
    return invalid_argument(f"JSON Value: {_value_text(value)} Type: {json_type(value)} is "
                            f"not of expected type: {dtype_string(dtype)}")


def _format_error(doc, *parts):
    return invalid_argument(f"JSON Value: {_value_text(doc)} " + "".join(parts))


def _is_base64_object(value):
    return (isinstance(value, dict) and len(value) == 1
            and isinstance(value.get("b64"), str))


def _decode_base64_object(value):
    if not _is_base64_object(value):
        raise invalid_argument(f"JSON Value: {_value_text(value)} not formatted correctly for "
                               f"base64 data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _is_lossless(value, dtype):
    digits, largest = _FLOAT_LIMITS[dtype]
    if isinstance(value, int) and abs(value) < 2**64:
        return abs(value) <= 2**digits - 1
    if type(value) is float and math.isinf(value):
        return False  # a number beyond a double (not a written Infinity): _scalar refuses it
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        return False
    return not math.isfinite(value) or -largest <= value <= largest


def _scalar(value, dtype):
    """One JSON scalar as a value of `dtype` (TF Serving's AddValueToTensor)."""
    if dtype in _FLOAT_LIMITS:
        if not _is_number(value):
            raise _type_error(value, dtype)
        check_finite_or_written(value)
        if not _is_lossless(value, dtype):
            target = "float" if dtype == types_pb2.DT_FLOAT else "double"
            raise invalid_argument(f"Cannot convert JSON value: {_value_text(value)} to "
                                   f"{target} without loss of precision.")
        return float(value)
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise _type_error(value, dtype)
        return value
    if dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", errors="surrogatepass")
    if dtype == types_pb2.DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                       f"Conversion of JSON Value: {_value_text(value)} to type: "
                       f"{dtype_string(dtype)}")


def _dense_shape(value):
    """Shape implied by a JSON value, following the first element of each list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level, shape, dtype, out):
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {_value_text(value)} found at incorrect level: {level + 1} in "
                f"the JSON DOM. Expected at level: {rank}")
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(_decode_base64_object(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < "
                               f"{rank}")
    if len(value) != shape[level]:
        raise invalid_argument(f"Encountered list at unexpected size: {len(value)} at level: "
                               f"{level} expected size: {shape[level]}")
    for element in value:
        _fill(element, level + 1, shape, dtype, out)


def _plain_leaves(value, shape, dtype):
    """What `_fill` gives for `value`, when it is a dense nested list whose leaves are all
    plain JSON scalars of `dtype`'s kind that need no further check; otherwise None, and
    `_fill` checks element by element (and names what is wrong).

    One pass per nesting level and one per check instead of a call per element: a request's
    10,000 string history ids parse in a third of the time."""
    leaves = [value]
    for size in shape:
        if not all(type(item) is list and len(item) == size for item in leaves):
            return None
        leaves = [leaf for item in leaves for leaf in item]
    if dtype == types_pb2.DT_STRING:
        if not all(type(leaf) is str for leaf in leaves):
            return None
        return [leaf.encode("utf-8", errors="surrogatepass") for leaf in leaves]
    if dtype == types_pb2.DT_BOOL:
        return leaves if all(type(leaf) is bool for leaf in leaves) else None
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if not all(type(leaf) is int for leaf in leaves) or (
                leaves and not low <= min(leaves) <= max(leaves) <= high):
            return None
        return leaves
    if dtype in _FLOAT_LIMITS:
        if not all((type(leaf) is float or type(leaf) is int) and _is_lossless(leaf, dtype)
                   for leaf in leaves):
            return None
        return leaves
    return None


def _values_and_shape(value, dtype):
    shape = _dense_shape(value)
    values = _plain_leaves(value, shape, dtype)
    if values is None:
        values = []
        _fill(value, 0, shape, dtype, values)
    return values, shape


def _to_array(values, shape, dtype):
    problem = rank_problem(len(shape))
    if problem:  # numpy's ValueError would be a 500
        raise invalid_argument(f"A JSON tensor {problem}")
    np_dtype = numpy_dtype_of(dtype)
    if np_dtype == object:
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif dtype in _INT_RANGES and dtype not in (types_pb2.DT_INT64, types_pb2.DT_UINT64):
        # int8/int16/uint8 wrap like TF's static_cast from the int32 JSON value
        array = np.asarray(values, dtype=np.int64).astype(np_dtype)
    else:
        array = np.asarray(values, dtype=np_dtype)
    return array.reshape(shape)


def _shape_text(shape):
    return "[" + ",".join(str(d) for d in shape) + "]"


def _instances(doc, infos):
    items = doc["instances"]
    if not isinstance(items, list):
        raise _format_error(doc, "Excepting 'instances' to be an list/array")
    if not items:
        raise _format_error(doc, "No values in 'instances' array")
    if not isinstance(items[0], dict) and len(infos) > 1:
        raise invalid_argument("instances is a plain list, but expecting list of objects as "
                               "multiple input tensors required as per tensorinfo_map")

    def is_element_object(value):
        return isinstance(value, dict) and not _is_base64_object(value)

    objects = is_element_object(items[0])
    names = set(infos)
    if objects and all(type(element) is dict and set(element) == names for element in items):
        # Every instance names every input: each input's column of values may be one dense
        # nested list of plain scalars, converted at once; otherwise the checks per instance.
        columns = {name: [element[name] for element in items] for name in infos}
        shapes = {name: _dense_shape(column) for name, column in columns.items()}
        leaves = {name: _plain_leaves(columns[name], shapes[name], infos[name].dtype) for name in infos}
        if all(values is not None for values in leaves.values()):
            return {name: _to_array(leaves[name], shapes[name], infos[name].dtype) for name in infos}
    values, shapes, sizes = {}, {}, {}

    def add_item(item, name):
        if name not in infos:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        item_values, shape = _values_and_shape(item, infos[name].dtype)
        if name not in sizes:
            values[name], shapes[name], sizes[name] = item_values, shape, len(item_values)
            return
        if sizes[name] != len(item_values):
            raise invalid_argument(f"Expecting tensor size: {sizes[name]} but got: "
                                   f"{len(item_values)}")
        if shapes[name] != shape:
            raise invalid_argument(f"Expecting shape {_shape_text(shapes[name])} but got: "
                                   f"{_shape_text(shape)}")
        values[name].extend(item_values)

    single_name = sorted(infos)[0]
    for index, element in enumerate(items):
        if objects:
            if not is_element_object(element):
                raise invalid_argument(f"Expecting object but got list at item {index} of "
                                       f"input list")
            for name, item in element.items():
                try:
                    add_item(item, name)
                except ServingError as error:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {name} of 'instances' list. "
                        f"Error: {error.code.name}: {error.message}") from None
            if set(element) != set(infos):
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{_value_text(element)} keys must be equal to: "
                    f"{','.join(sorted(infos))}")
        else:
            if is_element_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {index} "
                                       f"of input list")
            try:
                add_item(element, single_name)
            except ServingError as error:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: "
                    f"{error.code.name}: {error.message}") from None
    return {name: _to_array(values[name], [len(items)] + shapes[name], infos[name].dtype)
            for name in shapes}


def _columns(doc, infos):
    value = doc["inputs"]
    if not isinstance(value, dict) or _is_base64_object(value):
        if len(infos) > 1:
            raise invalid_argument("inputs is a plain value/list, but expecting an object as "
                                   "multiple input tensors required as per tensorinfo_map")
        name = next(iter(infos))
        values, shape = _values_and_shape(value, infos[name].dtype)
        return {name: _to_array(values, shape, infos[name].dtype)}
    arrays = {}
    for name in sorted(infos):
        if name not in value:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        try:
            values, shape = _values_and_shape(value[name], infos[name].dtype)
        except ServingError as error:  # TF Serving's text does not say which input: add it
            raise invalid_argument(f"Failed to process input: {name} of 'inputs' object. "
                                   f"Error: {error.message}") from None
        arrays[name] = _to_array(values, shape, infos[name].dtype)
    return arrays


def _parse_json_int(text):
    """A JSON integer as RapidJSON (TF Serving's parser) reads it: an int while it fits in
    64 bits, else a double; one beyond any double is a parse error. Python's int() would
    refuse more than 4300 digits with a ValueError that is not a JSONDecodeError."""
    digits = len(text) - (text[0] == "-")
    if digits <= 20:
        value = int(text)
        if -2**63 <= value < 2**64:
            return value
    value = float(text)
    if math.isinf(value):
        raise number_too_big()
    return value


class JsonConstant(float):
    """NaN, Infinity or -Infinity written as such in a request. A plain float that is infinite
    came from a number beyond a double ("1E400"), which RapidJSON refuses (`number_too_big`);
    telling them apart costs nothing, where checking every number as it is parsed would leave
    json's fast float path."""


def number_too_big():
    return invalid_argument("JSON Parse error: Number too big to be stored in double")


def check_finite_or_written(value):
    """`value` (a parsed JSON float), or INVALID_ARGUMENT if it overflowed to infinity."""
    if type(value) is float and math.isinf(value):
        raise number_too_big()
    return value


def _first_of_repeated_keys(pairs):
    """A JSON object whose repeated key keeps its first value, as RapidJSON's FindMember."""
    members = dict(pairs)
    if len(members) != len(pairs):
        members = {}
        for key, value in pairs:
            members.setdefault(key, value)
    return members


# RapidJSON's kParseNanAndInfFlag spellings that Python's json does not read, outside strings.
_NAN_AND_INF = re.compile(r'"(?:[^"\\]|\\.)*"|-?Inf(?:inity)?|-NaN')


def _python_constant(match):
    token = match.group()
    if token.startswith('"'):
        return token
    return "NaN" if token == "-NaN" else ("-" if token[0] == "-" else "") + "Infinity"


def parse_json_body(body):
    """A REST request body (bytes or str) as a JSON document, read as TF Serving's RapidJSON
    reads it: a UTF-8 byte-order mark skipped; NaN, Inf and Infinity (signed) accepted; the
    first of a repeated key kept; "JSON Parse error" (INVALID_ARGUMENT) for text that is not
    JSON, not UTF-8, nested too deeply, or holds a number too big for a double."""
    try:
        text = str(body, "utf-8-sig") if isinstance(body, (bytes, bytearray, memoryview)) \
            else body.removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: "
                               f"{error.start}") from None
    if not text.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    options = dict(parse_int=_parse_json_int, parse_constant=JsonConstant,
                   object_pairs_hook=_first_of_repeated_keys)
    try:
        try:
            return json.loads(text, **options)
        except json.JSONDecodeError as error:
            spelled = _NAN_AND_INF.sub(_python_constant, text)
            if spelled == text:
                raise
            try:
                return json.loads(spelled, **options)
            except json.JSONDecodeError:
                raise error from None
    except json.JSONDecodeError as error:
        raise invalid_argument(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except RecursionError:
        raise invalid_argument("JSON Parse error: the document is nested too deeply") from None


def parse_predict_request(body, input_infos):
    """Parses a REST `:predict` body.

    Args:
      body: the request body (bytes or str).
      input_infos: callable(signature_name) -> {alias: TensorInfo} of that signature's
        inputs; it raises ServingError for an unknown model or signature.

    Returns:
      (signature_name, {alias: np.ndarray}, ROW or COLUMNAR).
    """
    doc = parse_json_body(body)
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _format_error(doc, "not formatted correctly. 'signature_name' key must be a "
                                 "string value.")
    infos = dict(input_infos(signature_name))
    if not infos:
        raise invalid_argument(f"Failed to get input map for signature: "
                               f"{signature_name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise _format_error(doc, "Not formatted correctly expecting only one of 'inputs' or "
                                 "'instances' keys to exist ")
    try:
        if has_instances:
            return signature_name, _instances(doc, infos), ROW
        if has_inputs:
            return signature_name, _columns(doc, infos), COLUMNAR
    except RecursionError:
        raise invalid_argument("JSON value nested too deeply") from None
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def format_float(value, single_precision):
    """TF Serving's WriteDecimal of one value (see `format_floats`)."""
    return format_floats(np.array([value], np.float64), single_precision)[0]


def format_floats(values, single_precision):
    """TF Serving's WriteDecimal of every value of a 1-D float64 array: the %g text if it
    round-trips (as float32 when `single_precision`), else %.9g (%.17g for doubles); ".0" on
    whole numbers; NaN, Infinity, -Infinity. The round-trip checks run on the whole array."""
    texts = ["%g" % v for v in values.tolist()]
    back = np.array(texts, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN compares unequal, as it should
        if single_precision:
            back, values = back.astype(np.float32), values.astype(np.float32)
        exact = back == values
    longer = "%.9g" if single_precision else "%.17g"
    for index in np.flatnonzero(~exact & np.isfinite(values)).tolist():
        texts[index] = longer % values[index]
    texts = [text if "." in text or "e" in text else text + ".0" for text in texts]
    for index in np.flatnonzero(~np.isfinite(values)).tolist():
        value = values[index]
        texts[index] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return texts


def _string_text(value, as_bytes):
    if not as_bytes:
        try:
            return json.dumps(value.decode("utf-8"), ensure_ascii=False)
        except UnicodeDecodeError:
            pass  # not text: base64 keeps the JSON valid
    return '{"b64": "' + base64.b64encode(value).decode("ascii") + '"}'


def _scalar_texts(array, as_bytes):
    flat = array.ravel()
    kind = array.dtype.kind
    if kind == "f" or array.dtype == numpy_dtype_of(types_pb2.DT_BFLOAT16):
        return format_floats(flat.astype(np.float64), single_precision=array.dtype != np.float64)
    if kind in "iu":
        return [str(v) for v in flat.tolist()]
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind == "O":
        return [_string_text(v, as_bytes) for v in flat.tolist()]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {array.dtype}")


def _nest(texts, shape):
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ", ".join(texts) + "]"
    step = int(np.prod(shape[1:]))
    return "[" + ", ".join(_nest(texts[i * step:(i + 1) * step], shape[1:])
                           for i in range(shape[0])) + "]"


def _tensor_json(name, array):
    return _nest(_scalar_texts(array, name.endswith(_BYTES_SUFFIX)), list(array.shape))


def _row_texts(name, array):
    """The JSON of each row (0th-dimension entry) of `array`: its values formatted at once."""
    texts = _scalar_texts(array, name.endswith(_BYTES_SUFFIX))
    shape = list(array.shape[1:])
    step = int(np.prod(shape))
    return [_nest(texts[i * step:(i + 1) * step], shape) for i in range(array.shape[0])]


def format_predict_response(outputs, request_format):
    """The JSON text answering a `:predict` call in the request's format."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if request_format == COLUMNAR:
        if len(names) == 1:
            body = _tensor_json(names[0], outputs[names[0]])
        else:
            body = "{" + ", ".join(json.dumps(name) + ": " + _tensor_json(name, outputs[name])
                                   for name in names) + "}"
        return '{"outputs": ' + body + "}"
    batch_size = None
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch_size is not None and array.shape[0] != batch_size:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                                   f"{array.shape[0]} expecting: {batch_size}")
        batch_size = array.shape[0]
    rows = {name: _row_texts(name, outputs[name]) for name in names}
    if len(names) == 1:
        predictions = rows[names[0]]
    else:
        predictions = ["{" + ", ".join(json.dumps(name) + ": " + rows[name][i]
                                       for name in names) + "}" for i in range(batch_size)]
    return '{"predictions": [' + ", ".join(predictions) + "]}"


def format_error(message):
    """TF Serving's REST error body."""
    return json.dumps({"error": message})


def to_json_value(array):
    """A numpy array as nested JSON lists; strings as text, or {"b64": ...} if not UTF-8."""
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        def encode(value):
            if isinstance(value, str):
                return value
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(value).decode("ascii")}
        encoded = np.empty(array.size, dtype=object)
        encoded[:] = [encode(v) for v in array.ravel().tolist()]
        return encoded.reshape(array.shape).tolist()
    return array.tolist()


def from_json_value(value, dtype):
    """A JSON tensor value (as TF Serving writes it) as a numpy array of DataType `dtype`."""
    if dtype != types_pb2.DT_STRING:
        return np.asarray(value, dtype=numpy_dtype_of(dtype))
    shape = _dense_shape(value)
    flat = []

    def collect(element):
        if isinstance(element, list):
            for item in element:
                collect(item)
        elif isinstance(element, dict):
            flat.append(_decode_base64_object(element))
        else:
            flat.append(str(element).encode("utf-8"))

    collect(value)
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)
